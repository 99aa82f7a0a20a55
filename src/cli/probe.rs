//! `perfvisor probe`: can this host's /dev/kvm run guest user space? A
//! verdict on stdout (exit 0 capable, 1 not); no KVM at all is a verdict too.

use std::process::ExitCode;
use std::time::Duration;

use vmm::probe::probe;

use crate::error::CliError;
use crate::launch::no_kvm_reason;

/// Probe and print the verdict.
pub(crate) fn probe_cmd() -> Result<ExitCode, CliError> {
    match probe(Duration::from_secs(5)) {
        Ok(p) => {
            println!(
                "{}: {} ({} ms)",
                if p.capable { "capable" } else { "not capable" },
                p.detail,
                p.elapsed.as_millis()
            );
            Ok(ExitCode::from(if p.capable { 0 } else { 1 }))
        }
        // No KVM at all is a verdict too (the sandbox needs none).
        Err(e) => match no_kvm_reason(&e) {
            Some(why) => {
                println!("not capable: {why} (0 ms)");
                Ok(ExitCode::from(1))
            }
            None => Err(e.into()),
        },
    }
}
