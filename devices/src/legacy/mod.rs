//! The small PC devices a Linux guest expects: 16550 serial, i8042 (reset only),
//! CMOS RTC, and perfvisor's debug-exit and guest-event ports.

mod cmos;
mod debug_exit;
mod guest_events;
mod i8042;
mod serial;

pub use cmos::Cmos;
pub use debug_exit::DebugExit;
pub use guest_events::{GuestEvent, GuestEvents, GUEST_EVENTS_MAGIC};
pub use i8042::I8042;
pub use serial::{EventFdTrigger, LineTap, SerialDevice};

/// I/O port of the first serial port (COM1); it raises IRQ 4.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's legacy interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The i8042 controller's ports 0x60-0x64 (the reset command goes to 0x64).
pub const I8042_PORT: u64 = 0x60;
/// The CMOS index/data port pair.
pub const CMOS_PORT: u64 = 0x70;
/// perfvisor's debug-exit port: a one-byte write ends the VM with that status.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// perfvisor's guest-event port: the guest kernel's panic, power-off, halt
/// and restart notifiers write one byte each (`GuestEvents`).
pub const GUEST_EVENTS_PORT: u64 = 0xf5;
