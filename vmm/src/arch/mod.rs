//! x86_64 specifics: the guest memory layout, long-mode entry state, CPUID,
//! MSRs, the MP table and the Linux zero page.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod zero_page;
