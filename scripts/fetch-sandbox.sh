#!/usr/bin/env bash
# Fetch the L1 sandbox's artefacts: Debian's current linux-image-6.1.0-N-amd64 (N
# resolved through the linux-image-amd64 meta package), its vmlinuz and the modules
# that give /dev/kvm on AMD (kvm-amd and its modules.dep closure), and busybox-static.
# Packages are downloaded with apt-get download, never installed.
#
# Cached under ${PERFVISOR_CACHE:-$HOME/.cache/perfvisor}/sandbox/<kernel pkg>_<version>-<key>,
# published (copied) to <repo>/build/sandbox/:
#   vmlinuz  vmlinux (the ELF inside vmlinuz, booted via PVH: faster)  modules/*.ko  modules/order (load order, one file name a line)  busybox  manifest.txt
# See docs/sandbox.md.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: scripts/fetch-sandbox.sh [--refresh]
  --refresh   ignore the cache and download again
environment: PERFVISOR_CACHE (cache root)
EOF
}
REFRESH=0
while (($#)); do
    case "$1" in
    --refresh) REFRESH=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) pv_die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

OUT="$REPO_ROOT/build/sandbox"
META=linux-image-amd64
WANTED_MODULES=(kvm-amd) # everything else comes from modules.dep

for c in apt-get apt-cache dpkg-deb depmod modprobe; do
    pv_need_cmd "$c" "apt kmod"
done

# extract_vmlinux BZIMAGE OUT: decompress the ELF vmlinux inside a bzImage (payload
# offset/length from the setup header; Debian's generic flavour uses XZ). QEMU boots
# that ELF through its PVH entry note without running the in-guest decompressor,
# which under TCG takes ~3 s of the L1 boot.
extract_vmlinux() {
    local bz="$1" out="$2" sects off len start magic
    sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    start=$(((sects + 1) * 512 + off))
    magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' ')
    local dec
    case "$magic" in
    fd377a58) dec="xz -dc --single-stream" ;; # the payload ends with a 4-byte size
    02214c18) dec="lz4 -dc" ;;
    28b52ffd) dec="zstd -dc" ;;
    1f8b*) dec="gzip -dc" ;;
    *) pv_die "$bz: unknown kernel payload compression (magic $magic)" ;;
    esac
    dd if="$bz" iflag=skip_bytes,count_bytes skip="$start" count="$len" bs=1M status=none | $dec >"$out" ||
        pv_die "$bz: decompressing the kernel payload ($dec) failed"
    [[ "$(od -An -tx1 -N4 "$out" | tr -d ' ')" == 7f454c46 ]] || pv_die "$bz: decompressed payload is not an ELF file"
}

# Extraction recipe; its text is part of the cache key.
# extract_sandbox DEB_KERNEL DEB_BUSYBOX KVER DIR
extract_sandbox() {
    local kdeb="$1" bdeb="$2" kver="$3" dir="$4" x line ko
    x="$dir/x"
    mkdir -p "$x" "$dir/modules"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$x" ./boot "./lib/modules/$kver"
    cp "$x/boot/vmlinuz-$kver" "$dir/vmlinuz"
    # The package's own System.map, as users have it (Debian ships a
    # one-line placeholder; tests/record.rs records with it).
    cp "$x/boot/System.map-$kver" "$dir/System.map"
    extract_vmlinux "$dir/vmlinuz" "$dir/vmlinux"
    depmod -b "$x" "$kver"
    : >"$dir/modules/order"
    # "insmod /path/to/mod.ko [params]", dependencies first.
    while read -r line; do
        [[ "$line" == insmod\ * ]] || continue
        ko=$(awk '{print $2}' <<<"$line")
        case "$ko" in
        *.ko) cp "$ko" "$dir/modules/" ;;
        *.ko.xz) xz -dc "$ko" >"$dir/modules/$(basename "$ko" .xz)" ;;
        *.ko.zst) zstd -qdc "$ko" >"$dir/modules/$(basename "$ko" .zst)" ;;
        *.ko.gz) gzip -dc "$ko" >"$dir/modules/$(basename "$ko" .gz)" ;;
        *) pv_die "unexpected module file $ko" ;;
        esac
        ko=$(basename "$ko")
        ko=${ko%.xz}
        ko=${ko%.zst}
        ko=${ko%.gz}
        grep -qxF "$ko" "$dir/modules/order" || echo "$ko" >>"$dir/modules/order"
    done < <(modprobe -d "$x" -S "$kver" --show-depends "${WANTED_MODULES[@]}")
    [[ -s "$dir/modules/order" ]] || pv_die "modprobe found no modules for ${WANTED_MODULES[*]} in $kdeb"
    dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$x" ./bin/busybox
    install -m 0755 "$x/bin/busybox" "$dir/busybox"
    rm -rf "$x"
}

# ----- resolve the packages -----
pv_phase "resolve $META"
resolve() { apt-cache depends "$META" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
KPKG=$(resolve || true)
if [[ -z "$KPKG" ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        pv_say "apt lists do not know $META: running apt-get update"
        apt-get update -qq </dev/null >/dev/null || pv_die "apt-get update failed; check the network / apt sources"
        KPKG=$(resolve || true)
    fi
    [[ -n "$KPKG" ]] || pv_die "apt-cache cannot resolve $META: run 'apt-get update' as root (or scripts/setup.sh)"
fi
policy_candidate() { apt-cache policy "$1" | awk '$1 == "Candidate:" { print $2 }'; }
KVER_PKG=$(policy_candidate "$KPKG")
BB_VER=$(policy_candidate busybox-static)
[[ -n "$KVER_PKG" && "$KVER_PKG" != "(none)" ]] || pv_die "no candidate version for $KPKG: run 'apt-get update' as root"
[[ -n "$BB_VER" && "$BB_VER" != "(none)" ]] || pv_die "no candidate version for busybox-static: run 'apt-get update' as root"
KVER=${KPKG#linux-image-} # 6.1.0-N-amd64
pv_say "    $META -> $KPKG $KVER_PKG; busybox-static $BB_VER"

KEY=$({
    echo "recipe-v1 $KPKG $KVER_PKG busybox-static $BB_VER ${WANTED_MODULES[*]}"
    declare -f extract_sandbox extract_vmlinux
} | pv_hash)
DIR="$CACHE_ROOT/sandbox/${KPKG}_${KVER_PKG}-$KEY"
pv_lock "$CACHE_ROOT/sandbox.lock"
((REFRESH == 0)) || rm -rf "$DIR"

if [[ -f "$DIR/.complete" ]]; then
    pv_phase_end
    pv_say "sandbox artefacts: cached ($DIR)"
else
    rm -rf "$DIR"
    DL="$DIR.download"
    rm -rf "$DL"
    mkdir -p "$DL"
    pv_phase "download $KPKG $KVER_PKG and busybox-static $BB_VER (apt-get download)"
    (cd "$DL" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER_PKG" "busybox-static=$BB_VER" </dev/null >"$DL/apt.log" 2>&1) ||
        {
            tail -n 20 "$DL/apt.log" >&2
            pv_die "apt-get download failed; run 'apt-get update' as root and retry"
        }
    pv_phase "extract vmlinuz, modules (${WANTED_MODULES[*]} + dependencies), busybox"
    mkdir -p "$DIR.tmp"
    rm -rf "${DIR:?}.tmp"/*
    extract_sandbox "$(ls "$DL"/linux-image-*.deb)" "$(ls "$DL"/busybox-static_*.deb)" "$KVER" "$DIR.tmp"
    {
        echo "# perfvisor L1 sandbox artefacts (scripts/fetch-sandbox.sh)"
        echo "kernel_package=$KPKG"
        echo "kernel_package_version=$KVER_PKG"
        echo "kernel_release=$KVER"
        echo "busybox_version=$BB_VER"
        echo "modules=$(tr '\n' ' ' <"$DIR.tmp/modules/order" | sed 's/ $//')"
        echo "cache_key=$KEY"
        echo "cache_dir=$DIR"
        echo "vmlinuz_bytes=$(stat -c %s "$DIR.tmp/vmlinuz")"
        echo "vmlinux_bytes=$(stat -c %s "$DIR.tmp/vmlinux")"
    } >"$DIR.tmp/manifest.txt"
    mv "$DIR.tmp" "$DIR"
    touch "$DIR/.complete"
    rm -rf "$DL"
fi

pv_prune "$CACHE_ROOT/sandbox" 2 "$DIR"
pv_phase "publish $OUT"
rm -rf "$OUT.tmp"
mkdir -p "$(dirname "$OUT")"
cp -a "$DIR" "$OUT.tmp"
rm -f "$OUT.tmp/.complete" "$OUT.tmp/.used"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
# The user cache's copy for binaries outside a checkout (artefacts/src/lib.rs): a
# link to the cached directory, which pruning keeps while it is the newest.
mkdir -p "$CACHE_ROOT/current"
pv_publish "$DIR" "$CACHE_ROOT/current/sandbox"
pv_phase_end
pv_say "sandbox ready: $KVER, modules: $(tr '\n' ' ' <"$OUT/modules/order")"
pv_say "  $OUT/{vmlinuz,vmlinux,System.map,modules/,busybox,manifest.txt}"
