//! Boot-time and memory benchmark: perfvisor against QEMU (`-accel kvm`)
//! booting the same kernel and initramfs, on the same KVM, in one run.
//!
//!   cargo run --release --example bench_boot [-- ITERATIONS]
//!
//! (`scripts/bench-boot.sh` wraps it.) On a host whose /dev/kvm cannot run
//! guest user space, the measurement runs inside the L1 sandbox: this binary
//! copies itself, perfvisor, QEMU and the guest image into the L1 and runs
//! there with `PERFVISOR_BENCH_INNER=1`.
//!
//! Measured per iteration, alternating the VMMs:
//! - time from spawning the VMM to the guest's first `/init` line
//!   (`perfvisor-guest: init reached`);
//! - perfvisor's memory overhead: its RSS minus the resident part of the
//!   guest RAM mapping, read from /proc/PID/smaps one second after `/init`
//!   (the same for QEMU, for reference).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "perfvisor-guest: init reached";
const GUEST_MIB: u64 = 256;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH: run scripts/setup.sh"))
}

struct Measured {
    to_init: Duration,
    rss_kib: u64,
    guest_kib: u64,
    /// Largest mappings besides guest RAM (KiB, name).
    others: Vec<(u64, String)>,
}

/// Rss of all mappings, of the guest RAM mapping (the anonymous mapping of
/// exactly the guest's size), and the largest other mappings.
fn smaps(pid: u32) -> (u64, u64, Vec<(u64, String)>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    let mut name = String::new();
    let mut others = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let mut it = first.split('-');
            let lo = u64::from_str_radix(it.next().unwrap_or("0"), 16).unwrap_or(0);
            let hi = u64::from_str_radix(it.next().unwrap_or("0"), 16).unwrap_or(0);
            in_guest = hi - lo == GUEST_MIB << 20;
            name = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_string();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kib;
            if in_guest {
                guest += kib;
            } else if kib > 0 {
                others.push((kib, name.clone()));
            }
        }
    }
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    others.truncate(8);
    (total, guest, others)
}

fn measure(mut cmd: Command) -> Measured {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn VMM");
    let pid = child.id();
    let out = child.stdout.take().expect("stdout");
    let mut to_init = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if line.contains(MARKER) {
            to_init = Some(start.elapsed());
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let (rss_kib, guest_kib, others) = smaps(pid);
    let _ = child.kill();
    let _ = child.wait();
    Measured {
        to_init: to_init.expect("the guest reached /init"),
        rss_kib,
        guest_kib,
        others,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn inner(iterations: usize) {
    let img = PathBuf::from(std::env::var("PERFVISOR_GUEST_IMAGE").expect("image dir"));
    let perfvisor = std::env::var("PERFVISOR_BIN").expect("perfvisor");
    let qemu = which("qemu-system-x86_64");
    let pv = |kernel: &str| {
        let mut c = Command::new(&perfvisor);
        c.args(["run", "--kvm", "host", "--memory", &format!("{GUEST_MIB}M")]);
        c.arg("--kernel")
            .arg(img.join(kernel))
            .arg("--initrd")
            .arg(img.join("initramfs.cpio"));
        c.args(["--", "sleep 30"]);
        c
    };
    let qm = || {
        let mut c = Command::new(&qemu);
        c.args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            &GUEST_MIB.to_string(),
            "-smp",
            "1",
        ]);
        c.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]);
        c.arg("-kernel")
            .arg(img.join("bzImage"))
            .arg("-initrd")
            .arg(img.join("initramfs.cpio"));
        c.args(["-append", &format!("{CMDLINE} -- sleep 30")]);
        c
    };
    let names = [
        "perfvisor (vmlinux)",
        "perfvisor (bzImage)",
        "qemu -accel kvm (bzImage)",
    ];
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..iterations {
        for (k, r) in results.iter_mut().enumerate() {
            let m = match k {
                0 => measure(pv("vmlinux")),
                1 => measure(pv("bzImage")),
                _ => measure(qm()),
            };
            println!(
                "iteration {i}: {:<26} init after {:>7.1} ms, RSS {:>7} KiB, guest RAM resident {:>7} KiB, overhead {:>6} KiB",
                names[k],
                m.to_init.as_secs_f64() * 1e3,
                m.rss_kib,
                m.guest_kib,
                m.rss_kib - m.guest_kib
            );
            r.push(m);
        }
    }
    let med = |r: &[Measured], f: &dyn Fn(&Measured) -> f64| median(r.iter().map(f).collect());
    println!("\nwhere perfvisor's own RSS goes (first iteration, vmlinux):");
    for (kib, name) in &results[0][0].others {
        println!("  {kib:>6} KiB  {name}");
    }
    println!("\nmedians over {iterations} iterations (same L1, same kernel and initramfs):");
    let t_q = med(&results[2], &|m| m.to_init.as_secs_f64() * 1e3);
    for (k, r) in results.iter().enumerate() {
        let t = med(r, &|m| m.to_init.as_secs_f64() * 1e3);
        let o = med(r, &|m| (m.rss_kib - m.guest_kib) as f64);
        println!(
            "  {:<26} to /init {:>7.1} ms (ratio to qemu {:.2}), overhead {:>6.0} KiB ({:.1} MiB)",
            names[k],
            t,
            t / t_q,
            o,
            o / 1024.0
        );
    }
    let t_pv = med(&results[0], &|m| m.to_init.as_secs_f64() * 1e3);
    let o_pv = med(&results[0], &|m| (m.rss_kib - m.guest_kib) as f64) / 1024.0;
    println!(
        "BENCH boot: perfvisor_ms={t_pv:.1} qemu_ms={t_q:.1} ratio={:.3} target<1 {} | perfvisor_overhead_mib={o_pv:.2} target<=5 {}",
        t_pv / t_q,
        if t_pv < t_q { "MET" } else { "NOT MET" },
        if o_pv <= 5.0 { "MET" } else { "NOT MET" }
    );
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    if std::env::var_os("PERFVISOR_BENCH_INNER").is_some() {
        return inner(iterations);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let img = std::env::var_os("PERFVISOR_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("build/guest-image"));
    let perfvisor = root.join("target/release/perfvisor");
    assert!(
        perfvisor.exists(),
        "build perfvisor first: cargo build --release"
    );
    let probe = Command::new(&perfvisor)
        .arg("probe")
        .output()
        .expect("perfvisor probe");
    if probe.status.success() {
        // This host's KVM is capable: measure here.
        std::env::set_var("PERFVISOR_GUEST_IMAGE", &img);
        std::env::set_var("PERFVISOR_BIN", &perfvisor);
        println!("KVM: this host's /dev/kvm");
        return inner(iterations);
    }
    println!(
        "KVM: the L1 sandbox (this host's /dev/kvm: {})",
        String::from_utf8_lossy(&probe.stdout).trim()
    );
    let exe = std::env::current_exe().expect("current exe");
    let job = sandbox::Job::new(["/bench/bench_boot".to_string(), iterations.to_string()])
        .binary(&exe, "/bench/bench_boot")
        .binary(&perfvisor, "/bench/perfvisor")
        .binary(which("qemu-system-x86_64"), "/usr/bin/qemu-system-x86_64")
        .dir("/usr/share/qemu", "/usr/share/qemu")
        .dir("/usr/share/seabios", "/usr/share/seabios")
        .files_in(
            &img,
            &["vmlinux", "bzImage", "initramfs.cpio"],
            "/bench/image",
        )
        .env("PERFVISOR_BENCH_INNER", "1")
        .env("PERFVISOR_BIN", "/bench/perfvisor")
        .env("PERFVISOR_GUEST_IMAGE", "/bench/image");
    let sb = sandbox::Sandbox::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .memory_mib(2048)
        .timeout(Duration::from_secs(1800));
    let out = sb
        .run(&job, &mut |l| println!("{l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::process::exit(out.status);
}
