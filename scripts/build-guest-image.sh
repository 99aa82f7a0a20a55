#!/usr/bin/env bash
# Build perfvisor's L2 guest image: an ELF vmlinux (+ System.map, bzImage, the built
# kernel tree for out-of-tree modules) from Debian's linux-source-6.1 and the config
# fragment guest-image/kernel.config, and an uncompressed cpio initramfs with
# busybox-static, the guest-tools binaries, guest-image/rootfs/ and (by default)
# Debian's perf with its shared libraries.
#
# Cached under ${PERFVISOR_CACHE:-$HOME/.cache/perfvisor}: the kernel by a key over
# its inputs, the initramfs by a separate key over its inputs. Published at
# <repo>/build/guest-image/. See docs/guest-image.md.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: scripts/build-guest-image.sh [options]
  --with-perf        put Debian's /usr/bin/perf and its libraries into the initramfs (default)
  --without-perf     leave perf out (initramfs ~7 MB instead of ~40 MB)
  --extra DIR        copy DIR's contents into the initramfs root (repeatable); also
                     \$PERFVISOR_GUEST_EXTRA, a colon-separated list of directories
  --for-kernel K     build the initramfs for another kernel instead of perfvisor's own:
                     K is a kernel release (6.1.0-57-amd64), a Debian package name
                     (linux-image-6.1.0-57-amd64) whose linux-headers-* package is
                     installed, or a kernel build tree / headers directory. Its modules
                     are built against K (pvpmu.ko needs no kernel patch); published at
                     build/guest-image/kernels/<release>/initramfs.cpio, which
                     `perfvisor run --kernel <that kernel>` then boots by default
  --rebuild          ignore cached results and rebuild the kernel and the initramfs
  -h, --help         this text
environment: PERFVISOR_CACHE (cache root), JOBS (make -j, default 2)
EOF
}

WITH_PERF=1
REBUILD=0
FOR_KERNEL=""
EXTRA_DIRS=()
if [[ -n "${PERFVISOR_GUEST_EXTRA:-}" ]]; then
    IFS=: read -r -a EXTRA_DIRS <<<"$PERFVISOR_GUEST_EXTRA"
fi
while (($#)); do
    case "$1" in
    --with-perf) WITH_PERF=1 ;;
    --without-perf | --no-perf) WITH_PERF=0 ;;
    --extra)
        [[ $# -ge 2 ]] || pv_die "--extra needs a directory"
        EXTRA_DIRS+=("$2")
        shift
        ;;
    --for-kernel)
        [[ $# -ge 2 ]] || pv_die "--for-kernel needs a kernel release, package or directory"
        FOR_KERNEL="$2"
        shift
        ;;
    --rebuild) REBUILD=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) pv_die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
for d in "${EXTRA_DIRS[@]}"; do
    [[ -d "$d" ]] || pv_die "extra directory '$d' does not exist"
done

FRAGMENT="$REPO_ROOT/guest-image/kernel.config"
PATCH_DIR="$REPO_ROOT/guest-image/patches"
ROOTFS_SRC="$REPO_ROOT/guest-image/rootfs"
OUT="$REPO_ROOT/build/guest-image"
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=/bin/busybox
GUEST_TARGET_DIR="$REPO_ROOT/target/guest"
GUEST_TRIPLE=x86_64-unknown-linux-gnu

# ---------------------------------------------------------------------------
# Kernel recipe. Everything the kernel build does is in these functions: their
# text is part of the kernel's cache key, so editing them rebuilds the kernel.

# kernel_extract DIR: unpack linux-source-6.1 into DIR/linux.
kernel_extract() {
    local dir="$1"
    rm -rf "$dir/src.tmp" "$dir/linux"
    mkdir -p "$dir/src.tmp"
    tar -C "$dir/src.tmp" -xf "$LINUX_TARBALL" --use-compress-program='xz -T2'
    mv "$dir/src.tmp/linux-source-6.1" "$dir/linux"
    rmdir "$dir/src.tmp"
}

# kernel_patch TREE: apply every guest-image/patches/*.patch to TREE, in file-name
# order (git format-patch files, -p1). Their text is part of the cache key.
kernel_patch() {
    local tree="$1" p
    for p in "${KERNEL_PATCHES[@]}"; do
        patch -d "$tree" -p1 --forward --batch --quiet <"$p" ||
            pv_die "patch $p does not apply to linux-source-6.1 $LINUX_SRC_VERSION"
    done
}

# kernel_make TREE LOG ARGS...: make in TREE with reproducible build identity.
kernel_make() {
    local tree="$1" log="$2"
    shift 2
    pv_run_logged "$log" "make $*" env KBUILD_BUILD_USER=perfvisor KBUILD_BUILD_HOST=perfvisor \
        KBUILD_BUILD_TIMESTAMP="2000-01-01 00:00:00 UTC" make -C "$tree" -j"$JOBS" "$@"
}

# kernel_configure TREE LOG: tinyconfig + fragment + olddefconfig.
kernel_configure() {
    local tree="$1" log="$2"
    kernel_make "$tree" "$log" tinyconfig
    pv_run_logged "$log" "merge_config" bash -c \
        "cd '$tree' && scripts/kconfig/merge_config.sh -m .config '$FRAGMENT'"
    kernel_make "$tree" "$log" olddefconfig
}

# kernel_compile TREE LOG: vmlinux, bzImage, and what out-of-tree modules need.
kernel_compile() {
    local tree="$1" log="$2"
    kernel_make "$tree" "$log" bzImage
    kernel_make "$tree" "$log" modules_prepare
    kernel_make "$tree" "$log" modules
}

# verify_kernel_config FRAGMENT CONFIG: every fragment line must hold in CONFIG.
verify_kernel_config() {
    local frag="$1" config="$2" line sym val bad=()
    while IFS= read -r line || [[ -n "$line" ]]; do
        if [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
            sym="${BASH_REMATCH[1]}"
            if grep -q "^$sym=" "$config"; then
                bad+=("$sym: wanted off, got $(grep "^$sym=" "$config" | cut -d= -f2-)")
            fi
        elif [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym="${BASH_REMATCH[1]}"
            val="${BASH_REMATCH[2]}"
            if ! grep -qxF "$sym=$val" "$config"; then
                if grep -q "^$sym=" "$config"; then
                    bad+=("$sym: wanted $val, got $(grep "^$sym=" "$config" | cut -d= -f2-)")
                else
                    bad+=("$sym: wanted $val, got off (a dependency is missing?)")
                fi
            fi
        fi
    done <"$frag"
    if ((${#bad[@]})); then
        printf '%s: error: the kernel config does not match %s:\n' "$_PV_PROG" "$frag" >&2
        printf '    %s\n' "${bad[@]}" >&2
        pv_die "${#bad[@]} fragment option(s) did not survive olddefconfig; fix their dependencies in guest-image/kernel.config (inspect with: make -C <tree> menuconfig)"
    fi
}

# ---------------------------------------------------------------------------
# Initramfs recipe (its text is part of the initramfs cache key).

# ldd_closure BINARY: print the shared libraries BINARY loads, and the loader, one
# path a line. Nothing for a static binary. Fails on a library "not found".
ldd_closure() {
    local bin="$1" out
    if ! out=$(LC_ALL=C ldd "$bin" 2>&1); then
        [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
        pv_die "ldd $bin failed: $out"
    fi
    if grep -q "not found" <<<"$out"; then
        pv_die "ldd $bin: missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
    fi
    # "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | LC_ALL=C sort -u
}

# add_binary_with_libs STAGE BINARY [DEST]: copy a (dynamic) binary to STAGE/DEST
# (default: its own path) and its ldd closure, including the loader, each to the
# path the loader resolved it at on this host (symlinks dereferenced).
add_binary_with_libs() {
    local stage="$1" bin="$2" dest="${3:-$2}" lib
    install -D -m 0755 "$bin" "$stage$dest"
    while IFS= read -r lib; do
        [[ -e "$stage$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
    done < <(ldd_closure "$bin")
}

# cpio_newc_node NAME MODE_OCTAL RDEV_MAJOR RDEV_MINOR INO: one newc header for a
# device node (no data). Lets a non-root build put /dev/console in the archive.
cpio_newc_node() {
    local name="$1" mode=$((8#$2)) maj="$3" min="$4" ino="$5" namesize pad
    namesize=$((${#name} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0
    printf '%s\0' "$name"
    pad=$(((4 - (110 + namesize) % 4) % 4))
    ((pad == 0)) || head -c "$pad" /dev/zero
}

# stage_initramfs STAGE: assemble the initramfs tree.
stage_initramfs() {
    local stage="$1" applet exe d
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,lib/modules/perfvisor,run,var}
    chmod 1777 "$stage/tmp"
    install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
    while IFS= read -r applet; do
        [[ -e "$stage/$applet" || -L "$stage/$applet" ]] || ln -s /bin/busybox "$stage/$applet"
    done < <("$BUSYBOX" --list-full)
    for exe in "${GUEST_EXES[@]}"; do
        install -m 0755 "$exe" "$stage/bin/$(basename "$exe")"
    done
    install -D -m 0644 "$PV_EXIT_KO" "$stage/lib/perfvisor/pv_exit.ko"
    install -D -m 0644 "$PV_EVENTS_KO" "$stage/lib/modules/perfvisor/pv_events.ko"
    install -D -m 0644 "$PVPMU_KO" "$stage/lib/modules/perfvisor/pvpmu.ko"
    # Test only, not loaded by /init (tests/hostile.rs, docs/pvpmu-hostile.md).
    install -D -m 0644 "$PVPMU_EVIL_KO" "$stage/lib/perfvisor-test/pvpmu_evil.ko"
    install -D -m 0644 "$PV_IRQOFF_KO" "$stage/lib/perfvisor-test/pv_irqoff.ko"
    if ((WITH_PERF)); then
        add_binary_with_libs "$stage" /usr/bin/perf
    fi
    cp -a "$ROOTFS_SRC/." "$stage/"
    for d in "${EXTRA_DIRS[@]}"; do
        cp -a "$d/." "$stage/"
    done
    chmod 0755 "$stage/init"
}

# write_cpio STAGE OUT: uncompressed newc archive, root-owned, fixed mtimes, sorted,
# followed by a second archive with /dev/console (the kernel opens it before /init).
write_cpio() {
    local stage="$1" out="$2"
    find "$stage" -exec touch -h -d @946684800 {} +
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out"
    {
        cpio_newc_node dev/console 020600 5 1 900001
        cpio_newc_node TRAILER!!! 0 0 0 0
    } >>"$out"
}

# resolve_for_kernel SPEC: set KTREE (a kernel build tree or headers directory) and
# KERNEL_RELEASE (its `uname -r`) for --for-kernel SPEC.
resolve_for_kernel() {
    local spec="$1" rel
    if [[ -d "$spec" ]]; then
        KTREE=$(readlink -f "$spec")
    else
        rel=${spec#linux-image-}
        rel=${rel#linux-headers-}
        for KTREE in "/usr/src/linux-headers-$rel" "/lib/modules/$rel/build" ""; do
            [[ -z "$KTREE" || -d "$KTREE" ]] && break
        done
        [[ -n "$KTREE" ]] ||
            pv_die "no headers for kernel '$rel': run 'apt-get install linux-headers-$rel' as root, or pass --for-kernel DIR (a kernel build tree)"
    fi
    [[ -f "$KTREE/Makefile" && -f "$KTREE/Module.symvers" && -f "$KTREE/include/generated/utsrelease.h" ]] ||
        pv_die "$KTREE is not a built kernel tree or headers directory (it needs Makefile, Module.symvers and include/generated/utsrelease.h)"
    KERNEL_RELEASE=$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$KTREE/include/generated/utsrelease.h")
    [[ "$KERNEL_RELEASE" =~ ^[A-Za-z0-9._+-]+$ ]] ||
        pv_die "cannot read a kernel release from $KTREE/include/generated/utsrelease.h"
    # A tree that ships vmlinux with CONFIG_DEBUG_INFO_BTF_MODULES (Debian's
    # 6.12 headers, seen with 6.12.118+deb12) gives every module BTF with pahole,
    # as the distribution's own modules have; kbuild fails without it.
    if [[ -f "$KTREE/vmlinux" ]] && grep -qx 'CONFIG_DEBUG_INFO_BTF_MODULES=y' "$KTREE/.config" 2>/dev/null; then
        pv_need_cmd pahole dwarves
    fi
}

# ---------------------------------------------------------------------------

pv_need_cmd make build-essential
pv_need_cmd gcc build-essential
pv_need_cmd flex flex
pv_need_cmd bison bison
pv_need_cmd bc bc
pv_need_cmd cpio cpio
pv_need_cmd xz xz-utils
pv_need_cmd lz4 lz4
pv_need_cmd flock util-linux
pv_need_cmd cargo "a Rust toolchain (rustup)"
[[ -f /usr/include/libelf.h ]] || pv_die "libelf headers missing: run scripts/setup.sh as root (or apt-get install libelf-dev)"
[[ -f "$LINUX_TARBALL" ]] || pv_die "$LINUX_TARBALL missing: run scripts/setup.sh as root (or apt-get install linux-source-6.1)"
[[ -x "$BUSYBOX" ]] || pv_die "$BUSYBOX missing: run scripts/setup.sh as root (or apt-get install busybox-static)"
((WITH_PERF == 0)) || [[ -x /usr/bin/perf ]] ||
    pv_die "/usr/bin/perf missing: run scripts/setup.sh as root (or apt-get install linux-perf), or pass --without-perf"
[[ -f "$ROOTFS_SRC/init" ]] || pv_die "$ROOTFS_SRC/init missing (the repository is incomplete)"

pv_need_cmd patch patch
LINUX_SRC_VERSION=$(pv_pkg_version linux-source-6.1)
# The guest kernel's own patches (guest-image/patches/README.md), in order.
KERNEL_PATCHES=()
if [[ -d "$PATCH_DIR" ]]; then
    mapfile -t KERNEL_PATCHES < <(find "$PATCH_DIR" -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort)
fi
BUSYBOX_VERSION=$(pv_pkg_version busybox-static)
GCC_VERSION=$(gcc -dumpfullversion)
pv_lock "$CACHE_ROOT/guest-image.lock"
pv_say "cache: $CACHE_ROOT; output: $OUT; make -j$JOBS"

# ----- kernel -----
if [[ -n "$FOR_KERNEL" ]]; then
    resolve_for_kernel "$FOR_KERNEL"
    # Modules built against it are cached by what they were built with.
    KERNEL_KEY=$({
        echo "for-kernel-v1 $KERNEL_RELEASE"
        echo "gcc $GCC_VERSION"
        sha256sum <"$KTREE/Module.symvers"
        sha256sum <"$KTREE/.config" 2>/dev/null || true
    } | pv_hash)
    KDIR="$CACHE_ROOT/kernel/for-$KERNEL_RELEASE-$KERNEL_KEY"
    KLOG="$KDIR/build.log"
    ((REBUILD == 0)) || rm -rf "$KDIR"
    mkdir -p "$KDIR"
    pv_say "kernel: $KERNEL_RELEASE, modules against $KTREE (log: $KLOG)"
else
    KERNEL_KEY=$({
        echo "recipe-v1"
        echo "linux-source-6.1 $LINUX_SRC_VERSION"
        echo "gcc $GCC_VERSION"
        cat "$FRAGMENT"
        for p in "${KERNEL_PATCHES[@]}"; do
            echo "patch $(basename "$p") $(sha256sum <"$p")"
        done
        declare -f kernel_extract kernel_patch kernel_make kernel_configure kernel_compile
    } | pv_hash)
    KDIR="$CACHE_ROOT/kernel/$LINUX_SRC_VERSION-$KERNEL_KEY"
    KTREE="$KDIR/linux"
    KLOG="$KDIR/build.log"
    ((REBUILD == 0)) || rm -rf "$KDIR"

    if [[ -f "$KDIR/.complete" ]]; then
        pv_say "kernel: cached ($KDIR)"
    else
        mkdir -p "$KDIR"
        pv_say "kernel: building in $KDIR (log: $KLOG)"
        if [[ ! -f "$KTREE/Makefile" || ! -f "$KDIR/.extracted" ]]; then
            pv_phase "extract linux-source-6.1 $LINUX_SRC_VERSION, apply ${#KERNEL_PATCHES[@]} patch(es)"
            kernel_extract "$KDIR"
            kernel_patch "$KTREE"
            touch "$KDIR/.extracted"
        fi
        pv_phase "configure (tinyconfig + guest-image/kernel.config + olddefconfig)"
        kernel_configure "$KTREE" "$KLOG"
        verify_kernel_config "$FRAGMENT" "$KTREE/.config"
        pv_say "    all $(grep -c '^CONFIG_\|^# CONFIG_' "$FRAGMENT") fragment options verified"
        pv_phase "compile (bzImage, vmlinux, modules_prepare; make -j$JOBS)"
        kernel_compile "$KTREE" "$KLOG"
        for f in vmlinux System.map arch/x86/boot/bzImage Module.symvers scripts/module.lds; do
            [[ -f "$KTREE/$f" ]] || pv_die "kernel build finished but $KTREE/$f is missing; see $KLOG"
        done
        make -s -C "$KTREE" kernelrelease >"$KDIR/kernelrelease"
        pv_phase_end
        touch "$KDIR/.complete"
    fi
    KERNEL_RELEASE=$(cat "$KDIR/kernelrelease")
    # perfvisor's own kernel exports these (guest-image/patches/0001-*), so its
    # pvpmu.ko copies records whole, LOST and THROTTLE included (on any other
    # kernel it uses the overflow handler; docs/pvpmu-driver.md): fail here, with
    # the reason, rather than build the other path by accident.
    for sym in perf_output_begin perf_output_copy perf_output_end; do
        grep -qP "^0x[0-9a-f]+\t$sym\tvmlinux\tEXPORT_SYMBOL_GPL" "$KTREE/Module.symvers" ||
            pv_die "$KTREE/Module.symvers does not export $sym: is guest-image/patches/0001-perf-export-output-helpers-for-pvpmu.patch applied? (rebuild with --rebuild)"
    done
fi

# ----- out-of-tree modules, each cached in the kernel's directory by its source -----
# build_module SRC_DIR NAME: build SRC_DIR against the kernel tree (once per source
# hash) and set MODULE_KO to the resulting NAME.ko. The shared headers of
# guest-image/include (the pvpmu interface) are copied in as include/, and
# are part of the hash.
build_module() {
    local src="$1" name="$2" dir inc="$REPO_ROOT/guest-image/include"
    dir="$KDIR/$(basename "$src")-$({ pv_hash_tree "$src"; pv_hash_tree "$inc"; } | pv_hash)"
    MODULE_KO="$dir/$name.ko"
    [[ -f "$MODULE_KO" ]] && return 0
    pv_phase "$name.ko (out-of-tree module against the kernel tree)"
    rm -rf "$dir.tmp"
    cp -r "$src" "$dir.tmp"
    cp -r "$inc" "$dir.tmp/include"
    kernel_make "$KTREE" "$KLOG" M="$dir.tmp" modules
    [[ -f "$dir.tmp/$name.ko" ]] || pv_die "building $src did not produce $name.ko; see $KLOG"
    mv "$dir.tmp" "$dir"
}
# pv_exit.ko: /init's kernel-mode fallback for the exit status.
build_module "$REPO_ROOT/guest-image/pv-exit-module" pv_exit
PV_EXIT_KO="$MODULE_KO"
# pv_events.ko: panic, power-off, halt and restart through the guest-event
# port, so console text never decides how the VM ends; /init loads it first.
build_module "$REPO_ROOT/guest-image/pv-events-module" pv_events
PV_EVENTS_KO="$MODULE_KO"
# pvpmu.ko: the paravirtual PMU driver (docs/pvpmu-driver.md); /init loads it.
build_module "$REPO_ROOT/guest-image/pvpmu" pvpmu
PVPMU_KO="$MODULE_KO"
# pvpmu_evil.ko: a hostile guest for the device (docs/pvpmu-hostile.md); tests only.
build_module "$REPO_ROOT/guest-image/pvpmu-evil" pvpmu_evil
PVPMU_EVIL_KO="$MODULE_KO"
# pv_irqoff.ko: spins with interrupts off for a known share of a CPU; tests only.
build_module "$REPO_ROOT/guest-image/pv-irqoff-module" pv_irqoff
PV_IRQOFF_KO="$MODULE_KO"

# ----- guest-info.txt: where the kernel keeps the running task (perfvisor record) -----
# Another kernel's layout comes from its BTF when `perfvisor record` runs
# (vmm/src/btf_layout.rs), and its per-CPU current_task address needs a System.map
# that distribution headers do not carry: nothing to build for it here.
GI_SRC="$REPO_ROOT/guest-image/guest-info"
GI_DIR="$KDIR/guest-info-$(pv_hash_tree "$GI_SRC")"
if [[ -z "$FOR_KERNEL" && ! -f "$GI_DIR/guest-info.txt" ]]; then
    pv_phase "guest-info.txt (task_struct offsets, per-CPU current_task)"
    rm -rf "$GI_DIR.tmp"
    cp -r "$GI_SRC" "$GI_DIR.tmp"
    kernel_make "$KTREE" "$KLOG" M="$GI_DIR.tmp" offsets.s
    {
        echo "# perfvisor guest-info: the guest kernel's layout, for host-side sampling"
        awk '$1 == "current_task" || $3 == "current_task" { print "current_task 0x" $1 }' "$KTREE/System.map"
        sed -n 's/.*"->TASK_\([A-Z_]*\) \$\([0-9]*\) .*/\1 \2/p' "$GI_DIR.tmp/offsets.s" |
            awk '{ print "task_" tolower($1), $2 }'
    } >"$GI_DIR.tmp/guest-info.txt"
    grep -q '^task_comm ' "$GI_DIR.tmp/guest-info.txt" && grep -q '^current_task ' "$GI_DIR.tmp/guest-info.txt" ||
        pv_die "could not extract task offsets into guest-info.txt; see $KLOG"
    mv "$GI_DIR.tmp" "$GI_DIR"
fi

# ----- guest tools -----
pv_phase "guest tools (cargo build -p guest-tools, static)"
GT_LOG="$CACHE_ROOT/guest-tools-build.log"
: >"$GT_LOG"
GT_JSON="$CACHE_ROOT/guest-tools-build.json"
# shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
pv_run_logged "$GT_LOG" "cargo build -p guest-tools" bash -c '
    cd "$1" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C force-frame-pointers=yes" \
    cargo build -p guest-tools --release --target "$2" --target-dir "$3" --message-format=json-render-diagnostics >"$4"' \
    _ "$REPO_ROOT" "$GUEST_TRIPLE" "$GUEST_TARGET_DIR" "$GT_JSON"
mapfile -t GUEST_EXES < <(grep -o '"executable":"[^"]*"' "$GT_JSON" | cut -d'"' -f4 | LC_ALL=C sort -u)
((${#GUEST_EXES[@]})) || pv_die "cargo built no executables for guest-tools; see $GT_LOG"
for exe in "${GUEST_EXES[@]}"; do
    if readelf -l "$exe" | grep -q 'Requesting program interpreter'; then
        pv_die "$exe is dynamically linked; guest tools must be static (+crt-static)"
    fi
done
pv_say "    guest tools: $(for e in "${GUEST_EXES[@]}"; do basename "$e"; done | tr '\n' ' ')"

# ----- initramfs -----
PERF_VERSION=none
PERF_CLOSURE_HASH=none
if ((WITH_PERF)); then
    PERF_VERSION=$(pv_pkg_version linux-perf)
    PERF_CLOSURE_HASH=$({
        echo /usr/bin/perf
        ldd_closure /usr/bin/perf
    } | while IFS= read -r f; do echo "$f $(sha256sum <"$(readlink -f "$f")")"; done | pv_hash)
fi
INITRAMFS_KEY=$({
    echo "recipe-v1"
    echo "busybox-static $BUSYBOX_VERSION"
    echo "perf $WITH_PERF $PERF_VERSION $PERF_CLOSURE_HASH"
    for exe in "${GUEST_EXES[@]}"; do echo "$(basename "$exe") $(sha256sum <"$exe")"; done
    echo "pv_exit.ko $(sha256sum <"$PV_EXIT_KO")"
    echo "pv_events.ko $(sha256sum <"$PV_EVENTS_KO")"
    echo "pvpmu.ko $(sha256sum <"$PVPMU_KO")"
    echo "pvpmu_evil.ko $(sha256sum <"$PVPMU_EVIL_KO")"
    echo "pv_irqoff.ko $(sha256sum <"$PV_IRQOFF_KO")"
    echo "rootfs $(pv_hash_tree "$ROOTFS_SRC")"
    for d in "${EXTRA_DIRS[@]}"; do echo "extra $(pv_hash_tree "$d")"; done
    declare -f ldd_closure add_binary_with_libs cpio_newc_node stage_initramfs write_cpio
} | pv_hash)
IDIR="$CACHE_ROOT/initramfs/$INITRAMFS_KEY"
((REBUILD == 0)) || rm -rf "$IDIR"
if [[ -f "$IDIR/initramfs.cpio" ]]; then
    pv_phase_end
    pv_say "initramfs: cached ($IDIR)"
else
    pv_phase "initramfs (busybox, guest tools, rootfs$( ((WITH_PERF)) && echo ', perf + libraries')$( ((${#EXTRA_DIRS[@]})) && echo ", ${#EXTRA_DIRS[@]} extra dir(s)"))"
    mkdir -p "$CACHE_ROOT/initramfs"
    STAGE=$(mktemp -d "$CACHE_ROOT/initramfs/stage.XXXXXX")
    trap 'rm -rf "$STAGE"' EXIT
    stage_initramfs "$STAGE"
    mkdir -p "$IDIR"
    write_cpio "$STAGE" "$IDIR/initramfs.cpio.tmp"
    (cd "$STAGE" && find . -mindepth 1 -printf '%M %8s %p\n' | LC_ALL=C sort -k3) >"$IDIR/contents.txt"
    mv "$IDIR/initramfs.cpio.tmp" "$IDIR/initramfs.cpio"
    rm -rf "$STAGE"
    trap - EXIT
    pv_phase_end
fi

# ----- publish -----
if [[ -n "$FOR_KERNEL" ]]; then
    KOUT="$OUT/kernels/$KERNEL_RELEASE"
    pv_phase "publish $KOUT"
    mkdir -p "$KOUT"
    pv_publish "$IDIR/initramfs.cpio" "$KOUT/initramfs.cpio"
    pv_publish "$IDIR/contents.txt" "$KOUT/initramfs-contents.txt"
    pv_publish "$KDIR" "$KOUT/modules"
    pv_prune "$CACHE_ROOT/initramfs" 6 "$IDIR"
    {
        echo "# perfvisor guest image for another kernel (scripts/build-guest-image.sh --for-kernel)"
        echo "kernel_release=$KERNEL_RELEASE"
        echo "kernel_tree=$KTREE"
        echo "gcc_version=$GCC_VERSION"
        echo "pvpmu_records_by=$(grep -qP '\tperf_output_begin\t' "$KTREE/Module.symvers" && echo perf_output || echo overflow-handler)"
        echo "initramfs_key=$INITRAMFS_KEY"
        echo "initramfs_dir=$IDIR"
        echo "perf=$WITH_PERF perf_version=$PERF_VERSION"
        echo "initramfs_bytes=$(stat -L -c %s "$KOUT/initramfs.cpio")"
    } >"$KOUT/manifest.txt"
    pv_publish_current guest-image "$OUT"
    pv_phase_end
    pv_say "guest image for Linux $KERNEL_RELEASE ready: $KOUT/initramfs.cpio"
    pv_say "  boot it: perfvisor run --kernel <that kernel's vmlinuz> -- CMD"
    exit 0
fi
pv_phase "publish $OUT"
mkdir -p "$OUT"
pv_publish "$KTREE/vmlinux" "$OUT/vmlinux"
pv_publish "$KTREE/System.map" "$OUT/System.map"
pv_publish "$KTREE/arch/x86/boot/bzImage" "$OUT/bzImage"
pv_publish "$KTREE" "$OUT/kernel-tree"
pv_publish "$IDIR/initramfs.cpio" "$OUT/initramfs.cpio"
pv_publish "$IDIR/contents.txt" "$OUT/initramfs-contents.txt"
pv_publish "$GI_DIR/guest-info.txt" "$OUT/guest-info.txt"
# The guest tools as the initramfs holds them (its key covers their
# hashes), for `perfvisor record` to name their functions.
mkdir -p "$IDIR/guest-tools"
cp -f "${GUEST_EXES[@]}" "$IDIR/guest-tools/"
pv_publish "$IDIR/guest-tools" "$OUT/guest-tools"
size() { stat -L -c %s "$1"; }
# A kernel tree is ~1.5 GB: keep the current and the 2 most recently used others.
pv_prune "$CACHE_ROOT/kernel" 3 "$KDIR"
pv_prune "$CACHE_ROOT/initramfs" 6 "$IDIR"
{
    echo "# perfvisor guest image (scripts/build-guest-image.sh)"
    echo "kernel_release=$KERNEL_RELEASE"
    echo "linux_source_version=$LINUX_SRC_VERSION"
    echo "gcc_version=$GCC_VERSION"
    echo "kernel_key=$KERNEL_KEY"
    echo "kernel_dir=$KDIR"
    echo "initramfs_key=$INITRAMFS_KEY"
    echo "initramfs_dir=$IDIR"
    echo "busybox_version=$BUSYBOX_VERSION"
    echo "perf=$WITH_PERF perf_version=$PERF_VERSION"
    echo "guest_tools=$(for e in "${GUEST_EXES[@]}"; do basename "$e"; done | tr '\n' ' ' | sed 's/ $//')"
    echo "extra_dirs=${EXTRA_DIRS[*]:-}"
    echo "vmlinux_bytes=$(size "$OUT/vmlinux")"
    echo "bzImage_bytes=$(size "$OUT/bzImage")"
    echo "initramfs_bytes=$(size "$OUT/initramfs.cpio")"
} >"$OUT/manifest.txt"
pv_publish_current guest-image "$OUT"
pv_phase_end
pv_say "guest image ready: Linux $KERNEL_RELEASE, vmlinux $(($(size "$OUT/vmlinux") / 1024)) KiB, initramfs $(($(size "$OUT/initramfs.cpio") / 1024)) KiB"
pv_say "  $OUT/{vmlinux,System.map,bzImage,initramfs.cpio,guest-tools,kernel-tree,manifest.txt}"
