//! The paravirtual PMU device (pvpmu), see docs/pvpmu.md.
//!
//! - [`Pvpmu`]: the host device: MMIO registers and commands, validation of
//!   everything the guest hands over, and the sample and AUX writers the
//!   VMM's sampler calls on each vCPU's thread.
//! - [`state`]: reading and writing the shared state page.
//! - [`regs`], [`trace`]: the register map and the AUX trace format, which
//!   live in the `pvpmu-abi` crate with the state page's layout (shared
//!   with the guest tools, checked against the driver's header).

mod device;
pub mod state;

pub use pvpmu_abi::{regs, trace};

pub use device::{
    CounterSnapshot, HostSample, Pvpmu, PvpmuConfig, PvpmuMmio, SampleResult, TraceExit,
    MAX_CALLCHAIN, SAMPLE_TYPES,
};
