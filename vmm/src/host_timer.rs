//! The host-timer sampling backend: a software `cpu-clock` perf event with
//! `exclude_host` on a vCPU thread. The host kernel's hrtimer fires while
//! the thread runs the guest and records the guest's IP and mode (misc
//! GUEST_KERNEL / GUEST_USER) without an exit to user space; the vCPU thread
//! drains the event's ring when it is kicked.

use std::io;
use std::os::fd::OwnedFd;

use crate::introspect::is_user_address;
use perf_abi::attr::{
    flag, PerfEventAttr, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_SOFTWARE,
};
use perf_abi::sys::{perf_event_open, Mapping};
use perf_abi::{misc, sample};
use perf_ring::{decode, Body, Consumer, ReadMode, RingPages, SampleFormat};

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
    /// Reads the ring in `_map`; declared first so it drops first.
    consumer: Consumer<RingPages>,
    _map: Mapping,
    _fd: OwnedFd,
}

// SAFETY: the consumer's pages point into `_map`, which this value owns
// (Mapping is Send); moving the value to another thread moves both.
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
        let fd = perf_event_open(&attr, 0, -1)?;
        let map = Mapping::new(&fd, (1 + DATA_PAGES) * PAGE, 0)?;
        // SAFETY: the mapping is (1 + DATA_PAGES) pages and lives as long
        // as `_map`, which drops after `consumer` (and its RingPages):
        // fields drop in declaration order.
        let pages = unsafe { RingPages::from_contiguous(map.ptr(), PAGE, DATA_PAGES, None) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HostTimer {
            consumer: Consumer::new(pages, ReadMode::Forward),
            _map: map,
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

/// A vCPU thread's host timer, opened at its first use: the event must be
/// opened on the vCPU thread itself, which does not exist yet when hooks
/// are built. A failure to open is logged once and remembered, and the
/// caller samples with kicks instead.
pub struct LazyHostTimer {
    owner: &'static str,
    vcpu: usize,
    freq: u32,
    state: Lazy,
}

enum Lazy {
    Unopened,
    Open(HostTimer),
    Failed,
}

impl LazyHostTimer {
    /// For vCPU `vcpu` at `freq` Hz; `owner` prefixes the log line.
    pub fn new(owner: &'static str, vcpu: usize, freq: u32) -> Self {
        LazyHostTimer {
            owner,
            vcpu,
            freq,
            state: Lazy::Unopened,
        }
    }

    /// The timer, opening it for the calling thread the first time.
    pub fn get_or_open(&mut self) -> Option<&mut HostTimer> {
        if matches!(self.state, Lazy::Unopened) {
            self.state = match HostTimer::open_for_current_thread(self.freq) {
                Ok(t) => Lazy::Open(t),
                Err(e) => {
                    log::warn!(
                        "{}: vCPU {}: cannot open the host cpu-clock event ({e}); sampling with kicks",
                        self.owner,
                        self.vcpu
                    );
                    Lazy::Failed
                }
            };
        }
        self.get()
    }

    /// The timer if it is open (never opens it).
    pub fn get(&mut self) -> Option<&mut HostTimer> {
        match &mut self.state {
            Lazy::Open(t) => Some(t),
            Lazy::Unopened | Lazy::Failed => None,
        }
    }

    /// Whether the timer is open.
    pub fn is_open(&self) -> bool {
        matches!(self.state, Lazy::Open(_))
    }
}
