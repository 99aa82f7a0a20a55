//! Can this host's KVM run Linux user space? A tiny guest answers it.
//!
//! The probe is a [payload](crate::payload) that starts in 64-bit user mode
//! (CPL3) and executes `SYSCALL`. The `LSTAR` target reads its own CS and
//! writes it to the debug-exit port. A capable KVM reports a CS with CPL 0.
//! Failure modes it tells apart: SYSCALL that stays in user mode (seen on
//! page-table based nested KVMs such as kvm_pvm, which loads CS=0x33), a
//! triple fault, an emulation failure, or no answer in time.

use std::time::{Duration, Instant};

use crate::end::VmOutcome;
use crate::payload::PayloadVm;
use crate::vm::VmError;

/// User: `mov eax, 0x5a; syscall; jmp $`.
const USER: &[u8] = &[0xb8, 0x5a, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xfe];
/// LSTAR: `mov eax, cs; out 0xf4, al; jmp $`.
const KERNEL: &[u8] = &[0x8c, 0xc8, 0xe6, 0xf4, 0xeb, 0xfe];

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// True when user space can make system calls into guest kernel mode.
    pub capable: bool,
    /// What happened, for the user.
    pub detail: String,
    /// How long the probe guest ran.
    pub elapsed: Duration,
}

/// Run the probe; `timeout` bounds the guest's run time.
pub fn probe(timeout: Duration) -> Result<ProbeResult, VmError> {
    let mut vm = PayloadVm::new(USER, KERNEL)?;
    let start = Instant::now();
    vm.start()?;
    let outcome = vm.wait(timeout);
    let elapsed = start.elapsed();
    let (capable, detail) = match outcome {
        // The LSTAR code reports its CS selector; the CPL is its low two bits.
        VmOutcome::Status(cs) if cs & 3 == 0 => (true, format!("SYSCALL from user mode entered kernel mode (CS=0x{cs:x})")),
        VmOutcome::Status(cs) => (
            false,
            format!("SYSCALL from user mode stayed in user mode (CS=0x{cs:x}, CPL{} at the LSTAR target)", cs & 3),
        ),
        VmOutcome::TripleFault { rip, .. } => (false, format!("the probe guest triple-faulted at RIP 0x{rip:x} after SYSCALL")),
        VmOutcome::Timeout(t) => (false, format!("the probe guest did not answer within {t:?}")),
        VmOutcome::Error(e) => (false, e),
        other => (false, format!("unexpected probe outcome {other:?}")),
    };
    Ok(ProbeResult {
        capable,
        detail,
        elapsed,
    })
}
