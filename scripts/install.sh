#!/usr/bin/env bash
# Install perfvisor to use it outside this checkout:
#
#   scripts/install.sh [PREFIX]      (default: ~/.cargo, where cargo install puts binaries)
#
# 1. builds the guest image and fetches the L1 sandbox if this checkout has
#    none yet (scripts/build-guest-image.sh, scripts/fetch-sandbox.sh);
# 2. cargo install --locked --path . --root PREFIX   -> PREFIX/bin/perfvisor
# 3. copies the guest image (without its kernel build tree) and the sandbox
#    artefacts to PREFIX/share/perfvisor/{guest-image,sandbox}, where the
#    installed binary looks for them (docs/install.md, "Where perfvisor
#    finds its data").
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

PREFIX="${1:-${CARGO_HOME:-$HOME/.cargo}}"
[[ -e build/guest-image/vmlinux ]] || scripts/build-guest-image.sh
[[ -e build/sandbox/vmlinux ]] || scripts/fetch-sandbox.sh

pv_phase "cargo install --path . --root $PREFIX"
# The checkout's target directory: the release build is reused, not redone.
cargo install --locked --path . --root "$PREFIX" --force --target-dir "$REPO_ROOT/target"

SHARE="$PREFIX/share/perfvisor"
pv_phase "data: $SHARE/{guest-image,sandbox}"
for what in guest-image sandbox; do
    rm -rf "$SHARE/$what.new"
    mkdir -p "$SHARE/$what.new"
done
# -L: the build tree's files are links into the cache; copy what they name.
for f in vmlinux bzImage System.map initramfs.cpio initramfs-contents.txt guest-info.txt manifest.txt guest-tools; do
    [[ -e build/guest-image/$f ]] && cp -rL "build/guest-image/$f" "$SHARE/guest-image.new/"
done
cp -rL build/sandbox/. "$SHARE/sandbox.new/"
for what in guest-image sandbox; do
    rm -rf "$SHARE/$what"
    mv "$SHARE/$what.new" "$SHARE/$what"
done
pv_phase_end
pv_say "installed $PREFIX/bin/perfvisor with its data in $SHARE ($(du -sh "$SHARE" | cut -f1))"
