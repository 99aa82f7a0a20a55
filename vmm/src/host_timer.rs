//! The host-timer sampling backend: a software `cpu-clock` perf event with
//! `exclude_host` on a vCPU thread. The host kernel's hrtimer fires while
//! the thread runs the guest and records the guest's IP and mode (misc
//! GUEST_KERNEL / GUEST_USER) without an exit to user space; the vCPU thread
//! drains the event's ring when it is kicked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::introspect::is_user_address;
use devices::perf_ring::{decode, Body, Consumer, ReadMode, RingPages, SampleFormat};
use perf_abi::attr::{
    flag, PerfEventAttr, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_SOFTWARE,
};
use perf_abi::{misc, sample};

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Data pages of the host ring (32 KiB: 10 ms at 4 kHz is 40 records).
const DATA_PAGES: usize = 8;
const PAGE: usize = 4096;
/// What the event samples: the guest IP and the time.
const SAMPLE_TYPE: u64 = sample::IP | sample::TIME;
/// The records' layout, for the decoder.
const FORMAT: SampleFormat = SampleFormat {
    sample_type: SAMPLE_TYPE,
    read_format: 0,
    sample_id_all: false,
};
/// Samples the host ring holds (24 bytes each: header, IP, TIME).
pub const RING_SAMPLES: u32 = (DATA_PAGES * PAGE / 24) as u32;

/// One vCPU thread's host timer.
pub struct HostTimer {
    consumer: Consumer<RingPages>,
    map: NonNull<libc::c_void>,
    map_len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned by this value and only touched through it;
// moving it to another thread moves the whole ownership.
unsafe impl Send for HostTimer {}

impl HostTimer {
    /// Open the event for the calling thread, sampling at `freq` Hz of
    /// guest CPU time, with CLOCK_BOOTTIME timestamps.
    pub fn open_for_current_thread(freq: u32) -> io::Result<HostTimer> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: PERF_ATTR_SIZE_VER7,
            config: PERF_COUNT_SW_CPU_CLOCK,
            sample_period_or_freq: 1_000_000_000 / u64::from(freq.max(1)),
            sample_type: SAMPLE_TYPE,
            flags: flag::EXCLUDE_HOST | flag::USE_CLOCKID,
            clockid: libc::CLOCK_BOOTTIME,
            ..Default::default()
        };
        // SAFETY: perf_event_open reads `attr` (a valid, fully initialised
        // struct of the size it says) and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0,
                -1,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let map_len = (1 + DATA_PAGES) * PAGE;
        // SAFETY: a fresh shared mapping of the perf fd; the kernel checks
        // the length (1 + 2^n pages) and we check the result.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // SAFETY: the mapping is (1 + DATA_PAGES) pages, valid until the
        // munmap in Drop, which runs after `consumer` (and its RingPages)
        // is dropped: fields drop in declaration order.
        let pages =
            unsafe { RingPages::from_contiguous(map.as_ptr().cast(), PAGE, DATA_PAGES, None) }
                .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HostTimer {
            consumer: Consumer::new(pages, ReadMode::Forward),
            map,
            map_len,
            _fd: fd,
        })
    }

    /// Hand every tick since the last drain to `f(tick)`, oldest first.
    pub fn drain(&mut self, mut f: impl FnMut(Tick)) {
        let _ = self.consumer.read_batch(None, |_, bytes| {
            // Only samples matter; the kernel's other records (throttle,
            // lost) and anything undecodable are passed over.
            let Ok(rec) = decode(&FORMAT, bytes) else {
                return;
            };
            let Body::Sample(s) = &rec.body else {
                return;
            };
            let (cpumode, ip, boot_ns) = (rec.cpumode(), s.ip, s.ids.time);
            f(match cpumode {
                // User or kernel is decided by the address, not by the
                // host's GUEST_USER/GUEST_KERNEL, which comes from the CPL
                // KVM reports and which nested SVM under TCG gets wrong.
                misc::GUEST_USER | misc::GUEST_KERNEL => Tick::Guest {
                    ip,
                    user: is_user_address(ip),
                    boot_ns,
                },
                // The host kernel's cpu-clock has no exclude_host for
                // software events (Linux 6.1 checks only exclude_user and
                // exclude_kernel), so ticks in the vCPU thread's host time
                // arrive too, with host IPs.
                misc::USER => Tick::HostUser { boot_ns },
                _ => Tick::HostKernel { boot_ns },
            });
        });
    }
}

/// One host timer tick on a vCPU thread (CLOCK_BOOTTIME ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// In guest mode: the guest's IP and mode.
    Guest { ip: u64, user: bool, boot_ns: u64 },
    /// In the VMM's user space, handling an exit: the guest is stopped at
    /// that exit's RIP.
    HostUser { boot_ns: u64 },
    /// In the host kernel (KVM_RUN's own work, in-kernel exits): the guest
    /// RIP at that moment is not known to the VMM.
    HostKernel { boot_ns: u64 },
}

impl Drop for HostTimer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `open_for_current_thread`.
        // The consumer still holds pointers into it but is never used again:
        // it is dropped right after this, with no access in its Drop.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}
