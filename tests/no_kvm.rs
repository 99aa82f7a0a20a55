//! `--kvm auto` on a host with no /dev/kvm at all (the common CI container):
//! perfvisor falls back to the L1 sandbox, which is QEMU TCG and needs no
//! KVM. The test makes such a host: a private mount namespace with a tmpfs
//! over /dev that holds only the character devices QEMU and a shell use.
//! It needs root (CI and these machines run as root) and fails loudly
//! without it rather than skip.

use std::process::Command;

/// Runs in the new mount namespace: the bare /dev, then the default guest.
const SCRIPT: &str = r#"set -e
mount -t tmpfs -o mode=755 perfvisor-dev /dev
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n
  mknod -m 666 "/dev/$1" c "$2" "$3"
done
mkdir /dev/shm /dev/pts
mount -t tmpfs perfvisor-shm /dev/shm
ln -s /proc/self/fd /dev/fd
if [ -e /dev/kvm ]; then echo "no-kvm-test: /dev/kvm still visible"; exit 2; fi
echo "no-kvm-test: /dev holds $(ls /dev | tr '\n' ' ')"
set +e
"$PERFVISOR" probe
echo "no-kvm-test: probe status $?"
exec "$PERFVISOR" run --timeout 90 -- 'echo no-kvm-guest-says-hello'
"#;

/// One try: the namespace, the probe and the run, within `timeout`'s bound
/// (a frozen L1 does not answer the inner --timeout).
fn attempt() -> (std::process::Output, String) {
    let out = Command::new("timeout")
        .args(["150", "unshare", "--mount", "--propagation", "private"])
        .args(["sh", "-c", SCRIPT])
        .env("PERFVISOR", env!("CARGO_BIN_EXE_perfvisor"))
        .output()
        .expect("run unshare (util-linux)");
    let all = format!(
        "--- status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, all)
}

#[test]
fn kvm_auto_falls_back_to_the_sandbox_without_dev_kvm() {
    println!("[kvm_auto_falls_back_to_the_sandbox_without_dev_kvm] KVM: none (a mount namespace without /dev/kvm); the run must choose the L1 sandbox itself");
    let (mut out, mut all) = attempt();
    let ran = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).contains("no-kvm-guest-says-hello") && o.status.success()
    };
    let chose_sandbox = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr).contains("running the guest inside the L1 sandbox")
    };
    if !ran(&out) && chose_sandbox(&out) {
        // The fallback happened; the L1 (nested kvm-amd under TCG) then
        // hung or died, which it does now and then (docs/platform.md).
        println!(
            "!!! the sandboxed run did not finish (the L1 platform flake in docs/platform.md); \
             running it ONCE more; a second failure fails the test.\n!!! first try:\n{all}"
        );
        (out, all) = attempt();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unshare failed") && !stderr.contains("Operation not permitted"),
        "this test needs root to make a mount namespace (CI runs as root)\n{all}"
    );
    println!("{stdout}");
    assert!(
        stdout.contains("not capable: no /dev/kvm on this host"),
        "`perfvisor probe` gives a verdict, not an error\n{all}"
    );
    assert!(
        stdout.contains("no-kvm-test: probe status 1"),
        "the probe exits 1 (not capable)\n{all}"
    );
    assert!(
        stderr.contains("no /dev/kvm on this host; running the guest inside the L1 sandbox"),
        "the run says why it chose the sandbox\n{all}"
    );
    assert!(
        stdout.contains("no-kvm-guest-says-hello"),
        "the default guest ran its command\n{all}"
    );
    assert!(out.status.success(), "the run exits 0\n{all}");
}
