//! perfvisor's emulated devices and the host-side perf ring producer.
//!
//! Nothing here depends on KVM: interrupts are `EventFd`s (registered as irqfds
//! by the VMM), and devices sit on a [`bus::Bus`]. That keeps every device
//! testable at full speed on any machine.

pub mod bus;
pub mod legacy;
pub mod perf_ring;
pub mod pvpmu;
pub mod rate_limited;
