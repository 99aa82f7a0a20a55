#!/usr/bin/env bash
# Profile accuracy against ground truth, and sampling overhead, in one run
# (issue "Guest profiles that tell the truth").
#
#   scripts/bench-truth.sh [ROUNDS]      (default 1)
#
# Per guest boot (pvpmu backend x vCPUs, in whatever capable KVM perfvisor
# picks: this host's, or the L1 sandbox):
# - accuracy: `pv-workload --mode split` (70/30 alpha/beta, measured by the
#   workload itself with CLOCK_THREAD_CPUTIME_ID) beside a competitor on the
#   same vCPU, profiled per task and system-wide with pvpmu, and per task
#   with the guest's own `perf record -e cpu-clock` at the same rate. The
#   error is |profile alpha share - the workload's own|, in points.
# - overhead at 1 kHz: `pv-workload --mode hot` (its own M iterations/s)
#   with no sampling, under the guest's cpu-clock, and under pvpmu, in the
#   same guest. The slowdown is against no sampling in that guest; the
#   ratio pvpmu / cpu-clock says what pvpmu costs against the guest's own
#   software sampling at the same rate.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
ROUNDS=${1:-1}
cargo build --release --locked -q -p perfvisor
scripts/build-guest-image.sh
scripts/fetch-sandbox.sh

# The guest's part: one "truth:" line per measurement.
read -r -d '' GUEST <<'EOF' || true
share() { # FILE PID: alpha share of PID's samples
  perf script -i "$1" -F pid,ip,sym 2>/dev/null | awk -v pid="$2" '$1==pid && $3=="workload_alpha" {a++} $1==pid && $3=="workload_beta" {b++} END {printf "%.4f %d", a/(a+b+1e-9), a+b}'
}
own() { sed -n 's/.* pid=\([0-9]*\) .*alpha_share=\([0-9.]*\).*/\1 \2/p' "$1"; }
rate() { sed -n 's/.*(\([0-9.]*\) M\/s).*/\1/p' "$1"; }
pv-workload --mode hot --cpu 0 --seconds 60 >/dev/null &
comp=$!
sleep 0.2
for ev in pvpmu/cpu-clock/ cpu-clock; do
  perf record -q -F 1000 -e $ev -o /tmp/t.data -- pv-workload --mode split --cpu 0 --seconds 4 >/tmp/w.txt 2>/dev/null
  set -- $(own /tmp/w.txt)
  echo "truth: mode=per-task event=$ev own=$2 got=$(share /tmp/t.data $1)"
done
pv-workload --mode split --cpu 0 --seconds 4 >/tmp/w.txt 2>/dev/null &
perf record -q -a -F 1000 -e pvpmu/cpu-clock/ -o /tmp/t.data -- sleep 4.3 2>/dev/null
wait $!
set -- $(own /tmp/w.txt)
echo "truth: mode=system-wide event=pvpmu/cpu-clock/ own=$2 got=$(share /tmp/t.data $1)"
kill $comp
wait 2>/dev/null
pv-workload --mode hot --seconds 3 >/tmp/r.txt; echo "rate: event=none $(rate /tmp/r.txt)"
for ev in cpu-clock pvpmu/cpu-clock/; do
  perf record -q -F 1000 -e $ev -o /tmp/r.data -- pv-workload --mode hot --seconds 3 >/tmp/r.txt 2>/dev/null
  echo "rate: event=$ev $(rate /tmp/r.txt)"
done
EOF

printf '\n%-11s %-5s %-11s %-17s %8s %8s %8s\n' backend vcpus mode event "own %" "profile" "error"
results=$(mktemp)
for ((round = 1; round <= ROUNDS; round++)); do
    for backend in host-timer kick; do
        for cpus in 1 2; do
            out=$(target/release/perfvisor run --cpus "$cpus" --memory 512M --pmu-backend "$backend" -- "$GUEST" 2>/dev/null) ||
                pv_die "perfvisor run --pmu-backend $backend --cpus $cpus failed"
            while read -r _ mode event own got n; do
                mode=${mode#mode=} event=${event#event=} own=${own#own=} got=${got#got=}
                err=$(awk -v a="$own" -v b="$got" 'BEGIN {d=(a-b)*100; printf "%.1f", d<0?-d:d}')
                printf '%-11s %-5s %-11s %-17s %8.1f %8.1f %8s  (%s samples)\n' "$backend" "$cpus" "$mode" "$event" \
                    "$(awk -v v="$own" 'BEGIN{print v*100}')" "$(awk -v v="$got" 'BEGIN{print v*100}')" "$err" "$n"
            done < <(grep '^truth: ' <<<"$out")
            none=$(sed -n 's/^rate: event=none //p' <<<"$out")
            cc=$(sed -n 's/^rate: event=cpu-clock //p' <<<"$out")
            pv=$(sed -n 's|^rate: event=pvpmu/cpu-clock/ ||p' <<<"$out")
            echo "$backend $cpus $none $cc $pv" >>"$results"
        done
    done
done
printf '\nOverhead at 1 kHz (pv-workload --mode hot, M iterations/s; slowdown against no sampling in the same guest)\n'
printf '%-11s %-5s %8s %14s %14s %16s\n' backend vcpus none "guest cpu-clock" "pvpmu" "pvpmu/cpu-clock"
while read -r backend cpus none cc pv; do
    awk -v b="$backend" -v c="$cpus" -v n="$none" -v s="$cc" -v p="$pv" 'BEGIN {
        sc = (n / s - 1) * 100; sp = (n / p - 1) * 100
        printf "%-11s %-5s %8.1f %7.1f (%4.1f%%) %7.1f (%4.1f%%) %16s\n", b, c, n, s, sc, p, sp, (sc > 0 ? sprintf("%.2f", sp / sc) : "n/a")
    }'
done <"$results"
rm -f "$results"
