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

/// Runs a copy of the perfvisor binary (as `cargo install` or
/// scripts/install.sh leaves it) from `/`, with no PERFVISOR_* variable.
fn run_copy(exe: &std::path::Path, cache: &std::path::Path, args: &[&str]) -> harness::Run {
    let start = std::time::Instant::now();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .current_dir("/")
        .stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PERFVISOR_") {
            cmd.env_remove(k);
        }
    }
    // No /dev/kvm: the run stops right after it found its guest image.
    cmd.env("PERFVISOR_KVM_DEVICE", "/nonexistent/kvm");
    // Not the machine's real cache, which the build scripts publish to.
    cmd.env("PERFVISOR_CACHE", cache);
    let out = cmd.output().expect("the copied perfvisor runs");
    harness::Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// An installed binary finds the guest image in `<prefix>/share/perfvisor`,
/// not in the source tree it was built in; a binary with no data directory
/// (a plain `cargo install --path .`) finds the one the build scripts
/// published to the user cache; without either it says where it looked and
/// how to get one.
#[test]
fn an_installed_binary_finds_its_data_directory_not_the_source_tree() {
    let prefix = std::env::temp_dir().join(format!("perfvisor-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let exe = prefix.join("bin/perfvisor");
    std::fs::copy(harness::perfvisor(), &exe).unwrap();
    let cache = prefix.join("cache");
    let args = ["run", "--kvm", "host", "--", "true"];
    let link_image = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        for f in ["vmlinux", "initramfs.cpio"] {
            std::os::unix::fs::symlink(image_dir().join(f), dir.join(f)).unwrap();
        }
    };

    let r = run_copy(&exe, &cache, &args);
    one_line_error(&r, "no guest image found");
    let data = prefix.join("share/perfvisor/guest-image");
    let published = cache.join("current/guest-image");
    r.check(
        r.stderr.contains(&data.display().to_string())
            && r.stderr.contains(&published.display().to_string()),
        "names the data directory and the user cache it looked in",
    );
    r.check(
        r.stderr.contains("scripts/install.sh") && r.stderr.contains("PERFVISOR_GUEST_IMAGE"),
        "says how to get one",
    );

    // `cargo install --path .`: only the binary, the scripts' cache copy.
    link_image(&published);
    let r = run_copy(&exe, &cache, &args);
    // Past the image lookup: the next thing it needs is KVM.
    one_line_error(&r, "no /dev/kvm");
    println!("binary only, user cache: {}", r.stderr.trim());

    // scripts/install.sh: the data directory comes first.
    std::fs::remove_dir_all(&published).unwrap();
    link_image(&data);
    let r = run_copy(&exe, &cache, &args);
    one_line_error(&r, "no /dev/kvm");
    println!("installed copy: {}", r.stderr.trim());
    let _ = std::fs::remove_dir_all(&prefix);
}

#[test]
fn include_errors_come_before_boot() {
    // Each is found before any boot: --kvm host and a kernel that is not
    // one would fail later, with another message.
    let r = perfvisor_cmd(&["run", "--kvm", "host", "--include", "/nonexistent/prog"]);
    one_line_error(&r, "--include /nonexistent/prog: no such file or directory");
    let r = perfvisor_cmd(&[
        "run",
        "--kvm",
        "host",
        "--include",
        "/etc/hostname:/opt/x",
        "--include",
        "/etc/passwd:/opt/x",
    ]);
    one_line_error(&r, "clashes with --include /etc/hostname:/opt/x");
    let r = perfvisor_cmd(&[
        "run",
        "--kvm",
        "host",
        "--include",
        "/etc/hostname:/perfvisor/command",
    ]);
    one_line_error(&r, "perfvisor's own directory");
    let r = perfvisor_cmd(&["run", "--include", "/etc/hostname:/a/../b"]);
    one_line_error(&r, "contains '..'");
    assert_eq!(r.status, 2, "usage errors exit 2");
}
