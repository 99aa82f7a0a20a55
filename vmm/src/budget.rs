//! Host-side limits on what sampling a guest costs the host, which the
//! guest cannot lift: a VM-wide sample budget, and a CPU cap for the
//! sampler thread.
//!
//! Without them the guest chose the cost: every vCPU with an active pvpmu
//! event at `--pmu-freq`, and a driver that never throttles
//! (docs/security.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far ahead of its rate the budget may run (a burst), as time.
const BURST: Duration = Duration::from_millis(100);

/// At most `per_sec` samples a second across the whole VM, with bursts of
/// [`BURST`] worth: a generic cell-rate limiter on one atomic, so vCPU
/// threads and the sampler thread share it without a lock.
#[derive(Debug)]
pub struct SampleBudget {
    per_sec: u32,
    interval_ns: u64,
    burst_ns: u64,
    /// Theoretical arrival time of the next sample, ns since `epoch`.
    tat: AtomicU64,
    skipped: AtomicU64,
    epoch: Instant,
}

impl SampleBudget {
    /// A budget of `per_sec` samples a second (at least 1).
    pub fn new(per_sec: u32) -> SampleBudget {
        let per_sec = per_sec.max(1);
        SampleBudget {
            per_sec,
            interval_ns: 1_000_000_000 / u64::from(per_sec),
            burst_ns: BURST.as_nanos() as u64,
            tat: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The budget, samples per second.
    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }

    /// Takes one sample from the budget now; false (and counted) when the
    /// VM has used it up.
    pub fn take(&self) -> bool {
        self.take_at(self.epoch.elapsed().as_nanos() as u64)
    }

    /// [`SampleBudget::take`] at `now_ns` since the budget's creation.
    pub fn take_at(&self, now_ns: u64) -> bool {
        // Relaxed is enough: the atomic orders nothing but itself.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            if start - now_ns > self.burst_ns {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval_ns),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => tat = now,
            }
        }
    }

    /// Samples refused so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Keeps the calling thread's CPU use at most `share` of one CPU, measured
/// over windows of [`CpuCap::WINDOW`].
#[derive(Debug)]
pub struct CpuCap {
    share: f64,
    window_start: Instant,
    cpu_start: Duration,
    throttled: Duration,
}

impl CpuCap {
    /// The measuring window.
    pub const WINDOW: Duration = Duration::from_millis(100);

    /// A cap of `share` (0..=1) of one CPU for the calling thread.
    pub fn new(share: f64) -> CpuCap {
        CpuCap {
            share: share.clamp(0.01, 1.0),
            window_start: Instant::now(),
            cpu_start: thread_cpu_time(),
            throttled: Duration::ZERO,
        }
    }

    /// At the end of a window: how long to sleep so that the window's CPU
    /// use is within the cap (None when it is, or the window is open).
    pub fn check(&mut self) -> Option<Duration> {
        let wall = self.window_start.elapsed();
        if wall < Self::WINDOW {
            return None;
        }
        let cpu = thread_cpu_time().saturating_sub(self.cpu_start);
        let sleep = Self::excess(self.share, wall, cpu);
        self.window_start = Instant::now() + sleep.unwrap_or_default();
        self.cpu_start = thread_cpu_time();
        if let Some(d) = sleep {
            self.throttled += d;
        }
        sleep
    }

    /// The sleep that brings `cpu` in `wall` down to `share`.
    fn excess(share: f64, wall: Duration, cpu: Duration) -> Option<Duration> {
        let allowed = wall.mul_f64(share);
        (cpu > allowed).then(|| (cpu - allowed).div_f64(share))
    }

    /// Time slept to keep within the cap so far.
    pub fn throttled(&self) -> Duration {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_whatever_the_demand() {
        let b = SampleBudget::new(2000);
        // Five times the budget for 3 s: a request every 100 µs.
        let taken = (0..30_000u64).filter(|i| b.take_at(i * 100_000)).count() as u64;
        // 2000/s for 3 s plus one burst (100 ms worth) and the first.
        assert!(taken <= 6000 + 200 + 1, "{taken}");
        assert!(taken >= 6000, "{taken}");
        assert_eq!(b.skipped(), 30_000 - taken);
    }

    #[test]
    fn under_the_budget_nothing_is_skipped() {
        let b = SampleBudget::new(2000);
        assert!((0..6000u64).all(|i| b.take_at(i * 1_000_000)));
        assert_eq!(b.skipped(), 0);
    }

    #[test]
    fn threads_share_one_budget() {
        let b = std::sync::Arc::new(SampleBudget::new(1000));
        let now = 5_000_000_000;
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.take_at(now)).count())
            })
            .map(|t| t.join().unwrap())
            .sum();
        // All at one instant: one burst's worth (100 ms at 1 kHz) and the first.
        assert_eq!(taken, 101);
    }

    #[test]
    fn the_cpu_cap_sleeps_off_the_excess() {
        let ms = Duration::from_millis;
        assert_eq!(CpuCap::excess(0.5, ms(100), ms(40)), None);
        assert_eq!(CpuCap::excess(0.5, ms(100), ms(80)), Some(ms(60)));
        assert_eq!(CpuCap::excess(0.25, ms(100), ms(100)), Some(ms(300)));
    }
}
