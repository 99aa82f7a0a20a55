//! What the guest tools add to the perf system-call interface (which is
//! `perf_abi::sys`, shared with the host-timer backend): waiting on event
//! fds, the online CPU list, and a PMU's type number from sysfs.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

pub use perf_abi::attr::{
    flag, read_format, PerfEventAttr, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK,
    PERF_TYPE_SOFTWARE,
};
pub use perf_abi::sys::{
    disable, enable, event_id, page_size, perf_event_open, read_value_and_lost, Mapping,
};

/// `poll()` for POLLIN on every fd; returns when one is readable or after
/// `timeout_ms`. EINTR counts as a timeout.
pub fn poll_in(fds: &[RawFd], timeout_ms: i32) -> io::Result<()> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of `p.len()` pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Parses a CPU list as in /sys/devices/system/cpu/online ("0-3,5").
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    if out.is_empty() {
        return None;
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The online CPUs.
pub fn online_cpus() -> Vec<u32> {
    if let Some(v) = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
    {
        return v;
    }
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    (0..n as u32).collect()
}

/// The PMU type number from `<sysfs>/bus/event_source/devices/<pmu>/type`.
pub fn pmu_type(sysfs: &Path, pmu: &str) -> io::Result<u32> {
    let path = sysfs
        .join("bus/event_source/devices")
        .join(pmu)
        .join("type");
    let s = std::fs::read_to_string(&path)?;
    s.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds {:?}, not a number", path.display(), s.trim()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn pmu_type_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("pvpmu-tool-test-{}", std::process::id()));
        let p = dir.join("bus/event_source/devices/pvpmu");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("type"), "9\n").unwrap();
        assert_eq!(pmu_type(&dir, "pvpmu").unwrap(), 9);
        assert_eq!(
            pmu_type(&dir, "nope").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::write(p.join("type"), "x\n").unwrap();
        assert!(pmu_type(&dir, "pvpmu").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
