#!/usr/bin/env bash
# The main job on a fresh machine: install, build, and boot the default guest.
#
#   scripts/demo.sh [perfvisor run options] [-- guest command]
#
# Sets up packages (as root), builds perfvisor (release), the guest image and
# the L1 sandbox artefacts, then boots the default guest. With no arguments
# the guest samples a CPU-bound workload through pvpmu (host-produced
# samples in a standard perf mmap) with pvpmu-tool and prints what arrived;
# any arguments go to `perfvisor run` instead. On a host whose /dev/kvm
# cannot run guest user space, perfvisor itself moves the guest into the L1
# sandbox and says so.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

if [[ $(id -u) -eq 0 ]]; then
    scripts/setup.sh
fi
pv_phase "cargo build --release"
cargo build --release --locked -q -p perfvisor
scripts/build-guest-image.sh
scripts/fetch-sandbox.sh
pv_phase_end
if (($# == 0)); then
    set -- -- 'pvpmu-tool --freq 1000 --duration 4 -- pv-workload --seconds 3'
fi
pv_say "running: target/release/perfvisor run $*"
exec target/release/perfvisor run "$@"
