//! perfvisor's emulated devices: the bus, the legacy devices and pvpmu.
//! The perf ring it writes is the `perf-ring` crate; pvpmu's guest
//! interface is `pvpmu-abi`.
//!
//! Nothing here depends on KVM: interrupts are `EventFd`s (registered as irqfds
//! by the VMM), and devices sit on a [`bus::Bus`]. That keeps every device
//! testable at full speed on any machine.

pub mod bus;
pub mod legacy;
pub mod pvpmu;
