#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh [seconds-per-target]   (default 60)
#
# Installs cargo-fuzz if it is missing. Only the stable toolchain exists
# here; cargo-fuzz needs nightly flags (-Zsanitizer), which stable accepts
# with RUSTC_BOOTSTRAP=1. Exits non-zero as soon as a target crashes (the
# reproducer is left in fuzz/artifacts/<target>/).
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
targets="$(cargo fuzz list)"
if [ -z "$targets" ]; then
    echo "fuzz.sh: no fuzz targets under fuzz/" >&2
    exit 1
fi

for t in $targets; do
    echo "fuzz.sh: running $t for ${secs}s" >&2
    mkdir -p "corpus/$t"
    if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1; then
        echo "fuzz.sh: $t crashed; see fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz.sh: all targets ran ${secs}s without a crash" >&2
