#!/usr/bin/env bash
# Runs the perf_ring criterion benches and prints, per run, the criterion
# medians and the ratios against memcpy from the same run, then the median
# of each figure over the runs. The bench's own diagnostics (records lost,
# time the ring was full, wakeup cost) are kept in target/bench-ring/.
#
#   scripts/bench-ring.sh [runs] [extra criterion args]
#
# runs defaults to 1; use 3 or 5 on a shared machine and quote the medians.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs=1
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    runs=$1
    shift
fi
crit="$root/target/criterion"
out="$root/target/bench-ring"
mkdir -p "$out"
cargo bench -p devices --bench perf_ring --no-run
results="$out/results.txt"
: >"$results"
for run in $(seq "$runs"); do
    log="$out/run$run.log"
    cargo bench -p devices --bench perf_ring -- "$@" 2>&1 | tee "$log" |
        grep -E '^(ring|aux)/|thrpt:|offered|no consumer' || true
    python3 - "$crit" "$run" >>"$results" <<'PY'
import json, sys
crit, run = sys.argv[1], sys.argv[2]
def med(name):
    try:
        with open(f"{crit}/{name}/new/estimates.json") as f:
            return json.load(f)["median"]["point_estimate"]
    except OSError:
        return float("nan")
names = ["ring/memcpy_48b", "ring/samples_48b", "ring/samples_48b_batch64",
         "ring/samples_48b_batch64_noconsumer", "ring/samples_48b_spin",
         "aux/write_64k", "aux/memcpy_64k"]
print(run, " ".join(str(med(n)) for n in names))
PY
done
python3 - "$results" "$runs" <<'PY'
import statistics, sys, math
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]) if l.strip()]
n = 1 << 20
labels = [
    (1, "48B samples, realistic consumer, per-record publish"),
    (2, "48B samples, realistic consumer, write_samples x64 "),
    (3, "48B samples, no consumer thread, write_samples x64 "),
    (4, "48B samples, spinning consumer (extra), per record "),
]
try:
    cpu = open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()
except Exception:
    cpu = "?"
print(f"\nmachine: {cpu}, {__import__('os').cpu_count()} cpus; {len(rows)} run(s); rates in delivered M records/s")
def line(r):
    m = r[0]
    parts = [f"memcpy {n / m * 1e3:6.1f}"]
    for i, _ in labels:
        parts.append(f"{n / r[i] * 1e3:6.1f} ({m / r[i]:.2f}x)")
    parts.append(f"AUX {65536 / r[5]:.1f} GB/s ({r[6] / r[5]:.2f}x)")
    return " | ".join(parts)
for k, r in enumerate(rows):
    print(f"run {k + 1}: {line(r)}")
def median(i, f):
    vals = [f(r) for r in rows if not math.isnan(r[i])]
    return statistics.median(vals) if vals else float("nan")
print(f"\nmedians over runs (ratio = memcpy time / bench time, same run):")
print(f"  48B memcpy into the same pages (baseline)          : {median(0, lambda r: n / r[0] * 1e3):7.1f} M rec/s")
for i, text in labels:
    rate = median(i, lambda r: n / r[i] * 1e3)
    ratio = median(i, lambda r: r[0] / r[i])
    print(f"  {text}: {rate:7.1f} M rec/s  ({ratio:.2f} x memcpy)")
print(f"  AUX 64 KiB chunks                                  : {median(5, lambda r: 65536 / r[5]):7.2f} GB/s    ({median(5, lambda r: r[6] / r[5]):.2f} x memcpy)")
PY
echo "per-run diagnostics (lost records, ring-full time, wakeup cost): $out/run*.log"
grep -hE 'offered|no consumer' "$out"/run*.log | sed 's/^/  /' || true
