//! perfvisor devices.

pub mod perf_ring;
pub mod rate_limited;
