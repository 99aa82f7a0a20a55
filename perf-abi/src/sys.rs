//! The perf system-call interface, written once for the host-timer backend
//! (`vmm`) and the static guest tools: `perf_event_open(2)`, the event
//! ioctls, reading a counter, and the shared mapping of an event's ring.
//!
//! Every function returns the kernel's error as an [`io::Error`]; callers
//! add what the user should do about it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::attr::PerfEventAttr;

/// `_IO('$', 0)`.
pub const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
/// `_IO('$', 1)`.
pub const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
/// `_IOR('$', 7, __u64 *)`.
pub const PERF_EVENT_IOC_ID: u64 = 0x8008_2407;
/// `PERF_FLAG_FD_CLOEXEC`.
pub const PERF_FLAG_FD_CLOEXEC: u64 = 1 << 3;

/// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`: `pid` 0
/// and `cpu` -1 is the calling thread on any CPU.
pub fn perf_event_open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads `attr.size` bytes from a valid, fully
    // initialised struct of that size; the other arguments are integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            libc::c_long::from(pid),
            libc::c_long::from(cpu),
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC as libc::c_long,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd =
        RawFd::try_from(fd).map_err(|_| io::Error::other("perf_event_open: fd out of range"))?;
    // SAFETY: a fresh descriptor the kernel just returned; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_arg(fd: &impl AsRawFd, req: u64, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: a perf ioctl on a perf fd; `arg` is 0 or a pointer the caller
    // made valid for the request (see `event_id`).
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

/// Read `{value, lost}` from an event opened with
/// `read_format = PERF_FORMAT_LOST`.
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
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != std::mem::size_of_val(&buf) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {n} bytes of a 16-byte {{value, lost}} count"),
        ));
    }
    Ok((buf[0], buf[1]))
}

/// A shared read-write mapping of a perf fd (its control page and data
/// pages, or its AUX area), unmapped on drop. Whoever holds pointers into
/// it must be dropped first (owners declare it after those users).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to another
// thread moves that ownership, and the kernel's mapping is not tied to a
// thread.
unsafe impl Send for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    pub fn new(fd: &impl AsRawFd, len: usize, offset: u64) -> io::Result<Mapping> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset too large"))?;
        // SAFETY: a fresh mapping at an address the kernel chooses; nothing
        // else is affected. The kernel checks `len` against the event's
        // rules (1 + 2^n pages, or the AUX area); the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
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
        // SAFETY: exactly the range `new` mapped; its users are dropped
        // before it (see the type's documentation).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{flag, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_SOFTWARE};

    #[test]
    fn ioctl_numbers() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: u64, nr: u64, size: u64| dir << 30 | size << 16 | (b'$' as u64) << 8 | nr;
        assert_eq!(PERF_EVENT_IOC_ENABLE, ioc(0, 0, 0));
        assert_eq!(PERF_EVENT_IOC_DISABLE, ioc(0, 1, 0));
        assert_eq!(PERF_EVENT_IOC_ID, ioc(2, 7, 8));
    }

    /// The calls against the real kernel, where it lets us: a disabled
    /// user-only cpu-clock event on this thread (perf_event_paranoid
    /// may refuse it, which is not this code's failure).
    #[test]
    fn open_map_enable_read_on_this_kernel() {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: PERF_ATTR_SIZE_VER7,
            config: PERF_COUNT_SW_CPU_CLOCK,
            sample_period_or_freq: 1_000_000,
            read_format: crate::attr::read_format::LOST,
            flags: flag::DISABLED | flag::EXCLUDE_KERNEL | flag::EXCLUDE_HV,
            ..Default::default()
        };
        let fd = match perf_event_open(&attr, 0, -1) {
            Ok(fd) => fd,
            Err(e) => {
                println!("perf_event_open refused here ({e}); only the error path ran");
                return;
            }
        };
        let page = page_size();
        let map = Mapping::new(&fd, 2 * page, 0).expect("1 + 1 pages map");
        assert_eq!(map.len(), 2 * page);
        assert!(!map.is_empty());
        assert!(
            Mapping::new(&fd, 4 * page, 0).is_err(),
            "1 + 3 data pages is refused"
        );
        event_id(&fd).expect("PERF_EVENT_IOC_ID");
        enable(&fd).expect("enable");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        disable(&fd).expect("disable");
        let (value, lost) = read_value_and_lost(&fd).expect("read");
        assert!(value > 0, "cpu-clock counted {value} ns");
        assert_eq!(lost, 0);
    }
}
