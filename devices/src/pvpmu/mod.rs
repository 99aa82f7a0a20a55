//! The paravirtual PMU device (pvpmu), see docs/pvpmu.md.
//!
//! - [`Pvpmu`]: the host device: MMIO registers and commands, validation of
//!   everything the guest hands over, and the sample and AUX writers the
//!   VMM's sampler calls on each vCPU's thread.
//! - [`regs`], [`state`]: the register map and the shared state page.
//! - [`trace`]: the AUX trace format (version 1) codec, shared by the host
//!   device and the guest tools.

mod device;
pub mod regs;
pub mod state;
pub mod trace;

pub use device::{
    CounterSnapshot, HostSample, Pvpmu, PvpmuConfig, PvpmuMmio, SampleResult, TraceExit,
    MAX_CALLCHAIN, SAMPLE_TYPES,
};
