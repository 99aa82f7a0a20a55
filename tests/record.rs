//! `perfvisor record` end to end, as a user runs it: perfvisor picks the KVM
//! itself (this host's, or the L1 sandbox, and brings the outputs back), and
//! the host's own `perf` reads what it wrote.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{image_dir, kv, perfvisor_cmd, Run};

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("perfvisor-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn require_image() {
    let img = image_dir();
    assert!(
        img.join("vmlinux").exists(),
        "no guest image in {}: run scripts/build-guest-image.sh",
        img.display()
    );
}

fn record(dir: &Path, extra: &[&str], command: &str) -> Run {
    require_image();
    let data = dir.join("perf.data");
    let folded = dir.join("out.folded");
    let svg = dir.join("out.svg");
    let mut args = vec!["record", "--timeout", "300", "-o", data.to_str().unwrap()];
    args.extend([
        "--folded",
        folded.to_str().unwrap(),
        "--flamegraph",
        svg.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    args.extend(["--", command]);
    let r = perfvisor_cmd(&args);
    let which = if r.stderr.contains("inside the L1 sandbox") {
        "the L1 sandbox"
    } else {
        "this host's /dev/kvm"
    };
    println!(
        "perfvisor record ran on {which}; status {} in {:.1}s",
        r.status,
        r.elapsed.as_secs_f64()
    );
    println!("--- stderr:\n{}", r.stderr);
    r
}

fn host_perf(args: &[&str]) -> (String, String) {
    let out = Command::new("perf")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the host's perf ({e}): run scripts/setup.sh (package linux-perf)")
        });
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `perf script -i DATA EXTRA...` with the host's perf: (stdout, stderr).
fn host_perf_script(data: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["script", "-i", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    host_perf(&args)
}

/// The sample counts of the folded-stack lines whose stack `keep`
/// accepts, summed.
fn folded_samples(folded: &str, keep: impl Fn(&str) -> bool) -> u64 {
    folded
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            keep(stack).then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

#[test]
fn record_finds_the_hot_call_chain() {
    let dir = out_dir("record");
    let r = record(&dir, &["--call-graph", "fp"], "pv-workload --seconds 3");
    r.check(r.status == 0, "record exits 0");
    r.check(
        r.stderr.contains("frame-pointer callchains"),
        "the summary names the callchain mode",
    );
    // The host's perf reads the file without warnings and shows hot().
    let data = dir.join("perf.data");
    let (script, err) = host_perf_script(&data, &[]);
    assert!(
        script.contains("workload_hot"),
        "perf script shows workload_hot:\n{}",
        &script[..script.len().min(3000)]
    );
    assert!(
        !err.to_lowercase().contains("warning"),
        "perf script warns: {err}"
    );
    let (report, err) = host_perf(&[
        "report",
        "-i",
        data.to_str().unwrap(),
        "--stdio",
        "--no-children",
    ]);
    assert!(
        report.contains("workload_hot"),
        "perf report shows workload_hot"
    );
    assert!(
        !err.to_lowercase().contains("warning"),
        "perf report warns: {err}"
    );
    // The folded stack with the largest count is main..a;b;hot.
    let folded = std::fs::read_to_string(dir.join("out.folded")).unwrap();
    let (top, count) = folded
        .lines()
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(s, n)| Some((s.to_string(), n.parse::<u64>().ok()?)))
        })
        .max_by_key(|(_, n)| *n)
        .expect("folded stacks");
    println!("top folded stack ({count}): {top}");
    assert!(
        top.ends_with("workload_a;workload_b;workload_hot"),
        "top stack is a;b;hot: {top}"
    );
    // The SVG is well-formed XML and shows hot().
    let svg = std::fs::read_to_string(dir.join("out.svg")).unwrap();
    assert!(svg.contains("workload_hot"));
    well_formed(&svg);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_frame_pointers_do_not_stop_recording() {
    let dir = out_dir("hostile-fp");
    let r = record(
        &dir,
        &["--call-graph", "fp"],
        "pv-workload --mode fp-loop --seconds 3",
    );
    r.check(
        r.status == 0,
        "record survives looping, non-canonical, unmapped and misaligned frame pointers",
    );
    let folded = std::fs::read_to_string(dir.join("out.folded")).unwrap();
    let hostile = folded_samples(&folded, |stack| stack.contains("hostile_frames"));
    println!("{hostile} samples in hostile_frames");
    assert!(
        hostile > 100,
        "samples kept coming while the frame pointers were hostile"
    );
    // Bounded cost: the walk's per-sample time is reported; it must stay small.
    let us: f64 = r
        .stderr
        .lines()
        .find_map(|l| {
            l.split("callchain walk: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(f64::MAX);
    r.check(
        us < 1000.0,
        "a callchain walk costs well under a millisecond even with hostile frames",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// XML well-formedness: a real parser reads it to the end, tags balanced.
fn well_formed(xml: &str) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut depth = 0i64;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => depth += 1,
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the SVG is not well-formed XML at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(depth, 0, "unbalanced tags");
}

#[test]
fn ctrl_c_stops_the_recording_and_writes_the_outputs() {
    require_image();
    let dir = out_dir("record-ctrl-c");
    let data = dir.join("perf.data");
    let folded = dir.join("out.folded");
    // A workload far longer than the test: only the Ctrl-C can end it in time.
    let args = [
        "record",
        "--timeout",
        "300",
        "-o",
        data.to_str().unwrap(),
        "--folded",
        folded.to_str().unwrap(),
        // The kick backend: guest tasks, so user IPs resolve.
        "--call-graph",
        "fp",
        "--",
        "pv-workload --seconds 200",
    ];
    let r = harness::perfvisor_cmd_interrupted(
        &args,
        "perfvisor-guest: init reached",
        std::time::Duration::from_secs(4),
    );
    let which = if r.stderr.contains("inside the L1 sandbox") {
        "the L1 sandbox"
    } else {
        "this host's /dev/kvm"
    };
    println!(
        "perfvisor record ran on {which}; status {} in {:.1}s\n--- stderr:\n{}",
        r.status,
        r.elapsed.as_secs_f64(),
        r.stderr
    );
    r.check(
        r.status == 0,
        "a Ctrl-C ends the recording cleanly (exit 0)",
    );
    r.check(
        r.elapsed.as_secs() < 150,
        "it ends long before the 200 s workload would",
    );
    let folded = std::fs::read_to_string(&folded).unwrap_or_default();
    let samples = folded_samples(&folded, |_| true);
    println!("folded stacks after the Ctrl-C: {samples} samples");
    r.check(samples > 100, "the folded stacks hold the samples taken");
    r.check(
        folded.contains("workload_hot"),
        "and show the workload's hot function",
    );
    let (script, _) = host_perf_script(&data, &[]);
    r.check(
        script.contains("workload_hot"),
        "the host's perf reads the perf.data written after the Ctrl-C",
    );
}

/// Debian's stock kernel, no System.map (its /boot one is a placeholder),
/// no frame pointers: kernel symbols come from the kallsyms tables in its
/// image and tasks from its BTF. Ground truth: the guest's own
/// /proc/kallsyms (every 400th core symbol, printed before the workload)
/// and the pid the guest's shell reports.
#[test]
fn record_on_a_stock_kernel_names_symbols_and_tasks_from_the_image() {
    // The kernel a user brings: a placeholder System.map, a stripped vmlinux.
    let (kernel, _) = harness::stock_kernel();
    let map = kernel.with_file_name("System.map");
    let placeholder = std::fs::read_to_string(&map).unwrap();
    println!("Debian's System.map (not used): {placeholder:?}");
    let dir = out_dir("record-stock");
    let initrd = image_dir().join("initramfs.cpio");
    // The shell's $$ is the workload's pid after exec: the guest's own word
    // for which process ran. Module lines have a fourth field.
    let r = record(
        &dir,
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--call-graph",
            "fp",
        ],
        "echo guest-pid=$$; awk 'NR % 400 == 0 && NF == 3 { print \"kallsyms-sample\", $0 }' /proc/kallsyms; exec pv-workload --mode syscall --seconds 2",
    );
    r.check(r.status == 0, "record on the stock kernel exits 0");
    r.check(
        r.stderr.contains("guest kernel symbols read from") && r.stderr.contains("kallsyms tables"),
        "kernel symbols come from the image's kallsyms tables, and record says so",
    );
    r.check(
        !r.stderr.contains("guest kernel frames are raw addresses"),
        "no raw-address note: the kernel has symbols",
    );
    r.check(
        r.stderr.contains("task_struct layout from") && r.stderr.contains("BTF"),
        "the task layout comes from the stock kernel's BTF",
    );
    r.check(
        r.stderr.contains("ORC tables"),
        "kernel callchains use the stock kernel's ORC tables (it has no frame pointers)",
    );
    let out = format!("{}{}", r.stdout, r.stderr);

    // The host's reading of the image against the guest's /proc/kallsyms.
    let image = vmm::kernel_image::Vmlinux::open(&kernel).expect("the stock kernel opens");
    let symbols = vmm::kallsyms::symbols_from_image(&image).expect("kallsyms tables found");
    let read = symbols.len();
    let table: std::collections::HashSet<(u64, char, String)> = symbols
        .into_iter()
        .map(|s| (s.addr, s.kind, s.name))
        .collect();
    let (mut guest_lines, mut matched) = (0u32, 0u32);
    for l in out.lines() {
        let Some(rest) = l.split("kallsyms-sample ").nth(1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let [addr, kind, name] = f[..] else { continue };
        guest_lines += 1;
        let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
        let key = (addr, kind.chars().next().unwrap_or('?'), name.to_string());
        if table.contains(&key) {
            matched += 1;
        } else if guest_lines - matched <= 5 {
            println!("guest symbol not in the host's table: {rest}");
        }
    }
    println!(
        "kallsyms: {read} symbols read from the image; {matched} of {guest_lines} sampled guest /proc/kallsyms lines match exactly"
    );
    r.check(
        guest_lines >= 100 && matched == guest_lines,
        "every sampled guest /proc/kallsyms line (address, type, name) is in the host's table",
    );

    let guest_pid: u32 = out
        .split("guest-pid=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the guest printed its pid:\n{out}"));
    let seconds: f64 = out
        .split("pv-workload: mode syscall threads 1 seconds ")
        .nth(1)
        .and_then(|t| t.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the workload printed its own duration:\n{out}"));
    let folded = std::fs::read_to_string(dir.join("out.folded")).unwrap_or_default();
    let total = folded_samples(&folded, |_| true);
    r.check(total > 1000, "every sample reaches the folded stacks");
    let svg = std::fs::read_to_string(dir.join("out.svg")).unwrap_or_default();
    well_formed(&svg);

    let data = dir.join("perf.data");
    let (script, err) = host_perf_script(&data, &["-F", "comm,pid,tid,ip,sym"]);
    r.check(
        !err.to_lowercase().contains("warning"),
        "the host's perf reads it without warnings",
    );
    // Each sample: a header line (comm pid/tid), then its frames, leaf first.
    let mut samples = 0u64;
    let (mut workload, mut workload_right_task) = (0u64, 0u64);
    let mut vcpu_thread_namesakes = 0u64;
    let (mut kernel_leaves, mut kernel_named) = (0u64, 0u64);
    // Kernel samples whose chain has kernel frames up to the system call
    // entry and then the workload's own user frames (libc's __getppid is a
    // leaf without a frame, so a frame-pointer walk goes from its IP to
    // workload_b: workload_hot's return address is not in a frame).
    let mut full_chains = 0u64;
    let mut entry_leaves = 0u64;
    let mut top: std::collections::HashMap<String, u64> = Default::default();
    let mut lines = script.lines().peekable();
    while let Some(head) = lines.next() {
        // perf indents frames with a tab; a header may start with spaces
        // (short comms are right-aligned).
        if head.starts_with('\t') || head.trim().is_empty() {
            continue;
        }
        samples += 1;
        let mut f = head.split_whitespace();
        let comm = f.next().unwrap_or("");
        let ids = f.next().unwrap_or("");
        let mut frames: Vec<(String, String)> = Vec::new();
        while let Some(l) = lines.next_if(|l| l.starts_with('\t')) {
            let l = l.trim();
            let (ip, sym) = l.split_once(' ').unwrap_or((l, ""));
            frames.push((ip.to_string(), sym.trim().to_string()));
        }
        if comm != "pv-workload" {
            continue;
        }
        // A sample the recorder could not name goes to the VMM's vCPU
        // thread (VMM pid / vCPU tid); perf then shows it with the comm of
        // any guest thread whose tid is the same number (seen in CI: the
        // L1's vCPU thread was tid 103, as the workload). Not the
        // workload's: left out, and counted.
        let (pid, tid) = ids.split_once('/').unwrap_or((ids, ""));
        if pid != guest_pid.to_string() && tid == guest_pid.to_string() {
            vcpu_thread_namesakes += 1;
            continue;
        }
        workload += 1;
        if ids == format!("{guest_pid}/{guest_pid}") {
            workload_right_task += 1;
        }
        let is_kernel = |ip: &str| ip.len() == 16 && ip.starts_with("ffff");
        let Some((ip, sym)) = frames.first() else {
            continue;
        };
        if !is_kernel(ip) {
            continue;
        }
        kernel_leaves += 1;
        if sym.starts_with("entry_SYSCALL_64") || sym.starts_with("syscall_return_via_sysret") {
            // Entry code with interrupts off: one frame, and where the
            // guest's own cpu-clock never samples (see below).
            entry_leaves += 1;
        }
        if !sym.is_empty() && sym != "[unknown]" && !sym.starts_with("0x") {
            kernel_named += 1;
            let name = sym.split('+').next().unwrap_or(sym).to_string();
            *top.entry(name).or_default() += 1;
        }
        let kernel_frames = frames.iter().take_while(|(ip, _)| is_kernel(ip)).count();
        let user_after = &frames[kernel_frames..];
        // A complete kernel chain ends at the entry from user space: the
        // system call entry, or an interrupt or exception entry when the
        // sample is in a handler that interrupted user code (kicks land
        // there too, e.g. on the timer's wrmsr in lapic_next_deadline).
        if kernel_frames >= 2
            && frames[..kernel_frames]
                .last()
                .is_some_and(|(_, s)| KERNEL_ENTRIES.iter().any(|e| s.starts_with(e)))
            && user_after.iter().any(|(_, s)| s.starts_with("workload_"))
        {
            full_chains += 1;
        }
    }
    let mut top: Vec<(String, u64)> = top.into_iter().collect();
    top.sort_by_key(|b| std::cmp::Reverse(b.1));
    top.truncate(5);
    println!(
        "host perf script: {samples} samples; pv-workload {workload} in {seconds:.2} s of the workload's own clock, {workload_right_task} as {guest_pid}/{guest_pid} ({vcpu_thread_namesakes} unnamed samples of a vCPU thread with the workload's tid left out); kernel leaves {kernel_leaves}, {kernel_named} named, {full_chains} with an ORC chain from the kernel through entry_SYSCALL_64 into the workload's frames; top kernel functions {top:?}"
    );
    r.check(
        samples == total,
        "the host's perf reads every sample from perf.data",
    );
    r.check(
        workload as f64 >= 0.4 * seconds * 1000.0,
        "the workload's samples are there for most of its run",
    );
    r.check(
        workload_right_task * 100 >= workload * 99,
        "samples of pv-workload carry the pid and tid the guest reported",
    );
    r.check(
        kernel_leaves * 5 >= workload && kernel_named * 100 >= kernel_leaves * 95,
        "the syscall workload's kernel samples are named, not hex",
    );
    r.check(
        top.iter().any(|(n, _)| {
            n.contains("syscall") || n.contains("getppid") || n.starts_with("entry_SYSCALL")
        }),
        "the top kernel functions are on the system call path",
    );
    r.check(
        full_chains * 2 >= kernel_leaves,
        "most kernel samples carry multi-frame kernel callchains (the kernel's ORC tables) that end in the system call entry and continue into the workload's user frames",
    );

    // The independent view: the stock kernel's own perf, unwinding with
    // its own ORC unwinder, on the same workload in the same kernel.
    let g = perfvisor_cmd(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--memory",
        "512M",
        "--timeout",
        "300",
        "--",
        GUEST_PERF_CHAINS,
    ]);
    let gk = kv(&g.stdout, "guest-perf: ");
    let num = |k: &str| gk.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (g_kernel, g_full) = (num("kernel"), num("full"));
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    // Compared outside the interrupts-off entry code, which the guest's
    // cpu-clock (an hrtimer) cannot sample and perfvisor can.
    let comparable = kernel_leaves - entry_leaves;
    println!(
        "kernel samples with a chain through the kernel entry (system call or interrupt) into the workload, outside the entry code: perfvisor record {full_chains}/{comparable} ({:.1}%; {entry_leaves} more samples in the entry code), the guest's own perf -g {g_full}/{g_kernel} ({:.1}%)",
        pct(full_chains, comparable),
        pct(g_full, g_kernel)
    );
    g.check(
        g.status == 0 && g_kernel > 200,
        "the guest's own perf record -g ran on the stock kernel",
    );
    r.check(
        pct(full_chains, comparable) >= pct(g_full, g_kernel) - 10.0,
        "perfvisor's kernel chains are as complete as the kernel's own unwinder's (within 10 points)",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's own `perf record -g` of the syscall workload, summarised
/// like the host side: of the workload's samples with a kernel leaf, how
/// many have two or more kernel frames ending in entry_SYSCALL_64 and then
/// one of the workload's functions.
/// Where a kernel callchain leaves for user space: the SYSCALL entry and
/// the interrupt and exception entries (arch/x86/entry/entry_64.S,
/// idtentry.h).
const KERNEL_ENTRIES: [&str; 4] = [
    "entry_SYSCALL_64",
    "asm_sysvec_",
    "asm_common_interrupt",
    "asm_exc_",
];

const GUEST_PERF_CHAINS: &str = r#"perf record -q -g -e cpu-clock -F 1000 -o /tmp/g.data -- pv-workload --mode syscall --seconds 2 >/dev/null 2>&1
perf script -i /tmp/g.data -F comm,ip,sym 2>/dev/null | awk -F'\t' '
function flush() { if (w && firstk) { k++; if (nk >= 2 && ent && usr) f++ } w = 0; first = 1; firstk = 0; nk = 0; ent = 0; usr = 0; inker = 1; last = "" }
/^\t/ { split($2, a, " "); isk = (length(a[1]) == 16 && substr(a[1], 1, 4) == "ffff");
  if (first) { firstk = isk; first = 0 }
  if (isk && inker) { nk++; last = a[2] } else { if (inker) { inker = 0; if (last ~ /^entry_SYSCALL_64/) ent = 1 } if (a[2] ~ /^workload_/) usr = 1 }
  next }
/./ { flush(); w = index($0, "pv-workload") > 0 }
END { flush(); printf "guest-perf: kernel=%d full=%d\n", k, f }'"#;

/// tests/fixtures/incprog.c built with `flags` into `dir`.
fn build_incprog(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/incprog.c");
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}): run scripts/setup.sh"));
    assert!(st.success(), "gcc {flags:?} failed");
    out
}

#[test]
fn record_names_the_functions_of_an_included_program() {
    let dir = out_dir("include");
    // A program we did not put in the image, built here as a user would:
    // fixed-address and static, and a dynamically linked PIE (placed by
    // the load bias its process's mm->start_code gives).
    let fixed = build_incprog(&dir, "incprog", &["-static", "-no-pie"]);
    let pie = build_incprog(&dir, "incpie", &["-pie", "-fPIE"]);
    let a = format!("{}:/usr/local/bin/incprog", fixed.display());
    let b = format!("{}:/usr/local/bin/incpie", pie.display());
    let r = record(
        &dir,
        &["--call-graph", "fp", "--include", &a, "--include", &b],
        "incprog && incpie",
    );
    r.check(r.status == 0, "record exits 0");
    r.check(
        r.stdout.matches("incprog done").count() == 2,
        "both included programs ran in the guest",
    );
    r.check(
        !r.stderr.contains("its frames stay addresses"),
        "both programs' symbols are used",
    );
    let folded = std::fs::read_to_string(dir.join("out.folded")).unwrap();
    // Each program spins for 2 s in outer -> spin: at 1 kHz about 2000
    // samples each, whatever the guest's clock did.
    let mut spins = Vec::new();
    for prog in ["incprog", "incpie"] {
        let root = format!("{prog};");
        let spin = folded_samples(&folded, |stack| {
            stack.starts_with(&root) && stack.ends_with("main;incprog_outer;incprog_spin")
        });
        // Its samples in user space (no kernel frame: interrupts on the
        // way are the kernel's): the spin loop, bar startup and the vDSO.
        let user = folded_samples(&folded, |stack| {
            stack.starts_with(&root) && !stack.contains("_[k]")
        });
        println!("{prog}: {spin} of {user} user samples in main;incprog_outer;incprog_spin");
        r.check(
            spin > 500 && spin * 100 >= user * 90,
            &format!("{prog}'s own call chain main;outer;spin carries its two seconds"),
        );
        spins.push((prog, spin));
    }
    // The host's perf, an independent reader of the same perf.data and the
    // same files, names the leaf as often as the folded stacks do.
    let data = dir.join("perf.data");
    let (script, err) = host_perf_script(&data, &["-F", "comm,ip,sym", "--hide-call-graph"]);
    for (prog, spin) in spins {
        let named = script
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(prog) && w.nth(1) == Some("incprog_spin")
            })
            .count() as u64;
        println!("host perf script: {named} {prog} samples in incprog_spin");
        r.check(
            named * 100 >= spin * 95,
            &format!("the host's perf names {prog}'s function from the same file"),
        );
    }
    r.check(
        !err.to_lowercase().contains("warning"),
        &format!("perf script does not warn: {err}"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
