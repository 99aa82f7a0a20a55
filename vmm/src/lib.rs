//! perfvisor's VMM: VM and vCPU setup, the boot path, the event loop, and
//! the vCPU kick that samplers build on.
//!
//! The boot path, in order (see [`vm::Vm::new`]): open /dev/kvm and check its
//! capabilities; allocate guest RAM around the 32-bit MMIO hole; create the
//! in-kernel irqchip and PIT; load the kernel (ELF or bzImage), initrd and
//! command line and write the zero page; write the GDT, identity page tables
//! and MP table; add the legacy devices; configure each vCPU (CPUID, MSRs,
//! FPU, LAPIC, and long-mode registers on the boot vCPU). [`vm::Vm::run`]
//! starts one thread per vCPU and runs the event loop until the guest ends.

pub mod arch;
pub mod boot;
pub mod btf_layout;
pub mod budget;
pub mod console;
pub mod console_queue;
pub mod dispatch;
pub mod end;
pub mod exit_counts;
pub mod host_timer;
pub mod introspect;
pub mod kallsyms;
pub mod kernel_image;
pub mod kvm_stats;
pub mod memory;
pub mod orc;
pub mod payload;
pub mod probe;
pub mod recorder;
pub mod sampler;
pub mod term_filter;
pub mod vcpu;
pub mod vm;

pub use end::VmOutcome;

/// Stack size of perfvisor's own threads. Small on purpose: below 2 MiB a
/// stack can never be backed by a transparent huge page, which on hosts with
/// THP "always" would otherwise add 2 MiB of RSS per thread.
pub const THREAD_STACK: usize = 256 << 10;
pub use vm::{Vm, VmConfig, VmError};
