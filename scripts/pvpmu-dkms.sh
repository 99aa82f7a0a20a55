#!/usr/bin/env bash
# pvpmu.ko as a DKMS package, the way distribution users install out-of-tree
# modules: DKMS rebuilds it for every kernel the system installs.
#
#   scripts/pvpmu-dkms.sh --tree DIR     assemble the DKMS source tree in DIR/pvpmu-<version>
#   scripts/pvpmu-dkms.sh --install      as root: into /usr/src, then dkms add + install
#                                        for the running kernel (its headers must be installed)
#   scripts/pvpmu-dkms.sh --check K...   build it with dkms for each kernel K (a release
#                                        whose headers are installed, or a headers
#                                        directory), in a private DKMS tree
#
# The version is the driver's interface version plus the repository's commit.
# docs/pvpmu-driver.md, "Installing with DKMS".
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

SRC="$REPO_ROOT/guest-image/pvpmu"
INC="$REPO_ROOT/guest-image/include"

pvpmu_version() {
    local iface commit
    iface=$(sed -n 's/^#define PVPMU_IF_VERSION[[:space:]]*\([0-9]*\).*/\1/p' "$INC/pvpmu_if.h")
    commit=$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo local)
    echo "${iface:-0}.0+git$commit"
}

# assemble DIR: DIR/pvpmu-<version>/ with dkms.conf, Kbuild, pvpmu.c, include/.
assemble() {
    local out="$1/pvpmu-$VERSION"
    rm -rf "$out"
    mkdir -p "$out/include"
    install -m 0644 "$SRC/pvpmu.c" "$SRC/Kbuild" "$out/"
    install -m 0644 "$INC"/*.h "$INC"/*.mk "$out/include/"
    sed "s/@VERSION@/$VERSION/" "$SRC/dkms.conf" >"$out/dkms.conf"
    echo "$out"
}

VERSION=$(pvpmu_version)
case "${1:-}" in
--tree)
    [[ $# -eq 2 ]] || pv_die "--tree needs a directory"
    mkdir -p "$2"
    pv_say "DKMS source tree: $(assemble "$2")"
    ;;
--install)
    [[ $(id -u) -eq 0 ]] || pv_die "run as root (it installs into /usr/src and /lib/modules): sudo $0 --install"
    pv_need_cmd dkms dkms
    assemble /usr/src >/dev/null
    dkms add -m pvpmu -v "$VERSION" || true # already added: keep going
    dkms install -m pvpmu -v "$VERSION"
    pv_say "pvpmu $VERSION installed; load it with: modprobe pvpmu base=0x... irq=N (perfvisor puts the values on the kernel command line)"
    ;;
--check)
    shift
    (($#)) || pv_die "--check needs one or more kernel releases"
    pv_need_cmd dkms dkms
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src" "$work/dkms"
    assemble "$work/src" >/dev/null
    dk=(dkms --dkmstree "$work/dkms" --sourcetree "$work/src" -m pvpmu -v "$VERSION")
    "${dk[@]}" add >"$work/add.log" 2>&1 || { cat "$work/add.log" >&2; pv_die "dkms add failed"; }
    for k in "$@"; do
        src=()
        if [[ -d "$k" ]]; then
            src=(--kernelsourcedir "$k")
            k=$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$k/include/generated/utsrelease.h")
            [[ -n "$k" ]] || pv_die "${src[1]} has no include/generated/utsrelease.h: not a kernel headers directory"
        fi
        pv_phase "dkms build pvpmu $VERSION for $k"
        if ! "${dk[@]}" "${src[@]}" build -k "$k" >"$work/build.log" 2>&1; then
            tail -40 "$work/build.log" >&2
            find "$work/dkms" -name make.log -exec tail -40 {} \; >&2
            pv_die "dkms could not build pvpmu for $k"
        fi
        ko=$(find "$work/dkms/pvpmu/$VERSION/$k" -name 'pvpmu.ko*' | head -1)
        [[ -n "$ko" ]] || pv_die "dkms build for $k left no pvpmu.ko"
        pv_say "    $k: $(basename "$ko"), vermagic $(modinfo -F vermagic "$ko")"
    done
    pv_phase_end
    ;;
-h | --help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
