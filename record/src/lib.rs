//! `record`: turns guest samples taken on the host (a vCPU's instruction
//! pointer and frame-pointer callchain, read from outside the guest) into
//!
//! 1. a perf.data that the host's `perf report` / `perf script` (Linux 6.1)
//!    read with no options and no warnings, the samples attributed to a guest
//!    machine and resolved to guest kernel and guest user symbols
//!    ([`PerfDataWriter`]);
//! 2. folded stacks, Brendan Gregg's format ([`Folded`]);
//! 3. an SVG flame graph ([`flamegraph()`], through `inferno`);
//!
//! plus symbolization of guest addresses ([`Symbolizer`]), and the raw
//! sample stream ([`raw_stream`]) that carries samples out of the L1
//! sandbox to the perfvisor that writes the outputs. docs/record.md
//! explains the perf.data layout and which perf commands read it.
//!
//! ```no_run
//! use record::{Folded, GuestSample, PerfDataWriter, RecordMeta, Symbolizer};
//! # fn main() -> record::Result<()> {
//! let meta = RecordMeta {
//!     guest_system_map: Some("build/guest-image/System.map".into()),
//!     ..RecordMeta::new(2, 1000)
//! };
//! let symbolizer = Symbolizer::from_meta(&meta)?;
//! let mut perf = PerfDataWriter::create("perf.data", &meta)?;
//! let mut folded = Folded::new();
//! let sample = GuestSample {
//!     cpu: 0, vcpu_tid: 4242, guest_pid: Some(1), guest_tid: Some(1), comm: Some("init"), start_code: None,
//!     time_ns: 1_000_000, ip: 0xffff_ffff_811e_7570, user: false, callchain: &[], period: 1_000_000,
//! };
//! perf.sample(&sample)?;
//! folded.add(&sample, &symbolizer);
//! let summary = perf.finish()?;
//! println!("{}", summary.report_hint);
//! folded.write("perf.folded")?;
//! record::flamegraph("perf.folded", "perf.svg", "guest profile")?;
//! # Ok(()) }
//! ```

mod error;
mod flamegraph;
mod folded;
mod perf_data;
pub mod raw_stream;
mod symbols;
mod sysinfo;

use std::path::PathBuf;

pub use error::{RecordError, Result};
pub use flamegraph::{flamegraph, FlameInput};
pub use folded::{Folded, KERNEL_SUFFIX, MAX_STACKS, OTHER, UNKNOWN};
pub use perf_data::{
    Layout, PerfDataWriter, WriteSummary, MAX_HOST_THREADS, MAX_TASKS, PERF_MAX_FRAMES,
};
pub use symbols::{is_kernel_address, Symbol, Symbolizer};

/// A guest executable: its host copy (unstripped, fixed-address or PIE; the one
/// in the guest image) and the guest process name (comm) that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBinary {
    pub path: PathBuf,
    /// The comm of tasks that run it (cut to 15 bytes like the guest's); None:
    /// any task that no named binary claims.
    pub name: Option<String>,
}

/// What a recording was: written into the perf.data header, and where the
/// guest's symbols come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// Number of vCPUs; samples' `cpu` is below it.
    pub nr_cpus: u32,
    /// Sampling frequency (Hz), for the event attribute.
    pub freq: u32,
    /// The guest kernel's release (uname -r in the guest).
    pub kernel_release: String,
    /// The guest kernel's unstripped vmlinux (used when no System.map).
    pub guest_vmlinux: Option<PathBuf>,
    /// The guest kernel's System.map, or a copy of the guest's /proc/kallsyms
    /// (needed if the guest kernel relocates itself, KASLR).
    pub guest_system_map: Option<PathBuf>,
    /// Kallsyms text recovered from the guest kernel's image (its compressed
    /// kallsyms tables): the last kernel symbol source, for a kernel that
    /// ships neither a System.map nor an unstripped vmlinux.
    pub guest_image_kallsyms: Option<PathBuf>,
    /// Guest executables to resolve guest user space with.
    pub guest_binaries: Vec<GuestBinary>,
    /// The command line that recorded (perf's CMDLINE header).
    pub cmdline: Vec<String>,
    /// The host's name.
    pub hostname: String,
    /// Samples carry callchains.
    pub callchain: bool,
    /// The sampling backend's name (shown in the header).
    pub backend: String,
    /// The VMM's process id: perf names the guest machine after it.
    pub vmm_pid: u32,
    /// Host thread ids of the vCPU threads, by vCPU index, if known when the
    /// recording starts (perf's id index ties each vCPU to its thread).
    pub vcpu_tids: Vec<u32>,
}

impl RecordMeta {
    /// Defaults for `nr_cpus` vCPUs sampled at `freq` Hz in this process: the
    /// host's name, this process's id and command line, callchains on.
    pub fn new(nr_cpus: u32, freq: u32) -> RecordMeta {
        RecordMeta {
            nr_cpus,
            freq,
            kernel_release: String::new(),
            guest_vmlinux: None,
            guest_system_map: None,
            guest_image_kallsyms: None,
            guest_binaries: Vec::new(),
            cmdline: std::env::args().collect(),
            hostname: sysinfo::hostname(),
            callchain: true,
            backend: String::from("perfvisor"),
            vmm_pid: std::process::id(),
            vcpu_tids: Vec::new(),
        }
    }
}

/// One sample of a guest vCPU, taken on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSample<'a> {
    /// vCPU index (below `RecordMeta::nr_cpus`).
    pub cpu: u32,
    /// Host thread id of the vCPU thread.
    pub vcpu_tid: u32,
    /// The guest task's process id, if the sampler identified it.
    pub guest_pid: Option<u32>,
    /// The guest task's thread id, if identified (defaults to `guest_pid`).
    pub guest_tid: Option<u32>,
    /// The guest task's comm, if identified.
    pub comm: Option<&'a str>,
    /// The guest process's `mm->start_code` (where its executable's code
    /// was loaded), if read: places a PIE's symbols.
    pub start_code: Option<u64>,
    /// Host time of the sample, nanoseconds (any monotonic clock).
    pub time_ns: u64,
    /// Guest virtual instruction pointer.
    pub ip: u64,
    /// The vCPU was in guest user mode (CPL 3).
    pub user: bool,
    /// Return addresses after `ip`, innermost first, guest virtual; kernel
    /// and user frames may both appear (told apart by address).
    pub callchain: &'a [u64],
    /// Sample period (nanoseconds of vCPU time for a timer).
    pub period: u64,
}
