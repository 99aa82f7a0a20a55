#!/usr/bin/env bash
# Runs the perf_ring criterion benches and prints the medians and the
# ratios against memcpy from the same run.
#
#   scripts/bench-ring.sh [extra criterion args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo bench -p devices --bench perf_ring -- "$@"
crit="$root/target/criterion"
median() { # group/name -> median ns per iteration
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
        "$crit/$1/new/estimates.json"
}
per_iter=1048576
s=$(median ring/samples_48b); b=$(median ring/samples_48b_batch64); m=$(median ring/memcpy_48b)
a=$(median aux/write_64k); am=$(median aux/memcpy_64k)
python3 - "$s" "$b" "$m" "$a" "$am" "$per_iter" <<'PY'
import sys
s, b, m, a, am, n = map(float, sys.argv[1:])
print(f"machine: {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}, {__import__('os').cpu_count()} cpus")
print(f"48B samples, per-record publish : {n / s * 1e3:8.1f} M rec/s  ({m / s:.2f} x memcpy)")
print(f"48B samples, batch of 64        : {n / b * 1e3:8.1f} M rec/s  ({m / b:.2f} x memcpy)")
print(f"48B memcpy into the same pages  : {n / m * 1e3:8.1f} M rec/s")
print(f"AUX 64 KiB chunks               : {65536 / a:8.2f} GB/s    ({am / a:.2f} x memcpy {65536 / am:.2f} GB/s)")
PY
