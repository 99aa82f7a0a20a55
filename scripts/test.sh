#!/usr/bin/env bash
# The test command: set up a fresh machine, build everything, run every test.
#
#   scripts/test.sh            (as root on a fresh Debian bookworm machine)
#
# 1. scripts/setup.sh           Debian packages (only what is missing)
# 2. scripts/build-guest-image.sh  guest kernel, initramfs (cached by inputs)
# 3. scripts/fetch-sandbox.sh   the L1 sandbox kernel and kvm-amd modules, then
#    build-guest-image.sh --for-kernel <that kernel>: its pvpmu.ko and initramfs,
#    the same for Debian's newest kernel (headers unpacked by
#    fetch-kernel-headers.sh, not installed), and a DKMS build of
#    pvpmu for both (scripts/pvpmu-dkms.sh --check)
# 4. lints                     cargo fmt --check, cargo clippy -D warnings
# 5. guest-input unit tests     vmm, devices, perf-ring, pvpmu-abi and guest-symbols
#                               unit tests in a debug build,
#                               where integer overflow panics (guest-chosen
#                               values near 2^64 must not reach unchecked
#                               arithmetic; release builds would wrap)
# 6. cargo test --workspace     unit, property, stress and KVM plumbing tests,
#                               and the boot tests, which run on this host's
#                               /dev/kvm if it can run guest user space, else
#                               in the L1 sandbox (each test says which)
# 7. scripts/fuzz.sh            every fuzz target for FUZZ_SECONDS (default 60)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

pv_phase "packages (scripts/setup.sh)"
if [[ $(id -u) -eq 0 ]]; then
    scripts/setup.sh
else
    pv_say "not root: skipping package installation; run scripts/setup.sh as root if anything is missing"
fi
pv_phase "guest image (scripts/build-guest-image.sh)"
scripts/build-guest-image.sh
pv_phase "L1 sandbox (scripts/fetch-sandbox.sh)"
scripts/fetch-sandbox.sh
# The boot tests also run pvpmu on Debian's stock kernel (the sandbox's).
STOCK_RELEASE=$(sed -n 's/^kernel_release=//p' "$REPO_ROOT/build/sandbox/manifest.txt")
pv_phase "guest image for Debian's kernel $STOCK_RELEASE (scripts/build-guest-image.sh --for-kernel)"
if [[ ! -d /usr/src/linux-headers-$STOCK_RELEASE && $(id -u) -eq 0 ]]; then
    # setup.sh installed the headers apt had then; the sandbox kernel may be newer.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "linux-headers-$STOCK_RELEASE" </dev/null
fi
scripts/build-guest-image.sh --for-kernel "$STOCK_RELEASE"
# The guest modules must keep building for the newest kernel Debian serves
# (bookworm carries 6.12 too): build its image, and pvpmu through DKMS for both.
NEWEST_RELEASE=$(apt-cache search --names-only '^linux-headers-[0-9].*-amd64$' 2>/dev/null |
    awk '{ print $1 }' | grep -Ev -- '-(cloud|rt)-amd64$' | sed 's/^linux-headers-//' | sort -V | tail -1)
[[ -n "$NEWEST_RELEASE" ]] || pv_die "apt knows no linux-headers-*-amd64 package: run 'apt-get update' as root"
# Unpacked, not installed: its headers package would pull in its kernel image.
NEWEST_HEADERS=$(scripts/fetch-kernel-headers.sh "$NEWEST_RELEASE")
CHECK_KERNELS=("$STOCK_RELEASE")
if [[ "$NEWEST_RELEASE" != "$STOCK_RELEASE" ]]; then
    pv_phase "guest modules against Debian's newest kernel $NEWEST_RELEASE (build-guest-image.sh --for-kernel, unpacked headers)"
    scripts/build-guest-image.sh --for-kernel "$NEWEST_HEADERS"
    CHECK_KERNELS+=("$NEWEST_HEADERS")
fi
pv_phase "pvpmu as a DKMS package (scripts/pvpmu-dkms.sh --check)"
scripts/pvpmu-dkms.sh --check "${CHECK_KERNELS[@]}"
pv_phase "lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --all -- --check || pv_die "cargo fmt --check failed: run cargo fmt --all"
cargo clippy --workspace --all-targets --release --locked -- -D warnings \
    || pv_die "clippy warnings: fix them (CI denies warnings)"
pv_phase "guest-input unit tests with overflow checks (debug build)"
cargo test --locked --lib -p vmm -p devices -p perf-ring -p pvpmu-abi -p guest-symbols \
    || pv_die "debug-build unit tests failed (an overflow panic here is a guest-reachable bug)"
pv_phase "cargo test --workspace"
# --nocapture: every boot test prints which KVM it used.
set +e
cargo test --workspace --release --locked --no-fail-fast -- --nocapture 2>&1 | tee "$CACHE_ROOT/last-test.log"
rc=${PIPESTATUS[0]}
set -e
((rc == 0)) || pv_die "cargo test failed (status $rc); full log in $CACHE_ROOT/last-test.log"
pv_phase "fuzz (scripts/fuzz.sh ${FUZZ_SECONDS:-60})"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
pv_phase_end
pv_say "all tests passed"
