//! The written perf.data against the host's real perf (linux-perf 6.1):
//! `perf report --stdio` and `perf script` must open it with nothing on
//! stderr and show guest kernel and guest user symbols and the callchains.
//!
//! Requires the guest image (scripts/build-guest-image.sh) and perf
//! (scripts/setup.sh); a missing one fails the test with what to do.

mod common;

use std::path::Path;

use common::*;
use record::{GuestBinary, GuestSample, Layout, PerfDataWriter, RecordMeta, WriteSummary};

const VMM_PID: u32 = 4000;

fn meta(system_map: bool, vmlinux: bool, binaries: bool, vcpu_tids: bool) -> RecordMeta {
    RecordMeta {
        kernel_release: "6.1.192-perfvisor".into(),
        guest_system_map: system_map.then(common::system_map),
        guest_vmlinux: vmlinux.then(common::vmlinux),
        guest_binaries: if binaries {
            vec![GuestBinary {
                path: pv_workload(),
                name: Some("pv-workload".into()),
            }]
        } else {
            Vec::new()
        },
        cmdline: vec!["perfvisor".into(), "record".into()],
        hostname: "testhost".into(),
        callchain: true,
        backend: "test".into(),
        vmm_pid: VMM_PID,
        vcpu_tids: if vcpu_tids {
            vec![4001, 4002]
        } else {
            Vec::new()
        },
        ..RecordMeta::new(2, 1000)
    }
}

fn sample<'a>(i: u64, ip: u64, user: bool, chain: &'a [u64]) -> GuestSample<'a> {
    GuestSample {
        cpu: (i % 2) as u32,
        vcpu_tid: 4001 + (i % 2) as u32,
        guest_pid: Some(77),
        guest_tid: Some(77),
        comm: Some("pv-workload"),
        start_code: None,
        time_ns: 5_000_000_000 + i * 1_000_000,
        ip,
        user,
        callchain: chain,
        period: 1_000_000,
    }
}

/// 3 samples in schedule, 1 in do_syscall_64, no callchains.
/// `perf script -G -F fields` on `out` (no warnings), its non-empty lines.
fn script_lines(out: &Path, fields: &str) -> Vec<String> {
    let script = run_perf(&[
        "script",
        "-i",
        out.to_str().expect("utf-8"),
        "-G",
        "-F",
        fields,
    ]);
    assert_quiet("perf script", &script);
    script
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn write_kernel_only(path: &Path, meta: &RecordMeta) -> WriteSummary {
    let sched = inside(kernel_fn("schedule"), 0x10, false);
    let sys = inside(kernel_fn("do_syscall_64"), 0x8, false);
    let mut w = PerfDataWriter::create(path, meta).expect("create");
    for (i, ip) in [sched, sys, sched, sched].into_iter().enumerate() {
        w.sample(&sample(i as u64, ip, false, &[])).expect("sample");
    }
    w.finish().expect("finish")
}

fn check_kernel_symbols(summary: &WriteSummary) {
    let p = summary.path.to_str().expect("utf-8 path");
    let rep = run_perf(&[
        "report",
        "-i",
        p,
        "--stdio",
        "--no-children",
        "--sort",
        "sym",
    ]);
    assert_quiet("perf report", &rep);
    let line = |name: &str| {
        rep.stdout
            .lines()
            .find(|l| l.trim_end().ends_with(name) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("no {name} line in perf report:\n{}", rep.stdout))
            .to_string()
    };
    let sched = line("[g] schedule");
    assert!(sched.contains("75.00%"), "schedule has 3 of 4: {sched}");
    let sys = line("[g] do_syscall_64");
    assert!(sys.contains("25.00%"), "do_syscall_64 has 1 of 4: {sys}");

    let script = run_perf(&["script", "-i", p, "-F", "+machine_pid,+vcpu"]);
    assert_quiet("perf script", &script);
    let want_dso = format!("([guest.kernel.kallsyms.{VMM_PID}])");
    assert!(
        script.stdout.contains("schedule+0x10") && script.stdout.contains("do_syscall_64+0x8"),
        "perf script lacks the symbols:\n{}",
        script.stdout
    );
    assert!(script.stdout.contains(&want_dso), "{}", script.stdout);
    assert!(
        script.stdout.contains(&format!("VM:{VMM_PID} VCPU:001"))
            || script.stdout.contains(&format!("VM: {VMM_PID} VCPU:001")),
        "samples carry machine_pid and vcpu:\n{}",
        script.stdout
    );
    assert!(
        script.stdout.contains("pv-workload    77"),
        "{}",
        script.stdout
    );
}

#[test]
fn guest_kernel_symbols_from_system_map_no_options() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let s = write_kernel_only(&out, &meta(true, false, false, true));
    assert_eq!(s.layout, Layout::Directory);
    assert_eq!(s.samples, 4);
    assert!(out.join("data").is_file());
    assert!(out.join(format!("kcore_dir__{VMM_PID}/kallsyms")).is_file());
    check_kernel_symbols(&s);

    // The header says what was recorded.
    let h = run_perf(&[
        "report",
        "-i",
        out.to_str().expect("utf-8"),
        "--header-only",
    ]);
    assert_quiet("perf report --header-only", &h);
    for want in [
        "os release : 6.1.192-perfvisor",
        "nrcpus online : 2",
        "cmdline : perfvisor record",
        "name = cpu-clock:G",
        "hostname : testhost",
    ] {
        assert!(
            h.stdout.contains(want),
            "header lacks {want:?}:\n{}",
            h.stdout
        );
    }
}

#[test]
fn guest_kernel_symbols_from_vmlinux_without_vcpu_tids() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let m = RecordMeta {
        callchain: false,
        ..meta(false, true, false, false)
    };
    let s = write_kernel_only(&out, &m);
    assert_eq!(s.layout, Layout::Directory);
    check_kernel_symbols(&s);
}

/// Threads of one guest process share its maps, whichever thread is seen
/// first.
#[test]
fn threads_share_the_process_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let hot = inside(user_fn("workload_hot"), 4, true);
    let mut w = PerfDataWriter::create(&out, &meta(true, false, true, true)).expect("create");
    for (i, tid) in [78u32, 77, 79].into_iter().enumerate() {
        let s = GuestSample {
            guest_tid: Some(tid),
            ..sample(i as u64, hot, true, &[])
        };
        w.sample(&s).expect("sample");
    }
    w.finish().expect("finish");
    let lines = script_lines(&out, "tid,ip,sym");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (l, tid) in lines.iter().zip(["78", "77", "79"]) {
        assert!(l.contains(tid) && l.contains("workload_hot"), "{l}");
    }
}

#[test]
fn without_kernel_symbols_a_plain_file_still_opens_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let s = write_kernel_only(&out, &meta(false, false, false, true));
    assert_eq!(s.layout, Layout::File);
    assert!(out.is_file());
    let p = out.to_str().expect("utf-8");
    let rep = run_perf(&["report", "-i", p, "--stdio"]);
    assert_quiet("perf report", &rep);
    assert!(rep.stdout.contains("Samples: 4"), "{}", rep.stdout);
    let script = run_perf(&["script", "-i", p]);
    assert_quiet("perf script", &script);
    // Writing again over it works (replaces the file with a directory).
    let s = write_kernel_only(&out, &meta(true, false, false, true));
    assert_eq!(s.layout, Layout::Directory);
    check_kernel_symbols(&s);
}

/// Callchain a -> b -> hot in user space, plus a system call from hot into
/// the kernel (do_syscall_64 -> schedule).
#[test]
fn callchain_user_a_b_hot_and_kernel_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let a = user_fn("workload_a");
    let b = user_fn("workload_b");
    let hot = user_fn("workload_hot");
    // Return addresses: somewhere inside the caller.
    let ret_in_a = inside(a, 0x10, true);
    let ret_in_b = inside(b, 0x20, true);
    let ret_in_hot = inside(hot, 0x18, true);
    let user_chain = [ret_in_b, ret_in_a];
    let ret_in_sys = inside(kernel_fn("do_syscall_64"), 0x30, false);
    let kernel_chain = [ret_in_sys, ret_in_hot, ret_in_b, ret_in_a];

    let mut w = PerfDataWriter::create(&out, &meta(true, false, true, true)).expect("create");
    for i in 0..6u64 {
        w.sample(&sample(2 * i, inside(hot, 8, true), true, &user_chain))
            .expect("user sample");
        if i % 2 == 0 {
            let ip = inside(kernel_fn("schedule"), 0x10, false);
            w.sample(&sample(2 * i + 1, ip, false, &kernel_chain))
                .expect("kernel sample");
        }
    }
    let s = w.finish().expect("finish");
    assert_eq!((s.user_samples, s.kernel_samples), (6, 3));
    let p = out.to_str().expect("utf-8");

    let script = run_perf(&["script", "-i", p]);
    assert_quiet("perf script", &script);
    let user_block = script
        .stdout
        .split("\n\n")
        .find(|b| b.contains("workload_hot+0x8"))
        .unwrap_or_else(|| panic!("no user sample in:\n{}", script.stdout));
    let frames: Vec<&str> = user_block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        frames,
        ["workload_hot+0x8", "workload_b+0x20", "workload_a+0x10"],
        "{user_block}"
    );
    assert!(
        user_block.contains("pv-workload)"),
        "user dso is the binary: {user_block}"
    );
    let kernel_block = script
        .stdout
        .split("\n\n")
        .find(|b| b.contains("schedule+0x10"))
        .unwrap_or_else(|| panic!("no kernel sample in:\n{}", script.stdout));
    let frames: Vec<&str> = kernel_block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        frames,
        [
            "schedule+0x10",
            "do_syscall_64+0x30",
            "workload_hot+0x18",
            "workload_b+0x20",
            "workload_a+0x10"
        ],
        "{kernel_block}"
    );

    let rep = run_perf(&[
        "report",
        "-i",
        p,
        "--stdio",
        "--no-children",
        "-g",
        "caller",
    ]);
    assert_quiet("perf report -g", &rep);
    for want in [
        "[u] workload_hot",
        "[g] schedule",
        "workload_a",
        "workload_b",
    ] {
        assert!(
            rep.stdout.contains(want),
            "perf report lacks {want}:\n{}",
            rep.stdout
        );
    }
    // Caller order: a, then b, then hot on the following lines.
    let pos = |n: &str| {
        rep.stdout
            .find(&format!("---{n}"))
            .or_else(|| rep.stdout.find(n))
    };
    assert!(
        pos("workload_a").is_some() && pos("workload_b").is_some(),
        "{}",
        rep.stdout
    );
    let hot_line = rep
        .stdout
        .lines()
        .find(|l| l.ends_with("[u] workload_hot"))
        .expect("hot line");
    assert!(hot_line.contains("66.67%"), "6 of 9 samples: {hot_line}");
}

/// A process that execs: first a shell (no binary), then pv-workload, then
/// another program; user samples resolve only while pv-workload runs.
#[test]
fn exec_changes_the_mapped_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    let hot = inside(user_fn("workload_hot"), 4, true);
    let mut w = PerfDataWriter::create(&out, &meta(true, false, true, true)).expect("create");
    for (i, comm) in ["sh", "pv-workload", "other"].into_iter().enumerate() {
        let s = GuestSample {
            start_code: None,
            comm: Some(comm),
            ..sample(i as u64 * 10, hot, true, &[])
        };
        w.sample(&s).expect("sample");
    }
    w.finish().expect("finish");
    let lines = script_lines(&out, "comm,ip,sym");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].contains("sh") && lines[0].contains("[unknown]"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("pv-workload") && lines[1].contains("workload_hot"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("other") && lines[2].contains("[unknown]"),
        "{}",
        lines[2]
    );
}

/// perf falls back to the host's /proc/kallsyms for a guest machine whose
/// kcore_dir is missing: the `data` file alone must leave guest kernel
/// addresses unresolved, never show host symbols for them.
#[test]
fn data_file_without_its_directory_shows_no_host_symbols() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    write_kernel_only(&out, &meta(true, false, false, true));
    let alone = dir.path().join("alone.data");
    std::fs::copy(out.join("data"), &alone).expect("copy");
    let rep = run_perf(&[
        "report",
        "-i",
        alone.to_str().expect("utf-8"),
        "--stdio",
        "--no-children",
        "--sort",
        "sym",
    ]);
    let g_lines: Vec<&str> = rep.stdout.lines().filter(|l| l.contains("[g]")).collect();
    assert!(!g_lines.is_empty(), "{}", rep.stdout);
    for l in g_lines {
        let sym = l.rsplit("[g] ").next().unwrap_or("");
        assert!(
            sym.trim().starts_with("0x"),
            "a guest address resolved without the guest's symbols: {l}\n{}",
            rep.stdout
        );
    }
    // Without guest kernel symbols at all the writer makes no kernel map.
    let plain = dir.path().join("plain.data");
    write_kernel_only(&plain, &meta(false, false, false, true));
    let rep = run_perf(&["report", "-i", plain.to_str().expect("utf-8"), "--stdio"]);
    assert_quiet("perf report", &rep);
    for l in rep.stdout.lines().filter(|l| l.contains("[g]")) {
        assert!(l.contains("[g] 0x"), "{l}");
    }
}

#[test]
fn refuses_to_overwrite_a_foreign_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("perf.data");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("precious.txt"), "keep").expect("write");
    let err = PerfDataWriter::create(&out, &meta(true, false, false, true))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("remove it or choose another"),
        "{err}"
    );
    assert!(out.join("precious.txt").is_file());
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "not perf data").expect("write");
    let err = PerfDataWriter::create(&file, &meta(true, false, false, true))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("remove it or choose another"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("kept"),
        "not perf data"
    );
}
