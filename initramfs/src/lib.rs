//! Host files into a Linux initramfs: a streaming `newc` cpio writer
//! ([`CpioWriter`]), the shared libraries and loader a dynamic executable
//! needs, found as the dynamic loader finds them ([`library_closure`]), and
//! [`Packer`], which adds host
//! files, directory trees and executables (with their libraries and
//! loader) to an archive the way a guest root needs them.
//!
//! The L1 sandbox builds its root with it, and `perfvisor run --include`
//! builds the archive it appends to the guest's initramfs.

mod elf_deps;
/// `ldd`'s view, the tests' reference for [`library_closure`].
#[cfg(test)]
mod ldd;
mod newc;
mod tree;

use std::io;
use std::path::PathBuf;

pub use elf_deps::library_closure;
pub use newc::CpioWriter;
pub use tree::{PackStats, Packer};

/// What can go wrong putting host files into an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    Libraries { path: PathBuf, msg: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{path}: symbolic links nest deeper than {limit} levels")]
    SymlinkLoop { path: PathBuf, limit: u32 },
    #[error("the files to add come to more than {limit} bytes (at {path}); include less, or give the guest more memory with --memory")]
    TooLarge { limit: u64, path: PathBuf },
}

/// A `map_err` helper: an I/O error with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
