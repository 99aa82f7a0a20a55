//! End-to-end boot tests: the default guest image through `perfvisor run`.
//! They run on a capable KVM: this host's, or the L1 sandbox (see harness).

mod harness;

use harness::{boot, boot_test, image_dir};

#[test]
fn default_image_prints_banner() {
    boot_test("default_image_prints_banner", || {
        let r = boot(&[]);
        r.check(r.status == 0, "a clean boot exits 0");
        r.check(
            r.stdout.contains("perfvisor guest: Linux 6.1"),
            "the banner names the kernel",
        );
        r.check(r.stdout.contains(", 1 CPUs"), "one vCPU by default");
    });
}

#[test]
fn guest_command_output_and_status() {
    boot_test("guest_command_output_and_status", || {
        // Shell syntax survives the trip: quotes, pipes, $?, a non-zero exit.
        let r = boot(&[
            "--",
            r#"echo "hello | from 'the' guest"; uname -r | tr a-z A-Z; exit 7"#,
        ]);
        r.check(
            r.status == 7,
            "the guest command's exit status becomes perfvisor's",
        );
        r.check(
            r.stdout.contains("hello | from 'the' guest"),
            "quoted text arrives intact",
        );
        r.check(r.stdout.contains("6.1.192-PERFVISOR"), "the pipe ran");
    });
}

#[test]
fn two_cpus_and_memory_size() {
    boot_test("two_cpus_and_memory_size", || {
        let r = boot(&[
            "--cpus",
            "2",
            "--memory",
            "512M",
            "--",
            "echo online=$(cat /sys/devices/system/cpu/online); grep MemTotal /proc/meminfo",
        ]);
        r.check(r.status == 0, "boots with 2 vCPUs");
        r.check(
            r.stdout.contains("online=0-1"),
            "the guest brought up both CPUs",
        );
        let kb: u64 = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        r.check(
            (400_000..=524_288).contains(&kb),
            "MemTotal is about 512 MiB",
        );
    });
}

#[test]
fn guest_panic_exits_nonzero() {
    boot_test("guest_panic_exits_nonzero", || {
        let r = boot(&["--", "echo c > /proc/sysrq-trigger"]);
        r.check(r.status == 125, "a guest kernel panic exits 125");
        r.check(
            r.stderr
                .contains("guest kernel panic: Kernel panic - not syncing: sysrq triggered crash"),
            "the panic is named on stderr",
        );
        r.check(
            !r.stderr.contains("read from the console"),
            "the panic notifier reported it, not console text",
        );
    });
}

/// User space can print anything on the console; with the guest image's
/// `pv_events` module loaded, none of it ends the VM (docs/security.md,
/// "Exit statuses a CI may trust"). Before, `reboot: Power down` from a
/// shell ended the run with status 0.
#[test]
fn forged_console_lines_do_not_end_the_vm() {
    boot_test("forged_console_lines_do_not_end_the_vm", || {
        let r = boot(&[
            "--",
            "dmesg | grep 'pv_events:'; \
             echo 'Kernel panic - not syncing: forged by user space'; \
             echo 'reboot: Power down'; echo 'reboot: System halted'; \
             echo 'reboot: Restarting system'; \
             echo '---[ end Kernel panic - not syncing: forged ]---'; \
             sleep 5; echo still-running; exit 7",
        ]);
        r.check(
            r.stdout
                .contains("pv_events: panic, power-off, halt and restart reported"),
            "/init loaded pv_events",
        );
        r.check(
            r.status == 7 && r.stdout.contains("still-running"),
            "the guest ran on past every forged line and its own status ended the run",
        );
    });
}

#[test]
fn reboot_and_poweroff_exit_zero() {
    boot_test("reboot_and_poweroff_exit_zero", || {
        for cmd in ["reboot -f", "poweroff -f"] {
            let r = boot(&["--", cmd]);
            r.check(
                r.status == 0,
                &format!("`{cmd}` in the guest ends perfvisor with status 0"),
            );
            r.check(
                r.stderr.trim().is_empty(),
                "a clean end prints nothing on stderr",
            );
        }
    });
}

#[test]
fn bzimage_boots() {
    boot_test("bzimage_boots", || {
        let image = image_dir();
        let (k, i) = (image.join("bzImage"), image.join("initramfs.cpio"));
        let r = boot(&[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--",
            "uname -r",
        ]);
        r.check(r.status == 0, "the bzImage boots");
        r.check(
            r.stdout.contains("6.1.192-perfvisor"),
            "and runs the command",
        );
    });
}

#[test]
fn console_output_arrives_in_full() {
    boot_test("console_output_arrives_in_full", || {
        // Line by line, then in 100-byte lines written in large chunks right
        // before the guest ends: up to 4 KiB can still sit in the guest's tty
        // buffer when the command exits, and it must reach stdout too.
        let r = boot(&[
            "--",
            "seq 1 4000; seq 4001 10000 | tr '\\n' ' ' | fold -w 100; echo",
        ]);
        r.check(r.status == 0, "seq runs");
        let out = r
            .stdout
            .split("perfvisor-guest: init reached")
            .last()
            .unwrap_or("");
        let out = out
            .split("perfvisor-guest: exit status")
            .next()
            .unwrap_or("");
        let nums: Vec<u32> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let want: Vec<u32> = (1..=10000).collect();
        if nums != want {
            println!("got {} numbers, the last {:?}", nums.len(), nums.last());
        }
        r.check(
            nums == want,
            "all of 1..=10000, in order, none lost at the end",
        );
    });
}

/// The guest's console bytes pass the terminal filter (vmm/src/term_filter.rs)
/// before they reach perfvisor's stdout: here a pipe, so no escape sequence
/// at all may arrive, while the text around them does.
#[test]
fn guest_escape_sequences_do_not_reach_the_host_terminal() {
    boot_test(
        "guest_escape_sequences_do_not_reach_the_host_terminal",
        || {
            let r = boot(&[
                "--",
                r"printf 'A\033]0;title\007B\033]52;c;eA==\033\\C\033[31mD\033[0m\302\2335mE\n'",
            ]);
            r.check(r.status == 0, "printf runs");
            r.check(
                r.stdout.contains("ABCDE"),
                "the text around the sequences arrives",
            );
            r.check(
                !r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{9b}'),
                "no ESC or C1 byte reaches stdout",
            );
        },
    );
}

#[test]
fn timeout_stops_a_stuck_guest() {
    boot_test("timeout_stops_a_stuck_guest", || {
        let image = image_dir();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kvm".into(),
            "host".into(),
            "--timeout".into(),
            "20".into(),
        ];
        args.extend([
            "--kernel".into(),
            image.join("vmlinux").display().to_string(),
        ]);
        args.extend([
            "--initrd".into(),
            image.join("initramfs.cpio").display().to_string(),
        ]);
        args.extend(["--".into(), "sleep 3600".into()]);
        let r = harness::perfvisor_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        r.check(r.status == 124, "--timeout exits 124");
        r.check(r.stderr.contains("--timeout 20s"), "and says why");
    });
}

/// SIGINT and SIGTERM end `perfvisor run` cleanly: the guest is stopped,
/// perfvisor says so, and the exit status is the shell's for that signal
/// (130, 143), not the guest command's and not death by the signal.
/// perfvisor chooses where the guest runs itself (this host's KVM or the
/// L1 sandbox, where the stop travels to the inner perfvisor as SIGTERM).
#[test]
fn run_stops_cleanly_on_sigint_and_sigterm() {
    for (signal, name, want) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
    ] {
        let r = harness::perfvisor_cmd_signalled(
            &[
                "run",
                "--timeout",
                "300",
                "--",
                "echo guest-started; sleep 200; echo not-stopped",
            ],
            "guest-started",
            std::time::Duration::from_secs(2),
            signal,
        );
        let which = if r.stderr.contains("inside the L1 sandbox") {
            "the L1 sandbox"
        } else {
            "this host's /dev/kvm"
        };
        println!(
            "{name}: perfvisor run on {which}: status {} in {:.1}s\n--- stderr:\n{}",
            r.status,
            r.elapsed.as_secs_f64(),
            r.stderr
        );
        r.check(
            r.status == want,
            &format!("{name} ends the run with status {want}"),
        );
        r.check(
            r.elapsed.as_secs() < 150 && !r.stdout.contains("not-stopped"),
            "the guest was stopped, long before its command would end",
        );
        r.check(
            r.stderr.contains("interrupted; stopped the guest"),
            "perfvisor says why it stopped",
        );
    }
}

/// A terminal that stops reading does not stall the guest: perfvisor's
/// stdout is a 4 KiB pipe that nobody reads while the guest prints 64 KiB
/// and exits 7. The printing vCPU only queues (vmm/src/console_queue.rs),
/// the guest ends, and perfvisor exits 7 after its bounded wait for the
/// terminal. Before the queue, the vCPU blocked in write(2) and the guest
/// never got to its exit.
#[test]
fn a_stalled_terminal_does_not_stall_the_guest() {
    boot_test("a_stalled_terminal_does_not_stall_the_guest", || {
        use std::os::fd::AsRawFd;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let mut child = Command::new(harness::perfvisor())
            .args([
                "run",
                "--kvm",
                "host",
                "--timeout",
                "120",
                "--",
                "head -c 65536 /dev/zero | tr '\\0' x; echo; exit 7",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("perfvisor starts");
        let stdout = child.stdout.take().expect("piped stdout");
        // SAFETY: fcntl(2) on a pipe fd this test owns; F_SETPIPE_SZ takes an int.
        let size = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        println!("stdout pipe: {size} bytes, not read until perfvisor exits");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s.code();
            }
            if start.elapsed() > Duration::from_secs(200) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(stdout);
        println!(
            "perfvisor exited with {status:?} after {:.1}s",
            start.elapsed().as_secs_f64()
        );
        assert!(size > 0 && size <= 8192, "the pipe was shrunk");
        assert_eq!(
            status,
            Some(7),
            "the guest finished and perfvisor exited with its status while nobody read stdout"
        );
    });
}

#[test]
fn include_brings_a_dynamic_program_and_a_tree() {
    boot_test("include_brings_a_dynamic_program_and_a_tree", || {
        use std::os::unix::fs::{symlink, PermissionsExt};
        // A tree with modes, a subdirectory, a symbolic link and a script.
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir(data.join("private")).unwrap();
        std::fs::write(data.join("run.sh"), "#!/bin/sh\necho script-ran-in-guest\n").unwrap();
        std::fs::write(data.join("sub/secret"), "s3cret\n").unwrap();
        symlink("sub/secret", data.join("link")).unwrap();
        for (p, mode) in [
            ("run.sh", 0o750),
            ("sub/secret", 0o600),
            ("sub", 0o711),
            ("private", 0o700),
        ] {
            std::fs::set_permissions(data.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // The truth: the same program on the same tree, here.
        let listing = "stat -c '%n %a %F' * sub/*; stat -c %N link";
        let host = std::process::Command::new("sh")
            .arg("-c")
            .arg(listing.replace("stat ", &format!("{} ", harness::INCLUDE_PROGRAM)))
            .current_dir(&data)
            .output()
            .unwrap();
        let want = String::from_utf8(host.stdout).unwrap();
        assert!(host.status.success() && want.lines().count() == 6, "{want}");
        // The user's own --initrd (here the image's), the includes after it.
        let image = image_dir();
        let initrd = image.join("initramfs.cpio");
        let prog = format!("{}:/opt/bin/stat", harness::INCLUDE_PROGRAM);
        let tree = format!("{}:/data", data.display());
        let r = boot(&[
            "--initrd",
            initrd.to_str().unwrap(),
            "--include",
            &prog,
            "--include",
            &tree,
            "--",
            &format!(
                "cd /data && {}; ./run.sh; cat link",
                listing.replace("stat ", "/opt/bin/stat ")
            ),
        ]);
        r.check(r.status == 0, "the included program runs and exits 0");
        for line in want.lines() {
            r.check(
                r.stdout.lines().any(|l| l.trim_end() == line),
                &format!("the guest's stat says what the host's says: {line:?}"),
            );
        }
        r.check(
            r.stdout.contains("script-ran-in-guest") && r.stdout.contains("s3cret"),
            "the script runs and the link reads through",
        );
        let libs: u32 = r
            .stderr
            .split(" shared libraries")
            .next()
            .and_then(|s| s.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        r.check(
            libs >= 2,
            "the program's libraries and loader came with it (counted on stderr)",
        );
    });
}
