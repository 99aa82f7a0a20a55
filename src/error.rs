//! The command line's errors: each one line for the user, saying what to
//! do, and the process exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;

use crate::include::RESERVED;

#[derive(Debug, Error)]
pub(crate) enum CliError {
    #[error("kernel image {0} not found: pass --kernel PATH, or build the default guest image with scripts/build-guest-image.sh")]
    KernelMissing(PathBuf),
    #[error("initrd {0} not found")]
    InitrdMissing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("a guest command needs an initramfs whose /init runs it: {0} names no kernel release perfvisor can read, so pass --initrd")]
    NoInitrd(PathBuf),
    #[error("a guest command needs an initramfs whose /init runs it, and there is none for Linux {0} yet: build it with scripts/build-guest-image.sh --for-kernel {0}, or pass --initrd")]
    NoImageForKernel(String),
    #[error("--include {0}: no such file or directory")]
    IncludeMissing(PathBuf),
    #[error("--include {0}:{1}: {RESERVED} is perfvisor's own directory in the guest; choose another guest path")]
    IncludeReserved(PathBuf, String),
    #[error("--include {second}:{second_guest} clashes with --include {first}:{first_guest} (the same or a nested guest path); give each its own guest path")]
    IncludeClash {
        first: PathBuf,
        first_guest: String,
        second: PathBuf,
        second_guest: String,
    },
    #[error("--include: {0}")]
    Include(#[from] initramfs::Error),
    #[error(transparent)]
    Artefacts(#[from] artefacts::Error),
    #[error(transparent)]
    Vm(#[from] vmm::VmError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    #[error("recording: {0}")]
    Record(String),
    #[error("installing the SIGINT/SIGTERM handler: {0}")]
    Signals(std::io::Error),
}

/// perfvisor's exit status for a guest's (or a run's) status `code`.
pub(crate) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
