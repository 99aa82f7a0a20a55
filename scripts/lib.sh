# shellcheck shell=bash
# Shared helpers for perfvisor's build scripts. Source it; do not run it.
#
#   REPO_ROOT    the repository root (this file's parent's parent)
#   CACHE_ROOT   ${PERFVISOR_CACHE:-$HOME/.cache/perfvisor}
#   JOBS         make parallelism (${JOBS:-2}; the machines have 2 cores)

# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034
CACHE_ROOT="${PERFVISOR_CACHE:-${HOME:-/root}/.cache/perfvisor}"
JOBS="${JOBS:-2}"
_PV_T0=$(date +%s)
_PV_PHASE_T0=$_PV_T0
_PV_PHASE=""
_PV_PROG="$(basename "$0" .sh)"

# Elapsed seconds since the script started, as "12s" or "3m05s".
pv_elapsed() {
    local s=$(($(date +%s) - ${1:-$_PV_T0}))
    if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

pv_say() { printf '[%s %6s] %s\n' "$_PV_PROG" "$(pv_elapsed)" "$*" >&2; }

# One line, then exit 1. Say what to do, not only what went wrong.
pv_die() {
    printf '%s: error: %s\n' "$_PV_PROG" "$*" >&2
    exit 1
}

# pv_phase NAME: start a named phase; the previous one is reported done with its duration.
pv_phase() {
    pv_phase_end
    _PV_PHASE="$1"
    _PV_PHASE_T0=$(date +%s)
    pv_say "==> $1"
}

pv_phase_end() {
    if [[ -n "$_PV_PHASE" ]]; then
        pv_say "    $_PV_PHASE: done in $(pv_elapsed "$_PV_PHASE_T0")"
        _PV_PHASE=""
    fi
}

# pv_need_cmd CMD PACKAGE...: fail with the install hint if CMD is missing.
pv_need_cmd() {
    local cmd="$1"
    shift
    command -v "$cmd" >/dev/null 2>&1 ||
        pv_die "'$cmd' not found: run scripts/setup.sh as root (or apt-get install $*)"
}

# pv_run_logged LOG DESC CMD...: run CMD with all output appended to LOG, print a
# heartbeat every 15 s (the last "CC"-style line of the log), and on failure print
# the log's tail and exit. stdin is /dev/null.
pv_run_logged() {
    local log="$1" desc="$2"
    shift 2
    local t0 pid rc=0 last
    t0=$(date +%s)
    printf '\n===== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
    "$@" </dev/null >>"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
            sleep 1
            kill -0 "$pid" 2>/dev/null || break
        done
        if kill -0 "$pid" 2>/dev/null; then
            last=$(tail -n 1 "$log" 2>/dev/null | cut -c1-90)
            pv_say "    $desc: $(pv_elapsed "$t0") ... ${last}"
        fi
    done
    wait "$pid" || rc=$?
    if ((rc != 0)); then
        printf '%s: ----- last 40 lines of %s -----\n' "$_PV_PROG" "$log" >&2
        tail -n 40 "$log" >&2
        pv_die "$desc failed (exit $rc) after $(pv_elapsed "$t0"); full log: $log"
    fi
}

# pv_hash: sha256 of stdin, first 16 hex digits (a cache key component).
pv_hash() { sha256sum | cut -c1-16; }

# pv_hash_tree DIR: hash of a directory's paths, modes, symlink targets and contents.
pv_hash_tree() {
    local dir="$1"
    if [[ ! -d "$dir" ]]; then
        echo "absent"
        return
    fi
    (
        cd "$dir" || exit 1
        find . -mindepth 1 -printf '%P %y %m %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
    ) | pv_hash
}

# pv_pkg_version PKG: the installed version of a Debian package, or fail with the hint.
pv_pkg_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null ||
        pv_die "Debian package '$1' is not installed: run scripts/setup.sh as root (or apt-get install $1)"
}

# pv_publish SRC DST: make DST a symlink to SRC (replacing whatever DST was).
pv_publish() {
    ln -sfn "$1" "$2.tmp.$$"
    mv -Tf "$2.tmp.$$" "$2"
}

# pv_publish_current NAME DIR: make $CACHE_ROOT/current/NAME the last artefacts any
# checkout built, for a binary that has no data directory or build tree of its own
# (`cargo install --path .`; artefacts/src/lib.rs, docs/install.md). DIR's entries are
# copied as they are (symlinks stay symlinks into the cache), then swapped in whole.
pv_publish_current() {
    local dst="$CACHE_ROOT/current/$1"
    mkdir -p "$CACHE_ROOT/current"
    rm -rf "$dst.tmp.$$"
    cp -a "$2" "$dst.tmp.$$"
    rm -f "$dst.tmp.$$/.complete" "$dst.tmp.$$/.used"
    rm -rf "$dst"
    mv -T "$dst.tmp.$$" "$dst"
}

# pv_lock FILE: hold an exclusive lock on FILE for the rest of the script (fd 9).
pv_lock() {
    mkdir -p "$(dirname "$1")"
    exec 9>"$1"
    if ! flock -n 9; then
        pv_say "waiting for another build holding $1"
        flock 9
    fi
}

# pv_prune DIR KEEP CURRENT: in DIR, keep CURRENT and the KEEP-1 most recently used
# other entries (by the mtime of their .used stamp), delete the rest. Marks CURRENT used.
pv_prune() {
    local dir="$1" keep="$2" current="$3" e n=1
    touch "$current/.used"
    while IFS= read -r e; do
        [[ "$e" == "$current" ]] && continue
        n=$((n + 1))
        if ((n > keep)); then
            pv_say "    pruning old cache entry $e"
            rm -rf "$e"
        fi
    done < <(find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name 'stage.*' -printf '%p\n' |
        while IFS= read -r d; do echo "$(stat -c %Y "$d/.used" 2>/dev/null || stat -c %Y "$d") $d"; done |
        sort -rn | cut -d' ' -f2-)
}
