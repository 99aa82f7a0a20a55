#!/usr/bin/env bash
# Boot time to the guest's /init and memory overhead: perfvisor against
# `qemu-system-x86_64 -accel kvm` on the same kernel and initramfs, measured
# in one run (in the L1 sandbox when this host's KVM cannot run Linux).
#
#   scripts/bench-boot.sh [ITERATIONS]   (default 5)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
cargo build --release --locked -q -p perfvisor --example bench_boot
scripts/build-guest-image.sh
scripts/fetch-sandbox.sh
exec target/release/examples/bench_boot "${1:-5}"
