#!/usr/bin/env bash
# Anchor comparison for `perfvisor record`: guest kernel symbol shares from
# perfvisor against the host kernel's own guest sampling (perf record -e
# cpu-clock:G), same guest and workload, printed side by side.
#
#   scripts/record-anchor.sh [SECONDS [kick|host-timer]]   (default 5 kick)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
cargo build --release --locked -q -p perfvisor --example record_anchor
scripts/build-guest-image.sh
scripts/fetch-sandbox.sh
exec target/release/examples/record_anchor "${1:-5}" "${2:-kick}"
