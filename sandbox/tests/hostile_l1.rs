//! A fake L1 (a shell script in QEMU's place) that floods the console and
//! sends back a collect stream it should not: the host side keeps its
//! memory bounded, still finds the exit marker, and refuses the stream.
//! No QEMU or KVM is needed; the fake reads the marker nonce from the
//! initramfs it is given, as the real L1's /init has it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandbox::{Job, Sandbox};

/// Peak resident memory of this process, from /proc/self/status.
fn vm_hwm_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// An artefacts directory the sandbox accepts, and a fake QEMU running
/// `body` with `$n` set to the run's nonce and `$collect` to the collect
/// port's host file (if any).
fn fake_l1(dir: &Path, body: &str) -> Sandbox {
    fs::create_dir_all(dir.join("modules")).unwrap();
    fs::write(dir.join("vmlinuz"), b"not a kernel").unwrap();
    fs::write(dir.join("busybox"), b"not busybox").unwrap();
    fs::write(dir.join("modules/order"), b"").unwrap();
    let qemu = dir.join("fake-qemu");
    fs::write(
        &qemu,
        format!(
            r#"#!/bin/sh
initrd=; collect=
while [ $# -gt 0 ]; do
    case "$1" in
        -initrd) initrd=$2; shift ;;
        file,id=collect,path=*) collect=${{1#file,id=collect,path=}} ;;
    esac
    shift
done
n=$(grep -ao '@@sandbox-[0-9a-f]*-start@@' "$initrd" | head -n 1 | sed 's/@@sandbox-\(.*\)-start@@/\1/')
[ -n "$n" ] || {{ echo "fake L1: no nonce in $initrd" >&2; exit 2; }}
echo "@@sandbox-$n-start@@"
{body}
"#
        ),
    )
    .unwrap();
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    Sandbox::with_paths(dir.to_path_buf(), qemu)
        .unwrap()
        .timeout(Duration::from_secs(300))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "perfvisor-hostile-l1-{}-{name}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn a_flooding_console_keeps_memory_bounded_and_the_marker_is_found() {
    let dir = scratch("flood");
    // 100 MB with no newline, then 10^6 short lines, then the exit marker
    // right after more text on the same line.
    let sb = fake_l1(
        &dir,
        r#"head -c 100000000 /dev/zero | tr '\0' x
echo
seq 1000000
printf 'no newline before the marker'
echo "@@sandbox-$n-exit=7@@"
"#,
    );
    let before = vm_hwm_kib();
    let mut lines = 0u64;
    let mut longest = 0usize;
    let out = sb
        .run(&Job::shell("true"), &mut |l| {
            lines += 1;
            longest = longest.max(l.len());
        })
        .expect("the fake L1's run ends with its exit marker");
    let grown_mib = vm_hwm_kib().saturating_sub(before) / 1024;
    println!(
        "flood: {lines} console lines, longest {longest} bytes, output kept {} bytes, \
         peak RSS grew {grown_mib} MiB",
        out.output.len()
    );
    assert_eq!(out.status, 7, "the exit marker was found");
    assert!(lines >= 1_000_000);
    assert!(
        longest <= 70 * 1024,
        "a line was kept whole: {longest} bytes"
    );
    assert!(out.output.len() <= sandbox::MAX_KEPT + 200);
    assert!(out.output.ends_with("no newline before the marker\n"));
    // Without the bounds the 100 MB line alone costs several copies.
    assert!(grown_mib < 128, "peak RSS grew {grown_mib} MiB");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_collect_stream_with_a_symlink_is_refused() {
    let dir = scratch("collect");
    let payload = dir.join("payload");
    fs::create_dir_all(payload.join("d")).unwrap();
    std::os::unix::fs::symlink("/etc", payload.join("d/etc")).unwrap();
    let sb = fake_l1(
        &dir,
        &format!(
            "tar -C {} -cf \"$collect\" .\necho \"@@sandbox-$n-exit=0@@\"",
            payload.display()
        ),
    );
    let host = dir.join("out");
    let e = sb
        .run(&Job::shell("true").collect("/out", &host), &mut |_| {})
        .expect_err("a symlink in the collect stream is refused");
    println!("collect: {e}");
    assert!(matches!(e, sandbox::Error::CollectRefused(_)), "{e}");
    assert!(!host.join("d/etc").exists());
    let _ = fs::remove_dir_all(&dir);
}
