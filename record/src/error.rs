//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing a recording or its views.
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create {path}: {source} (check that its directory exists and is writable)")]
    Create { path: PathBuf, source: io::Error },

    #[error("cannot write {path}: {source} (check free space on its file system)")]
    Write { path: PathBuf, source: io::Error },

    #[error("cannot read {what} {path}: {source} (check the path; build/guest-image/ is made by scripts/build-guest-image.sh)")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{path}:{line}: not a System.map or /proc/kallsyms line ({text:?}); pass the guest kernel's System.map (build/guest-image/System.map) or a copy of the guest's /proc/kallsyms")]
    BadSymbolMap {
        path: PathBuf,
        line: usize,
        text: String,
    },

    #[error(
        "{path} has no text symbols; pass the guest kernel's System.map or an unstripped vmlinux"
    )]
    NoSymbols { path: PathBuf },

    #[error("{path}: {reason}")]
    BadElf { path: PathBuf, reason: String },

    #[error("output {path} exists and is not a perf.data file or directory; remove it or choose another output path")]
    OutputExists { path: PathBuf },

    #[error("sample rejected: {0}")]
    InvalidSample(String),

    #[error("invalid recording metadata: {0}")]
    InvalidMeta(String),

    #[error("flame graph: {0}")]
    FlameGraph(String),
}

/// The crate's result type.
pub type Result<T, E = RecordError> = std::result::Result<T, E>;

impl RecordError {
    pub(crate) fn write(path: impl Into<PathBuf>, source: io::Error) -> Self {
        RecordError::Write {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn read(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RecordError::Read {
            what,
            path: path.into(),
            source,
        }
    }
}
