#!/bin/busybox sh
# The L1 sandbox's /init. The sandbox crate packs this file unchanged
# (include_str!) next to two files it writes for each job:
#   /sandbox/job.env  the sandbox's own settings (SANDBOX_* below), sh-quoted;
#   /sandbox/job.sh   the job's environment (export lines) and its argv
#                     (`set -- 'arg0' 'arg1' ...`), sh-quoted;
#   /sandbox/modules  the kernel modules to load, one file name a line, in order.
# Marker lines carry a per-run nonce so the job's output cannot forge them.
#
# SANDBOX_START      printed when the job starts
# SANDBOX_EXIT       prefix of the exit marker: "${SANDBOX_EXIT}<status>@@"
# SANDBOX_NO_KVM     printed (then power off) when /dev/kvm did not appear
# SANDBOX_STOP       the line the host writes to the console to stop the job
# SANDBOX_STOPPABLE  non-empty: run the job in the background and watch for STOP
# SANDBOX_WORKDIR    the job's working directory
# SANDBOX_COLLECT    non-empty: a directory sent back as a tar stream on ttyS1

/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
ln -s /proc/self/fd /dev/fd 2>/dev/null
. /sandbox/job.env

while IFS= read -r m; do
    out=$(insmod /lib/modules/sandbox/"$m" 2>&1) || echo "sandbox: insmod $m failed: $out"
done </sandbox/modules
if [ ! -c /dev/kvm ]; then
    echo "sandbox: /dev/kvm is missing after loading the kvm modules; kernel log:"
    dmesg | grep -i -E 'kvm|svm|ccp' | sed 's/^/sandbox:   /'
    grep -q -w svm /proc/cpuinfo || echo "sandbox: the L1 CPU has no svm flag"
    echo "$SANDBOX_NO_KVM"
    poweroff -f
fi

mkdir -p "$SANDBOX_WORKDIR" && cd "$SANDBOX_WORKDIR" || {
    echo "${SANDBOX_EXIT}126@@"
    poweroff -f
}
. /sandbox/job.sh
echo "$SANDBOX_START"
[ -n "$SANDBOX_COLLECT" ] && mkdir -p "$SANDBOX_COLLECT"
if [ -n "$SANDBOX_STOPPABLE" ]; then
    # The job in the background (its own PID, so SIGTERM reaches it), and a
    # reader of the console's input that sends SIGTERM on the stop line.
    stty -echo </dev/console 2>/dev/null
    "$@" </dev/null &
    job=$!
    (while read -r l; do [ "$l" = "$SANDBOX_STOP" ] && kill -TERM $job; done) </dev/console &
    watch=$!
    wait $job
    status=$?
    kill $watch 2>/dev/null
else
    "$@" </dev/null
    status=$?
fi
if [ -n "$SANDBOX_COLLECT" ]; then
    # ttyS1 is QEMU's second serial port, backed by a host file; raw, so the
    # tar stream arrives byte for byte.
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    tar -C "$SANDBOX_COLLECT" -cf - . >/dev/ttyS1 || echo "sandbox: collecting $SANDBOX_COLLECT failed"
fi
echo "${SANDBOX_EXIT}$status@@"
poweroff -f
