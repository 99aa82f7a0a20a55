#!/usr/bin/env bash
# Unpack a Debian kernel's headers without installing anything (no
# linux-image, no initramfs or boot loader hooks): apt-get download of
# linux-headers-<release>, its -common package and its linux-kbuild, each
# unpacked with dpkg-deb into ${PERFVISOR_CACHE:-~/.cache/perfvisor}/headers/<release>/.
# Prints the headers directory, which builds out-of-tree modules like the
# installed package (`build-guest-image.sh --for-kernel DIR`, `pvpmu-dkms.sh
# --check DIR`).
#
#   scripts/fetch-kernel-headers.sh 6.12.118+deb12-amd64
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -eq 1 && "$1" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || pv_die "usage: $0 RELEASE (e.g. 6.12.118+deb12-amd64)"
REL="$1"
PKG="linux-headers-$REL"
OUT="$CACHE_ROOT/headers/$REL"
DIR="$OUT/root/usr/src/$PKG"
if [[ -f "$OUT/.complete" ]]; then
    echo "$DIR"
    exit 0
fi
pv_need_cmd apt-get apt
pv_need_cmd dpkg-deb dpkg
# Its -common and linux-kbuild packages, from its Depends.
mapfile -t PKGS < <({
    echo "$PKG"
    apt-cache depends "$PKG" 2>/dev/null | awk '$1 ~ /Depends:$/ && $2 ~ /^linux-(headers-.*-common|kbuild-)/ { print $2 }'
} | sort -u)
((${#PKGS[@]} >= 3)) || pv_die "apt does not know $PKG with its -common and linux-kbuild packages: run 'apt-get update' as root"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/debs" "$OUT.tmp/root"
(cd "$OUT.tmp/debs" && apt-get download -q -o APT::Sandbox::User=root "${PKGS[@]}" </dev/null >../apt.log 2>&1) ||
    { tail -5 "$OUT.tmp/apt.log" >&2; pv_die "apt-get download ${PKGS[*]} failed"; }
for deb in "$OUT.tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$OUT.tmp/root"
done
# The only absolute path in the tree: the arch Makefile's include of -common.
sed -i "s#^include /usr/src/#include $OUT/root/usr/src/#" "$OUT.tmp/root/usr/src/$PKG/Makefile"
rm -rf "$OUT.tmp/debs" "$OUT"
mv "$OUT.tmp" "$OUT"
touch "$OUT/.complete"
echo "$DIR"
