#!/usr/bin/env bash
# Install everything perfvisor needs on a fresh Debian bookworm machine. Run as root;
# idempotent (installs only what is missing; `apt-get update` only then); works under
# CI=true with no stdin.
#
# To add a package: append it to PACKAGES below, with a comment saying who needs it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(
    # guest kernel build (scripts/build-guest-image.sh)
    build-essential # gcc, make, binutils (readelf)
    flex bison bc
    libelf-dev  # objtool
    libssl-dev  # kbuild's sign-file/extract-cert; unused while MODULE_SIG and
                # SYSTEM_TRUSTED_KEYRING stay off in guest-image/kernel.config
    linux-source-6.1
    xz-utils    # unpacks linux-source, Debian .debs
    lz4         # bzImage compression
    cpio        # initramfs
    busybox-static
    linux-perf  # /usr/bin/perf in the guest initramfs, and on the host
    linux-headers-amd64 # pvpmu.ko for Debian's stock kernel, the one the sandbox
                        # fetches (build-guest-image.sh --for-kernel)
    dkms        # pvpmu.ko's DKMS package is built in CI (scripts/pvpmu-dkms.sh)
    dwarves     # pahole: BTF for modules built against Debian's 6.12 headers,
                # which ship vmlinux with CONFIG_DEBUG_INFO_BTF_MODULES=y
    # the L1 sandbox (scripts/fetch-sandbox.sh, crate sandbox)
    qemu-system-x86
    kmod        # depmod/modprobe resolve the kvm-amd module closure
    util-linux  # flock
)

export DEBIAN_FRONTEND=noninteractive
[[ $(id -u) -eq 0 ]] || pv_die "run as root (it installs Debian packages): sudo scripts/setup.sh"

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    pv_say "all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

pv_phase "apt-get update"
apt-get update -q </dev/null
pv_phase "apt-get install --no-install-recommends ${missing[*]}"
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
pv_phase_end
pv_say "installed: ${missing[*]}"
