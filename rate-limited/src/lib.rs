//! Rate-limited logging for paths a guest can trigger at will.
//!
//! A guest that keeps writing nonsense must not be able to flood the host's
//! log. [`RateLimiter`] lets through `burst` messages per `period`; the
//! first message after a quiet spell reports how many were suppressed.
//! It is a plain value (no global state, no locking): keep one per
//! device/ring and call it from the thread that owns that object.

use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;

/// Token bucket deciding whether a log line may be emitted now.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl Default for RateLimiter {
    /// Ten lines per five seconds.
    fn default() -> Self {
        RateLimiter::new(Duration::from_secs(5), 10)
    }
}

impl RateLimiter {
    /// At most `burst` lines in every `period`.
    pub fn new(period: Duration, burst: u32) -> Self {
        RateLimiter {
            period,
            burst,
            window_start: None,
            emitted: 0,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed)` if a line may be logged now, where
    /// `suppressed` counts the lines dropped since the last one that was
    /// allowed; `None` if this one must be dropped.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`RateLimiter::check`] with an explicit clock, for tests.
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.period,
        };
        if new_window {
            self.window_start = Some(now);
            self.emitted = 0;
        }
        if self.emitted < self.burst {
            self.emitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Lines dropped since the last allowed one.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Logs with `log::warn!` through a [`RateLimiter`], appending the number of
/// suppressed lines when there were any.
///
/// ```
/// # use rate_limited::RateLimiter;
/// let mut limiter = RateLimiter::default();
/// rate_limited::warn_rate_limited!(limiter, "guest wrote a bad tail {:#x}", 3);
/// ```
#[macro_export]
macro_rules! warn_rate_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed > 0 {
                $crate::__log::warn!("{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                $crate::__log::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress_then_report() {
        let mut rl = RateLimiter::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), None);
        assert_eq!(rl.check_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(rl.suppressed(), 2);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(rl.suppressed(), 0);
    }
}
