//! Best-effort host facts for the perf.data header (what perf record writes:
//! CPU description and id from /proc/cpuinfo, memory from /proc/meminfo).

use std::fs;

pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| String::from("localhost"))
}

fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// perf's HEADER_CPUDESC: the model name.
pub(crate) fn cpu_desc() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| cpuinfo_field(&c, "model name"))
        .unwrap_or_else(|| String::from("unknown"))
}

/// perf's HEADER_CPUID on x86: "vendor,family,model,stepping" in decimal.
pub(crate) fn cpuid() -> String {
    let Ok(c) = fs::read_to_string("/proc/cpuinfo") else {
        return String::from("unknown,0,0,0");
    };
    let f = |k| cpuinfo_field(&c, k).unwrap_or_else(|| String::from("0"));
    format!(
        "{},{},{},{}",
        cpuinfo_field(&c, "vendor_id").unwrap_or_else(|| String::from("unknown")),
        f("cpu family"),
        f("model"),
        f("stepping")
    )
}

/// perf's HEADER_TOTAL_MEM: kB.
pub(crate) fn total_mem_kb() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let v = cpuinfo_field(&m, "MemTotal")?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Compact CPU list ("0-3", "0", "") like the kernel prints.
pub(crate) fn cpu_list(n: u32) -> String {
    match n {
        0 => String::new(),
        1 => String::from("0"),
        n => format!("0-{}", n - 1),
    }
}

/// The host kernel's `_text` from /proc/kallsyms (None if unreadable or
/// hidden by kptr_restrict).
pub(crate) fn host_kernel_text() -> Option<u64> {
    use std::io::{BufRead, BufReader};
    let f = fs::File::open("/proc/kallsyms").ok()?;
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(_), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if name == "_text" {
            let a = u64::from_str_radix(addr, 16).ok()?;
            return (a != 0).then_some(a);
        }
    }
    None
}
