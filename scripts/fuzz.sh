#!/usr/bin/env bash
# Runs the cargo-fuzz targets under fuzz/.
#
#   scripts/fuzz.sh [--only t1,t2] [seconds-per-target]
#       Bounded mode (CI, through scripts/test.sh; default 60 s a target):
#       every target in turn; stops at the first crash. With CI set, the
#       mutation seed is pinned (-seed=1), so a CI run explores the same
#       inputs each time up to machine speed, and a red CI points at a change
#       rather than at luck; soak mode and local runs use a random seed.
#   scripts/fuzz.sh --soak [--only t1,t2] [seconds-per-target]
#       Soak mode (default 3600 s a target): every target runs its time
#       even if an earlier one crashed; one summary line per target goes to
#       stdout and to fuzz/soak-report.txt (target, seconds, executions,
#       last coverage, corpus size, crashes: 0 or the reproducer's path).
#       libFuzzer's full output is kept in fuzz/soak-logs/<target>.log.
#       Exits non-zero if any target crashed.
#
# Each target starts from its corpus, fuzz/corpus/<target> (git-ignored;
# libFuzzer adds new inputs there, to the first directory only) and the
# seeds kept in the repository, fuzz/seeds/<target> (read only here;
# scripts/fuzz-seeds.py writes them). A crash's reproducer is left in
# fuzz/artifacts/<target>/.
#
# Installs cargo-fuzz if it is missing. Only the stable toolchain exists
# here; cargo-fuzz needs nightly flags (-Zsanitizer), which stable accepts
# with RUSTC_BOOTSTRAP=1.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

soak=0
only=""
secs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --soak) soak=1 ;;
        --only)
            [ $# -ge 2 ] || { echo "fuzz.sh: --only needs a comma-separated list of targets" >&2; exit 2; }
            only="$2"
            shift
            ;;
        --only=*) only="${1#--only=}" ;;
        -h | --help) usage ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; usage ;;
        *)
            [ -z "$secs" ] || { echo "fuzz.sh: one duration only (got $secs and $1)" >&2; exit 2; }
            secs="$1"
            ;;
    esac
    shift
done
if [ -z "$secs" ]; then
    if [ "$soak" = 1 ]; then secs=3600; else secs=60; fi
fi
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: seconds per target must be a positive whole number, not '$secs'" >&2
    exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
all="$(cargo fuzz list)"
if [ -z "$all" ]; then
    echo "fuzz.sh: no fuzz targets under fuzz/" >&2
    exit 1
fi
if [ -n "$only" ]; then
    targets=""
    for t in ${only//,/ }; do
        if ! grep -qx -- "$t" <<<"$all"; then
            echo "fuzz.sh: no fuzz target '$t'; targets are:" $all >&2
            exit 2
        fi
        targets="$targets $t"
    done
else
    targets="$all"
fi

# The corpus directories of target $1: its own (written), its seeds (read).
corpora() {
    mkdir -p "corpus/$1"
    echo "corpus/$1"
    if [ -d "seeds/$1" ]; then
        echo "seeds/$1"
    fi
}

if [ "$soak" = 0 ]; then
    seed=()
    if [ -n "${CI:-}" ]; then
        seed=(-seed=1)
    fi
    for t in $targets; do
        echo "fuzz.sh: running $t for ${secs}s" >&2
        mapfile -t dirs < <(corpora "$t")
        if ! cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 "${seed[@]}"; then
            echo "fuzz.sh: $t crashed; see fuzz/artifacts/$t/" >&2
            exit 1
        fi
    done
    echo "fuzz.sh: all targets ran ${secs}s without a crash" >&2
    exit 0
fi

# Soak mode.
report="$root/fuzz/soak-report.txt"
logs="$root/fuzz/soak-logs"
mkdir -p "$logs"
line() { printf '%-22s %8s %12s %8s %8s %s\n' "$@"; }
{
    echo "# scripts/fuzz.sh --soak ${secs}s per target, $(date -u '+%Y-%m-%dT%H:%M:%SZ'), $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo 'no git')"
    line target seconds executions cov corpus crashes
} >"$report"
line target seconds executions cov corpus crashes
failed=0
for t in $targets; do
    log="$logs/$t.log"
    echo "fuzz.sh: soaking $t for ${secs}s (log: fuzz/soak-logs/$t.log)" >&2
    mapfile -t dirs < <(corpora "$t")
    start=$(date +%s)
    # A hang of one input past 60 s is a finding too (reported as a crash).
    if cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 -timeout=60 >"$log" 2>&1; then
        rc=0
    else
        rc=$?
    fi
    took=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n 1 | awk '{print $2}' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | awk '{print $2}' || true)
    size=$(find "corpus/$t" -type f | wc -l)
    crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
    if [ "$rc" != 0 ]; then
        failed=1
        case "$crash" in
            "") crash="exit-status-$rc(see fuzz/soak-logs/$t.log)" ;;
            "$root"/*) crash="${crash#"$root"/}" ;;
            /*) ;;
            *) crash="fuzz/${crash#./}" ;;
        esac
    else
        crash=0
    fi
    line "$t" "$took" "${execs:-?}" "${cov:-?}" "$size" "$crash" | tee -a "$report"
done
echo "fuzz.sh: report in fuzz/soak-report.txt" >&2
if [ "$failed" != 0 ]; then
    echo "fuzz.sh: at least one target crashed; reproducers are listed in the report" >&2
    exit 1
fi
