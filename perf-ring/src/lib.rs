//! Host-side perf ring producer.
//!
//! Writes perf records into a ring that lives in guest memory, laid out
//! exactly like a Linux perf mmap buffer (control page, `2^n` data pages,
//! optional AUX area), with the protocol of kernel/events/ring_buffer.c,
//! while the guest reads it concurrently. No KVM dependency.
//!
//! - [`memory`]: the page layout, validated once ([`GuestRing`] for guest
//!   memory, [`RingPages::from_contiguous`] for a real perf mmap) and the
//!   [`RingMemory`] trait everything else is generic over.
//! - [`producer`] / [`aux`]: [`Producer`], the writer.
//! - [`records`] / [`decode`]: typed encoders and the decoder.
//! - [`consumer`] / [`checker`]: the tools/lib/perf reader and the
//!   invariant checker, reusable by a guest tool over a raw mapping.
//!
//! See docs/perf-ring.md for the protocol notes.

/// The perf uapi constants (the `perf-abi` crate).
pub use perf_abi as abi;
/// `struct perf_event_attr` (the `perf-abi` crate).
pub use perf_abi::attr;
pub mod aux;
pub mod checker;
pub mod consumer;
pub mod decode;
pub mod memory;
pub mod producer;
pub mod records;

pub use aux::{AuxHandle, AuxOutput, AuxRefused};
pub use checker::{Checker, CheckerConfig, Violation};
pub use consumer::{Batch, Consumer, ConsumerStats, ReadError, ReadMode};
pub use decode::{decode, Body, DecodeError, Header, ReadOwned, Record, SampleRecord};
pub use memory::{Area, CtrlField, GuestRing, GuestRingLayout, RingMemory, RingPages};
pub use producer::{Output, Producer, ProducerConfig, ProducerStats, SamplesOutput, Wakeup};
pub use records::{Event, ReadData, ReadValue, Sample, SampleFormat, SampleId};

/// Everything that can go wrong setting up or feeding a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Page size out of range.
    #[error("page size {0:#x} is not a power of two between 4 KiB and 64 KiB; pass the guest's page size")]
    PageSize(usize),
    /// Page count not a power of two or too large.
    #[error("the {area} area has {count} pages; it needs a power of two of them, at most {max} (AUX may also have none)")]
    PageCount {
        /// Which area.
        area: Area,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A guest-physical page address not aligned to the page size.
    #[error("{area} page {index} at guest address {gpa:#x} is not page aligned; pass page-aligned guest-physical addresses")]
    UnalignedPage {
        /// Which area.
        area: Area,
        /// Index in that area.
        index: usize,
        /// The address.
        gpa: u64,
    },
    /// A page outside guest memory, or straddling two regions.
    #[error("{area} page {index} at guest address {gpa:#x} is not inside one guest RAM region; pass pages of guest RAM")]
    PageNotInMemory {
        /// Which area.
        area: Area,
        /// Index.
        index: usize,
        /// The address.
        gpa: u64,
    },
    /// Two pages overlap.
    #[error("{second} page {second_index} at {addr:#x} overlaps {first} page {first_index}; every page must be distinct")]
    OverlappingPages {
        /// One area.
        first: Area,
        /// Its index.
        first_index: usize,
        /// The other.
        second: Area,
        /// Its index.
        second_index: usize,
        /// Address of the second.
        addr: u64,
    },
    /// A host pointer that is null or not 8-byte aligned.
    #[error(
        "{area} page {index} maps to host address {addr:#x}, which is null or not 8-byte aligned"
    )]
    HostPointer {
        /// Which area.
        area: Area,
        /// Index.
        index: usize,
        /// The pointer.
        addr: usize,
    },
    /// sample_type bits this module cannot lay out.
    #[error("sample_type bits {0:#x} are not supported; supported: IDENTIFIER IP TID TIME ADDR ID STREAM_ID CPU PERIOD READ CALLCHAIN RAW AUX")]
    UnsupportedSampleType(u64),
    /// read_format bits Linux 6.1 does not define.
    #[error("read_format bits {0:#x} are not defined by Linux 6.1")]
    UnsupportedReadFormat(u64),
    /// READ values not matching read_format.
    #[error("{given} READ values given; read_format {} needs {}", if *group { "with GROUP" } else { "without GROUP" }, if *group { "at least one" } else { "exactly one" })]
    ReadValues {
        /// How many were given.
        given: usize,
        /// Whether GROUP is set.
        group: bool,
    },
    /// Over the 16-bit header size.
    #[error("a record of {0} bytes exceeds header.size's 65535; shorten the callchain, raw or AUX payload")]
    RecordTooLarge(usize),
    /// The caller tried to write PERF_RECORD_LOST.
    #[error("PERF_RECORD_LOST is injected by the producer; do not write it yourself")]
    LostIsInjected,
    /// Bad AUX flags for `aux_flag`.
    #[error("AUX flags {0:#x} are not allowed; use TRUNCATED, PARTIAL, COLLISION or a PMU format type (OVERWRITE follows the mode)")]
    AuxFlags(u64),
    /// `aux_skip` after data was written.
    #[error("aux_skip must come before any aux_write in a session")]
    AuxSkipAfterWrite,
    /// `aux_skip` beyond the room.
    #[error("cannot skip {skip} AUX bytes with only {room} of room")]
    AuxSkipTooLarge {
        /// Requested.
        skip: u64,
        /// Available.
        room: u64,
    },
}
