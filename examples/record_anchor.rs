//! Anchor comparison for `perfvisor record`: the same guest and workload
//! profiled by perfvisor (kicks, guest RIP from the vCPU) and by the host
//! kernel's own guest sampling (`perf record -e cpu-clock:G` around the
//! whole `perfvisor record` process, so both cover the same window; its guest IPs symbolized with the guest's System.map). Prints both
//! top-10 guest kernel symbol lists side by side and checks they agree
//! within sampling noise.
//!
//!   cargo run --release --example record_anchor [-- SECONDS [kick|host-timer]]
//!
//! (`scripts/record-anchor.sh` wraps it.) Where this host's KVM cannot run
//! Linux the comparison runs inside the L1 sandbox, with the host's `perf`
//! packed in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH: run scripts/setup.sh"))
}

/// Guest kernel leaf symbols and counts from folded stacks (`name_[k]` frames).
fn folded_kernel(text: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for l in text.lines() {
        let Some((stack, n)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let leaf = stack.rsplit(';').next().unwrap_or("");
        if let Some(sym) = leaf.strip_suffix("_[k]") {
            *m.entry(sym.to_string()).or_default() += n;
        }
    }
    m
}

/// Guest kernel symbols and counts from `perf report -D` sample lines
/// (`... PERF_RECORD_SAMPLE(IP, 0x5): 97/101: 0xffffffff81078006 period: ...`),
/// keeping guest samples (cpumode 4 or 5: in this nested setup KVM reports
/// the guest's CPL unreliably, so kernel and user are told apart by
/// address) and symbolizing their IPs with the guest's System.map. Samples
/// the host kernel took outside the guest (cpumode 1 or 2, which
/// `exclude_host` lets through here) are dropped.
fn perf_kernel(text: &str, sym: &record::Symbolizer) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for l in text.lines() {
        let Some(rest) = l.split("PERF_RECORD_SAMPLE(IP, ").nth(1) else {
            continue;
        };
        let Some(misc) = rest
            .split(')')
            .next()
            .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        else {
            continue;
        };
        if !matches!(misc & 7, 4 | 5) {
            continue;
        }
        let Some(ip) = rest.split_whitespace().find_map(|w| {
            w.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        }) else {
            continue;
        };
        if !record::is_kernel_address(ip) {
            continue;
        }
        let name = sym
            .symbolize(ip, false, None)
            .map(|s| s.name.to_string())
            .unwrap_or_else(|| "[unknown]".into());
        *m.entry(name).or_default() += 1;
    }
    m
}

fn top(m: &HashMap<String, u64>, n: usize) -> Vec<(String, f64)> {
    let total: u64 = m.values().sum();
    let mut v: Vec<_> = m
        .iter()
        .map(|(k, c)| (k.clone(), *c as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    v
}

fn main() {
    let secs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    // perfvisor's kick backend by default: a mechanism independent of the
    // host timer the anchor uses (host-timer is the same hrtimer, so it
    // would agree by construction).
    let backend = std::env::args().nth(2).unwrap_or_else(|| "kick".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let img = root.join("build/guest-image");
    let perfvisor = root.join("target/release/perfvisor");
    assert!(
        perfvisor.exists(),
        "build perfvisor first: cargo build --release"
    );
    let out = std::env::temp_dir().join(format!("perfvisor-anchor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // One script, run where a capable KVM is: perfvisor records the guest,
    // and the host kernel samples the same vCPU thread for the guest.
    let script = format!(
        "set -e; mkdir -p /out; cd /out; \
         perf record -q -e cpu-clock:G -F 1000 -o /out/anchor.data -- \
           /bench/perfvisor record --kvm host --pmu-freq 0 --pmu-backend {backend} -F 1000 --guest-system-map /bench/image/System.map \
           -o /out/pv.data --folded /out/pv.folded -- 'pv-workload --mode syscall --seconds {secs}' > /out/pv.log 2>&1; \
         perf report -D -i /out/anchor.data 2>/out/report.err | grep PERF_RECORD_SAMPLE > /out/anchor-raw.txt || true; \
         grep -E 'perfvisor record: [0-9]+ samples' /out/pv.log; wc -l /out/anchor-raw.txt"
    );
    println!("perfvisor record backend: {backend}");
    let probe = std::process::Command::new(&perfvisor)
        .arg("probe")
        .output()
        .expect("probe");
    if probe.status.success() {
        panic!("this host's KVM is capable: run the script's commands here (not automated yet)");
    }
    println!("KVM: the L1 sandbox (this host's /dev/kvm cannot run guest user space)");
    let job = sandbox::Job::shell(&script)
        .binary(&perfvisor, "/bench/perfvisor")
        .binary(which("perf"), "/usr/bin/perf")
        .files_in(
            &img,
            &["vmlinux", "initramfs.cpio", "System.map"],
            "/bench/image",
        )
        .env("PERFVISOR_GUEST_IMAGE", "/bench/image")
        .collect("/out", &out);
    let sb = sandbox::Sandbox::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(Duration::from_secs(900));
    let res = sb
        .run(&job, &mut |l| println!("  | {l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status, 0, "the anchor run failed");
    let pv = folded_kernel(&std::fs::read_to_string(out.join("pv.folded")).unwrap_or_default());
    let mut sym = record::Symbolizer::new();
    sym.set_kernel_symbols(img.join("System.map"))
        .expect("guest System.map");
    let anchor = perf_kernel(
        &std::fs::read_to_string(out.join("anchor-raw.txt")).unwrap_or_default(),
        &sym,
    );
    let (tp, ta) = (top(&pv, 10), top(&anchor, 10));
    println!(
        "\nguest kernel symbols, share of guest kernel samples ({} perfvisor, {} perf cpu-clock:G)",
        pv.values().sum::<u64>(),
        anchor.values().sum::<u64>()
    );
    println!(
        "  {:<36} {:>6}   | {:<36} {:>6}",
        "perfvisor record", "%", "perf record -e cpu-clock:G", "%"
    );
    for i in 0..10 {
        let l = tp
            .get(i)
            .map(|(s, p)| format!("{s:<36} {:>6.1}", p * 100.0))
            .unwrap_or_default();
        let r = ta
            .get(i)
            .map(|(s, p)| format!("{s:<36} {:>6.1}", p * 100.0))
            .unwrap_or_default();
        println!("  {l:<43}   | {r}");
    }
    // Agreement: for every symbol at 5% or more in either list, the shares
    // differ by at most max(5 points, 3 binomial sigmas of the smaller run).
    let n = pv
        .values()
        .sum::<u64>()
        .min(anchor.values().sum::<u64>())
        .max(1) as f64;
    let share = |m: &HashMap<String, u64>, s: &str| {
        *m.get(s).unwrap_or(&0) as f64 / m.values().sum::<u64>().max(1) as f64
    };
    let mut worst = 0.0f64;
    let mut ok = true;
    for s in tp.iter().chain(ta.iter()).map(|(s, _)| s) {
        let (a, b) = (share(&pv, s), share(&anchor, s));
        if a.max(b) < 0.05 {
            continue;
        }
        let p = (a + b) / 2.0;
        let tol = (3.0 * (p * (1.0 - p) / n).sqrt()).max(0.05);
        worst = worst.max((a - b).abs() - tol);
        ok &= (a - b).abs() <= tol;
    }
    println!(
        "BENCH anchor: {} (largest excess over tolerance {:.1} points)",
        if ok {
            "distributions agree within sampling noise"
        } else {
            "distributions DIFFER"
        },
        worst.max(0.0) * 100.0
    );
    if std::env::var_os("PERFVISOR_ANCHOR_KEEP").is_some() {
        println!("outputs kept in {}", out.display());
    } else {
        let _ = std::fs::remove_dir_all(&out);
    }
}
