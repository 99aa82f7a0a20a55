//! Command-line errors: one clear line and a non-zero exit, never a
//! backtrace. None of these needs a guest to run.

mod harness;

use harness::{image_dir, perfvisor_cmd};

fn one_line_error(r: &harness::Run, needle: &str) {
    r.check(r.status != 0, "fails");
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    r.check(lines.len() == 1, "exactly one line on stderr");
    r.check(
        lines[0].starts_with("perfvisor: "),
        "prefixed with perfvisor:",
    );
    r.check(lines[0].contains(needle), &format!("mentions {needle:?}"));
    r.check(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "no panic",
    );
}

#[test]
fn missing_kernel() {
    let r = perfvisor_cmd(&["run", "--kvm", "host", "--kernel", "/nonexistent/vmlinux"]);
    one_line_error(&r, "/nonexistent/vmlinux not found");
    assert_eq!(r.status, 1);
}

#[test]
fn unsupported_kernel_format() {
    let r = perfvisor_cmd(&["run", "--kvm", "host", "--kernel", "/etc/hostname"]);
    one_line_error(&r, "not a kernel image perfvisor can boot");
}

#[test]
fn bad_memory_size() {
    for bad in ["12X", "0", "lots"] {
        let r = perfvisor_cmd(&["run", "--memory", bad]);
        one_line_error(&r, "invalid size");
        assert_eq!(r.status, 2, "usage errors exit 2");
    }
    let r = perfvisor_cmd(&[
        "run",
        "--kvm",
        "host",
        "--memory",
        "8M",
        "--kernel",
        "/etc/hostname",
    ]);
    one_line_error(&r, "out of range");
}

#[test]
fn bad_cpu_count() {
    let r = perfvisor_cmd(&["run", "--kvm", "host", "--cpus", "0"]);
    one_line_error(&r, "--cpus");
}

#[test]
fn initrd_that_does_not_fit() {
    let image = image_dir();
    let k = image.join("vmlinux");
    let i = image.join("initramfs.cpio");
    assert!(
        k.exists(),
        "no guest image in {}: build it with scripts/build-guest-image.sh",
        image.display()
    );
    let r = perfvisor_cmd(&[
        "run",
        "--kvm",
        "host",
        "--memory",
        "40M",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
    ]);
    one_line_error(&r, "does not fit");
}

#[test]
fn no_kvm_device() {
    let r = harness::perfvisor_cmd_env(
        &["run", "--kvm", "host", "--kernel", "/etc/hostname"],
        &[("PERFVISOR_KVM_DEVICE", "/nonexistent/kvm")],
    );
    one_line_error(&r, "no /dev/kvm");
}

#[test]
fn probe_gives_a_verdict() {
    let r = perfvisor_cmd(&["probe"]);
    r.check(
        r.status == 0 || r.status == 1,
        "probe exits 0 (capable) or 1 (not)",
    );
    r.check(
        r.stdout.starts_with("capable") || r.stdout.starts_with("not capable"),
        "prints its verdict",
    );
    println!("probe: {}", r.stdout.trim());
}
