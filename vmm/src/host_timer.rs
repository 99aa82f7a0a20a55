//! The host-timer sampling backend: a software `cpu-clock` perf event with
//! `exclude_host` on a vCPU thread. The host kernel's hrtimer fires while
//! the thread runs the guest and records the guest's IP and mode (misc
//! GUEST_KERNEL / GUEST_USER) without an exit to user space; the vCPU thread
//! drains the event's ring when it is kicked.
//!
//! Rate. The kernel drops every tick that lands while the thread is in host
//! mode (exclude_host), and under nested KVM a vCPU thread spends a tenth
//! of its time or more in exits; a preempted thread takes no ticks at all,
//! although the guest's clock, and a guest event's running time, go on.
//! So with the period equal to the wanted interval the guest gets fewer
//! samples than it asked for. [`HostTimer::retune`] does what the kernel's
//! frequency mode does (perf_adjust_period): it measures the rate that
//! reached the guest against the time the thread was running or waiting to
//! run (from /proc/thread-self/schedstat, so a vCPU blocked in HLT does not
//! count) and shortens the period to make up for it, never below 0.8 of the
//! wanted interval. Each sample's PERIOD is the time since the previous one,
//! so the weights stay right.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use devices::perf_ring::abi::{misc, record, sample};
use devices::perf_ring::attr::{
    flag, PerfEventAttr, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_SOFTWARE,
};
use devices::perf_ring::{Consumer, ReadMode, RingPages};

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Data pages of the host ring (32 KiB: 10 ms at 4 kHz is 40 records).
const DATA_PAGES: usize = 8;
const PAGE: usize = 4096;
/// `_IOW('$', 4, u64)`: set a sampling event's period.
const PERF_EVENT_IOC_PERIOD: libc::c_ulong = 0x4008_2404;
/// Retune over at least this much of the thread's run + wait time.
const RETUNE_WINDOW_NS: u64 = 100_000_000;
/// The shortest period, as a share of the wanted interval: at most 1.25x
/// the nominal tick rate, whatever the measurements say. Every extra tick
/// costs the guest what a tick costs (under nested KVM a nested exit), so
/// the correction is bounded: enough for the 10-15% of ticks a busy nested
/// vCPU loses at 1 kHz; at 4 kHz in the sandbox, where it loses more, a
/// cap of 0.5 had doubled the overhead (README, "Sampling overhead").
const MIN_PERIOD_SHARE: f64 = 0.8;

/// One vCPU thread's host timer.
pub struct HostTimer {
    consumer: Consumer<RingPages>,
    map: NonNull<libc::c_void>,
    map_len: usize,
    fd: OwnedFd,
    tune: Tuning,
}

/// The period control of [`HostTimer::retune`].
struct Tuning {
    /// This thread's /proc/thread-self/schedstat (None: no retuning).
    schedstat: Option<File>,
    /// The wanted interval the period is tuned for, ns.
    wanted: u64,
    /// The period in force, ns.
    period: u64,
    /// Guest samples drained since the window started.
    samples: u64,
    /// Run + wait ns at the window's start.
    since: Option<u64>,
}

impl Tuning {
    /// Run time plus run-queue wait time of the thread, ns.
    fn busy_ns(&self) -> Option<u64> {
        let mut buf = [0u8; 96];
        let n = self.schedstat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        let run = it.next()??;
        let wait = it.next()??;
        Some(run.saturating_add(wait))
    }
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
            sample_type: sample::IP | sample::TIME,
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
        let period = attr.sample_period_or_freq;
        Ok(HostTimer {
            consumer: Consumer::new(pages, ReadMode::Forward),
            map,
            map_len,
            fd,
            tune: Tuning {
                schedstat: File::open("/proc/thread-self/schedstat").ok(),
                wanted: period,
                period,
                samples: 0,
                since: None,
            },
        })
    }

    /// The period in force, ns.
    pub fn period_ns(&self) -> u64 {
        self.tune.period
    }

    /// Keep the rate of guest samples at one per `wanted_ns` of the time
    /// this thread ran or waited to run (see the module docs); call on the
    /// event's thread after [`HostTimer::drain`]. `None`: no guest event
    /// wants samples now (the measurement restarts).
    pub fn retune(&mut self, wanted_ns: Option<u64>) {
        let t = &mut self.tune;
        let Some(wanted) = wanted_ns.filter(|&w| w > 0) else {
            t.since = None;
            t.samples = 0;
            return;
        };
        let mut period = t.period;
        if wanted != t.wanted {
            t.wanted = wanted;
            period = wanted;
            t.since = None;
        }
        let Some(now) = t.busy_ns() else {
            return self.set_period(period);
        };
        match t.since {
            None => {
                t.since = Some(now);
                t.samples = 0;
            }
            Some(since) if now.saturating_sub(since) >= RETUNE_WINDOW_NS => {
                period = next_period(period, wanted, t.samples, now - since);
                t.since = Some(now);
                t.samples = 0;
            }
            Some(_) => {}
        }
        self.set_period(period);
    }

    fn set_period(&mut self, period: u64) {
        let old = self.tune.period;
        // Small changes are not worth an ioctl.
        if period == old || period.abs_diff(old) * 100 < old {
            return;
        }
        let mut p = period;
        // SAFETY: PERF_EVENT_IOC_PERIOD reads one u64 from the pointer; the
        // fd is this value's own perf event.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                PERF_EVENT_IOC_PERIOD,
                &mut p as *mut u64,
            )
        };
        if r == 0 {
            self.tune.period = period;
        } else {
            log::debug!(
                "host timer: PERF_EVENT_IOC_PERIOD {period}: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Hand every guest sample since the last drain to `f(ip, user, boottime_ns)`.
    pub fn drain(&mut self, mut f: impl FnMut(u64, bool, u64)) {
        let samples = &mut self.tune.samples;
        let _ = self.consumer.read_batch(None, |_, rec| {
            if rec.len() < 24 {
                return;
            }
            let ty = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let cpumode = u16::from_le_bytes([rec[4], rec[5]]) & misc::CPUMODE_MASK;
            if ty != record::SAMPLE {
                return;
            }
            if !matches!(cpumode, misc::GUEST_USER | misc::GUEST_KERNEL) {
                return;
            }
            let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap_or([0; 8]));
            let ip = word(8);
            // User or kernel by the address (x86-64 kernels live in the
            // upper half): the host's GUEST_USER/GUEST_KERNEL comes from the
            // CPL KVM reports, which nested SVM under TCG gets wrong.
            let user = ip >> 63 == 0;
            *samples += 1;
            f(ip, user, word(16));
        });
    }
}

/// The period after a window of `busy_ns` in which `samples` of the ticks
/// at `period` reached the guest: the one at which they would have come
/// once per `wanted` ns, halfway there (smoothing), within
/// [`MIN_PERIOD_SHARE`] x `wanted` ..= `wanted`.
fn next_period(period: u64, wanted: u64, samples: u64, busy_ns: u64) -> u64 {
    // Share of the ticks that reached the guest.
    let reached = (samples as f64 * period as f64 / busy_ns.max(1) as f64).clamp(0.05, 1.0);
    let target = wanted as f64 * reached;
    let smoothed = 0.5 * period as f64 + 0.5 * target;
    smoothed.clamp(wanted as f64 * MIN_PERIOD_SHARE, wanted as f64) as u64
}

impl Drop for HostTimer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `open_for_current_thread`.
        // The consumer still holds pointers into it but is never used again:
        // it is dropped right after this, with no access in its Drop.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn converges_to_make_up_for_lost_ticks() {
        // 10% of the busy time in exits: 90% of the ticks reach the guest.
        let mut period = MS;
        for _ in 0..20 {
            let busy = 100 * MS;
            let samples = (busy as f64 / period as f64 * 0.9) as u64;
            period = next_period(period, MS, samples, busy);
        }
        let rate = 0.9 / period as f64 * 1e9;
        assert!((990.0..=1010.0).contains(&rate), "{rate} samples/s");
    }

    #[test]
    fn bounded_between_the_cap_and_the_wanted_interval() {
        // Nothing reached the guest: held at 0.8 of the interval.
        assert_eq!(next_period(MS, MS, 0, 100 * MS), 800_000);
        let mut p = MS;
        for _ in 0..10 {
            p = next_period(p, MS, 0, 100 * MS);
        }
        assert_eq!(p, 800_000);
        // Every tick reached it, or more (clock skew): back to the interval.
        assert_eq!(next_period(800_000, MS, 1000, 100 * MS), 900_000);
        assert_eq!(next_period(MS, MS, 500, 100 * MS), MS);
        // A zero-length window does not divide by zero.
        assert_eq!(next_period(MS, MS, 5, 0), MS);
    }
}
