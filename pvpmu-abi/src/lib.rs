//! The pvpmu device's guest interface (docs/pvpmu.md), written once for
//! the host device (`devices::pvpmu`) and the static guest tools:
//!
//! - [`regs`]: the MMIO register map, commands and status codes;
//! - [`state`]: the layout of the per-vCPU shared state page;
//! - [`trace`]: the AUX trace format (version 1) codec.
//!
//! The guest kernel's side is `guest-image/include/pvpmu_if.h`;
//! `tests/header.rs` compiles that header against every value here, so
//! the two cannot drift apart. A leaf crate: it depends on no
//! other perfvisor crate.

pub mod regs;
pub mod state;
pub mod trace;
