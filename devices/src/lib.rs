//! perfvisor's emulated devices.
//!
//! Nothing here depends on KVM: interrupts are `EventFd`s (registered as irqfds
//! by the VMM), and devices sit on a [`bus::Bus`]. That keeps every device
//! testable at full speed on any machine.

pub mod bus;
pub mod legacy;
