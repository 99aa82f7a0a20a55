#!/usr/bin/env bash
# Sampling overhead at 1 and 4 kHz against no sampling, with the raw
# mechanism floors, on this host's /dev/kvm (CPL3 payload) and in the L1
# sandbox (payload and a Linux guest), in one run.
#
#   scripts/bench-sampling.sh [ROUNDS [PARTS]]   (default 3, all)
#   PARTS: a comma list of payload, linux, delivery, record.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
cargo build --release --locked -q -p perfvisor --example bench_sampling
scripts/build-guest-image.sh
scripts/fetch-sandbox.sh
exec target/release/examples/bench_sampling "${1:-3}" "${2:-all}"
