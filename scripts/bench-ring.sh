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
cargo bench -p perf-ring --bench perf_ring --no-run
results="$out/results.txt"
: >"$results"
for run in $(seq "$runs"); do
    log="$out/run$run.log"
    cargo bench -p perf-ring --bench perf_ring -- "$@" 2>&1 | tee "$log" |
        grep -E '^(ring|aux)/|thrpt:|offered|no consumer|records copied' || true
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
         "aux/write_64k", "aux/memcpy_64k", "ring/memcpy_48b_read",
         "ring/stores_48b_read"]
print(run, " ".join(str(med(n)) for n in names))
PY
done
python3 - "$results" "$runs" <<'PY'
import statistics, sys, math
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]) if l.strip()]
n = 1 << 20
MEMCPY, MEMCPY_READ, STORES_READ = 0, 7, 8
baselines = [
    (MEMCPY, "memcpy, nobody reading the ring (issue's baseline)"),
    (MEMCPY_READ, "memcpy, the same consumer reading the ring      "),
    (STORES_READ, "word stores, the same consumer reading the ring "),
]
labels = [
    (1, "realistic consumer, per-record publish    "),
    (2, "realistic consumer, write_samples x64     "),
    (3, "no consumer thread, write_samples x64     "),
    (4, "spinning consumer (extra), per record     "),
]
# Benches with a reader are compared with the baselines that have one too.
READERS = {1, 2, 4}
try:
    cpu = open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()
except Exception:
    cpu = "?"
print(f"\nmachine: {cpu}, {__import__('os').cpu_count()} cpus; {len(rows)} run(s); rates in delivered M records/s")
rate = lambda r, i: n / r[i] * 1e3
def line(r):
    parts = [f"memcpy {rate(r, MEMCPY):6.1f}, with reader {rate(r, MEMCPY_READ):5.1f}, stores with reader {rate(r, STORES_READ):5.1f}"]
    for i, _ in labels:
        extra = f", {r[MEMCPY_READ] / r[i]:.2f}x read" if i in READERS else ""
        parts.append(f"{rate(r, i):6.1f} ({r[MEMCPY] / r[i]:.2f}x{extra})")
    parts.append(f"AUX {65536 / r[5]:.1f} GB/s ({r[6] / r[5]:.2f}x)")
    return " | ".join(parts)
for k, r in enumerate(rows):
    print(f"run {k + 1}: {line(r)}")
def median(f):
    vals = [v for v in (f(r) for r in rows) if not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")
print("\nmedians over runs; ratio = baseline time / bench time, same run")
print("baselines: the same 48 B records into the same 64 scattered pages, no record protocol")
for i, text in baselines:
    print(f"  {text}: {median(lambda r: rate(r, i)):7.1f} M rec/s")
print("producer        x memcpy alone | x memcpy, consumer | x stores, consumer")
for i, text in labels:
    alone = median(lambda r: r[MEMCPY] / r[i])
    if i in READERS:
        vs = f"  {median(lambda r: r[MEMCPY_READ] / r[i]):.2f} x | {median(lambda r: r[STORES_READ] / r[i]):.2f} x"
    else:
        vs = "     -   |   -"
    print(f"  {text}: {median(lambda r: rate(r, i)):7.1f} M rec/s  {alone:.2f} x |{vs}")
print(f"  AUX 64 KiB chunks                         : {median(lambda r: 65536 / r[5]):7.2f} GB/s    ({median(lambda r: r[6] / r[5]):.2f} x memcpy)")
PY
echo "per-run diagnostics (lost records, ring-full time, wakeup cost): $out/run*.log"
grep -hE 'offered|no consumer|records copied' "$out"/run*.log | sed 's/^/  /' || true
