//! The paravirtual PMU device (pvpmu), see docs/pvpmu.md.
//!
//! - [`trace`]: the AUX trace format (version 1) codec, shared by the host
//!   device and the guest tools.

pub mod trace;
