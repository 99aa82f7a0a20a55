//! The perf_event_open(2) user-space ABI, by hand: the attr struct (Linux
//! 6.1, `PERF_ATTR_SIZE_VER7`), the ioctls, and small wrappers over the raw
//! syscalls, mmap and poll. Layout checked against
//! include/uapi/linux/perf_event.h in the tests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use perf_abi::attr::{
    flag, read_format, PerfEventAttr, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK,
    PERF_TYPE_SOFTWARE,
};

/// Read `{value, lost}` from an event opened with `read_format = LOST`.
pub fn read_value_and_lost(fd: &impl AsRawFd) -> io::Result<(u64, u64)> {
    let mut buf = [0u64; 2];
    // SAFETY: read(2) into a local buffer of the given size.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf),
        )
    };
    if n != std::mem::size_of_val(&buf) as isize {
        return Err(io::Error::last_os_error());
    }
    Ok((buf[0], buf[1]))
}

/// `_IO('$', 0)`.
pub const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
/// `_IO('$', 1)`.
pub const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
/// `_IOR('$', 7, __u64 *)`.
pub const PERF_EVENT_IOC_ID: u64 = 0x8008_2407;
/// `PERF_FLAG_FD_CLOEXEC`.
pub const PERF_FLAG_FD_CLOEXEC: u64 = 1 << 3;

/// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`.
pub fn perf_event_open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads `attr.size` bytes from a valid, initialised
    // 128-byte struct; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid as libc::c_long,
            cpu as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC as libc::c_long,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ioctl_arg(fd: &impl AsRawFd, req: u64, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: perf ioctls on a perf fd; `arg` is either 0 or a pointer the
    // caller made valid for the request (see `event_id`).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// PERF_EVENT_IOC_ENABLE.
pub fn enable(fd: &impl AsRawFd) -> io::Result<()> {
    ioctl_arg(fd, PERF_EVENT_IOC_ENABLE, 0)
}

/// PERF_EVENT_IOC_DISABLE.
pub fn disable(fd: &impl AsRawFd) -> io::Result<()> {
    ioctl_arg(fd, PERF_EVENT_IOC_DISABLE, 0)
}

/// PERF_EVENT_IOC_ID: the event's id (what ID/IDENTIFIER fields carry).
pub fn event_id(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut id = 0u64;
    ioctl_arg(fd, PERF_EVENT_IOC_ID, &mut id as *mut u64 as libc::c_ulong)?;
    Ok(id)
}

/// A shared read-write mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    pub fn new(fd: &impl AsRawFd, len: usize, offset: u64) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; nothing else is
        // affected. The result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Zero length (never, for a successful mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `new` mapped; users of the pointer are
        // dropped before (see the field order of the owners).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

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
    use std::mem::{offset_of, size_of};

    /// Offsets from include/uapi/linux/perf_event.h (6.1) and the
    /// PERF_ATTR_SIZE_VER* values, which mark where each version ended.
    #[test]
    fn attr_layout() {
        assert_eq!(size_of::<PerfEventAttr>(), PERF_ATTR_SIZE_VER7 as usize);
        assert_eq!(offset_of!(PerfEventAttr, type_), 0);
        assert_eq!(offset_of!(PerfEventAttr, size), 4);
        assert_eq!(offset_of!(PerfEventAttr, config), 8);
        assert_eq!(offset_of!(PerfEventAttr, sample_period_or_freq), 16);
        assert_eq!(offset_of!(PerfEventAttr, sample_type), 24);
        assert_eq!(offset_of!(PerfEventAttr, read_format), 32);
        assert_eq!(offset_of!(PerfEventAttr, flags), 40);
        assert_eq!(offset_of!(PerfEventAttr, wakeup_events), 48);
        assert_eq!(offset_of!(PerfEventAttr, bp_type), 52);
        assert_eq!(offset_of!(PerfEventAttr, config1), 56);
        // PERF_ATTR_SIZE_VER0 = 64: config2 starts where VER0 ended.
        assert_eq!(offset_of!(PerfEventAttr, config2), 64);
        // VER1 = 72, VER2 = 80, VER3 = 96, VER4 = 104, VER5 = 112,
        // VER6 = 120, VER7 = 128.
        assert_eq!(offset_of!(PerfEventAttr, branch_sample_type), 72);
        assert_eq!(offset_of!(PerfEventAttr, sample_regs_user), 80);
        assert_eq!(offset_of!(PerfEventAttr, sample_stack_user), 88);
        assert_eq!(offset_of!(PerfEventAttr, clockid), 92);
        assert_eq!(offset_of!(PerfEventAttr, sample_regs_intr), 96);
        assert_eq!(offset_of!(PerfEventAttr, aux_watermark), 104);
        assert_eq!(offset_of!(PerfEventAttr, sample_max_stack), 108);
        assert_eq!(offset_of!(PerfEventAttr, reserved_2), 110);
        assert_eq!(offset_of!(PerfEventAttr, aux_sample_size), 112);
        assert_eq!(offset_of!(PerfEventAttr, reserved_3), 116);
        assert_eq!(offset_of!(PerfEventAttr, sig_data), 120);
    }

    #[test]
    fn flag_bits() {
        // The 38 named bits are distinct and contiguous from bit 0, with
        // precise_ip's two bits at 15 and 16.
        let named = [
            flag::DISABLED,
            flag::INHERIT,
            flag::PINNED,
            flag::EXCLUSIVE,
            flag::EXCLUDE_USER,
            flag::EXCLUDE_KERNEL,
            flag::EXCLUDE_HV,
            flag::EXCLUDE_IDLE,
            flag::MMAP,
            flag::COMM,
            flag::FREQ,
            flag::INHERIT_STAT,
            flag::ENABLE_ON_EXEC,
            flag::TASK,
            flag::WATERMARK,
            3 << flag::PRECISE_IP_SHIFT,
            flag::MMAP_DATA,
            flag::SAMPLE_ID_ALL,
            flag::EXCLUDE_HOST,
            flag::EXCLUDE_GUEST,
            flag::EXCLUDE_CALLCHAIN_KERNEL,
            flag::EXCLUDE_CALLCHAIN_USER,
            flag::MMAP2,
            flag::COMM_EXEC,
            flag::USE_CLOCKID,
            flag::CONTEXT_SWITCH,
            flag::WRITE_BACKWARD,
            flag::NAMESPACES,
            flag::KSYMBOL,
            flag::BPF_EVENT,
            flag::AUX_OUTPUT,
            flag::CGROUP,
            flag::TEXT_POKE,
            flag::BUILD_ID,
            flag::INHERIT_THREAD,
            flag::REMOVE_ON_EXEC,
            flag::SIGTRAP,
        ];
        let all = named.iter().fold(0u64, |acc, b| {
            assert_eq!(acc & b, 0, "{b:#x} overlaps");
            acc | b
        });
        assert_eq!(all, (1 << 38) - 1);
    }

    #[test]
    fn ioctl_numbers() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: u64, nr: u64, size: u64| dir << 30 | size << 16 | (b'$' as u64) << 8 | nr;
        assert_eq!(PERF_EVENT_IOC_ENABLE, ioc(0, 0, 0));
        assert_eq!(PERF_EVENT_IOC_DISABLE, ioc(0, 1, 0));
        assert_eq!(PERF_EVENT_IOC_ID, ioc(2, 7, 8));
    }

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
