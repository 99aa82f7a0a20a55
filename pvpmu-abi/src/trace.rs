//! The pvpmu AUX trace format, version 1 (docs/pvpmu.md, "The AUX trace
//! format (version 1)").
//!
//! The host writes these records into the AUX pages of a pvpmu event; the
//! guest tool (`pvpmu-tool`) reads them back through a standard perf mmap.
//! Both sides use this module, so the format has exactly one
//! implementation.
//!
//! A stream is a sequence of records, each 8-byte aligned, all integers
//! little endian:
//!
//! ```text
//!   u16 type, u16 size (bytes, header included, a multiple of 8), u32 vcpu
//!   body
//! ```
//!
//! | type | record | body |
//! |---|---|---|
//! | 1 | HEADER | u32 version = 1, u32 reserved, u64 host ns at start |
//! | 2 | EXIT | u64 guest ns, u64 guest RIP, u64 port/GPA, u32 reason, u32 size, u64 host handling ns |
//! | 3 | STATS | u64 guest ns, u32 count, u32 reserved, `count` × (u64 id, u64 value) |
//! | 4 | STATS_NAMES | u32 count, u32 reserved, `count` NUL-terminated names back to back, zero padding to 8 |
//!
//! # Encoding (host side)
//!
//! [`encode_header`], [`encode_exit`], [`encode_stats`] and
//! [`encode_stats_names`] write one record into a caller's buffer and
//! return its length, or [`EncodeError::NoRoom`] (writing nothing) when it
//! does not fit. They never allocate. [`exit_len`], [`stats_len`] and
//! [`stats_names_len`] tell the size up front, so the device can keep to
//! the rule that a session holds whole records only.
//!
//! # Decoding (guest side)
//!
//! - [`decode`]: an iterator over the records of one byte slice.
//! - [`decode_record`]: one record of exactly `size` bytes.
//! - [`StreamDecoder`]: fed byte chunks as AUX data arrives (a record may
//!   straddle two chunks); calls back once per record or error.
//!
//! Decoding is total: any input yields records or [`DecodeError`]s, never a
//! panic, and never reads outside the input. Decoded records borrow the
//! input (no allocation). A record whose header is sane (size at least 8,
//! a multiple of 8) but whose body is wrong gives one error and decoding
//! goes on after it; a header that is not sane leaves no way to find the
//! next record, so decoding stops (the stream decoder drops everything
//! until [`StreamDecoder::reset`]).

use std::fmt;

/// The format version this module reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the record header (type, size, vcpu).
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest record: the biggest multiple of 8 that fits `u16 size`.
pub const MAX_RECORD_LEN: usize = 65528;
/// Length of a HEADER record.
pub const HEADER_RECORD_LEN: usize = 24;
/// Length of an EXIT record.
pub const EXIT_RECORD_LEN: usize = 48;
/// Bytes of a STATS record before its entries.
pub const STATS_FIXED_LEN: usize = 24;
/// Bytes of a STATS_NAMES record before its names.
pub const STATS_NAMES_FIXED_LEN: usize = 16;
/// Most entries one STATS record can carry.
pub const MAX_STATS: usize = (MAX_RECORD_LEN - STATS_FIXED_LEN) / 16;

/// Record type numbers.
pub mod record_type {
    /// HEADER.
    pub const HEADER: u16 = 1;
    /// EXIT.
    pub const EXIT: u16 = 2;
    /// STATS.
    pub const STATS: u16 = 3;
    /// STATS_NAMES.
    pub const STATS_NAMES: u16 = 4;
}

/// Why the guest left guest mode (EXIT `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ExitReason {
    /// Port I/O read.
    IoIn = 1,
    /// Port I/O write.
    IoOut = 2,
    /// MMIO read.
    MmioRead = 3,
    /// MMIO write.
    MmioWrite = 4,
    /// A kick (the host interrupted the vCPU).
    Kick = 5,
    /// Anything else.
    Other = 6,
}

impl ExitReason {
    /// Every reason, in numeric order.
    pub const ALL: [ExitReason; 6] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Kick,
        ExitReason::Other,
    ];

    /// The reason for a wire value.
    pub const fn from_u32(v: u32) -> Option<ExitReason> {
        Some(match v {
            1 => ExitReason::IoIn,
            2 => ExitReason::IoOut,
            3 => ExitReason::MmioRead,
            4 => ExitReason::MmioWrite,
            5 => ExitReason::Kick,
            6 => ExitReason::Other,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// Lower-case name, as used in `exits_<name>=N` (`io_in`, `io_out`,
    /// `mmio_read`, `mmio_write`, `kick`, `other`).
    pub const fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Kick => "kick",
            ExitReason::Other => "other",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An EXIT record's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Guest time (the guest's perf clock) in ns.
    pub guest_ns: u64,
    /// Guest RIP at the exit.
    pub rip: u64,
    /// I/O port or guest-physical address (0 when neither applies).
    pub addr: u64,
    /// Why.
    pub reason: ExitReason,
    /// Access size in bytes (0 when none).
    pub size: u32,
    /// Host ns spent handling the exit.
    pub host_ns: u64,
}

/// One STATS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// Index into the last STATS_NAMES record.
    pub id: u64,
    /// The value.
    pub value: u64,
}

/// The entries of a decoded STATS record (borrowed, validated).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stats<'a> {
    /// Guest time in ns.
    pub guest_ns: u64,
    raw: &'a [u8],
}

impl<'a> Stats<'a> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.raw.len() / 16
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<Stat> {
        let at = i.checked_mul(16)?;
        let e = self.raw.get(at..at.checked_add(16)?)?;
        Some(Stat {
            id: le64(e, 0),
            value: le64(e, 8),
        })
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = Stat> + 'a {
        self.raw.chunks_exact(16).map(|e| Stat {
            id: le64(e, 0),
            value: le64(e, 8),
        })
    }
}

impl fmt::Debug for Stats<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("guest_ns", &self.guest_ns)
            .field("entries", &self.iter().collect::<Vec<_>>())
            .finish()
    }
}

/// The names of a decoded STATS_NAMES record (borrowed, validated: exactly
/// `len()` non-empty UTF-8 names).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatsNames<'a> {
    count: u32,
    /// The names with their NULs, padding excluded.
    raw: &'a [u8],
}

impl<'a> StatsNames<'a> {
    /// Number of names.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// No names.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names in order (id 0 first).
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        // Validated at decode time: every piece is UTF-8, so the fallback
        // is never taken.
        self.raw
            .split(|b| *b == 0)
            .take(self.count as usize)
            .map(|n| std::str::from_utf8(n).unwrap_or(""))
    }

    /// Name `id`.
    pub fn get(&self, id: u64) -> Option<&'a str> {
        self.iter().nth(usize::try_from(id).ok()?)
    }
}

impl fmt::Debug for StatsNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A decoded record body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// HEADER (the version is always [`VERSION`]).
    Header {
        /// Host ns at the start of the trace.
        host_ns: u64,
    },
    /// EXIT.
    Exit(Exit),
    /// STATS.
    Stats(Stats<'a>),
    /// STATS_NAMES.
    StatsNames(StatsNames<'a>),
}

impl Record<'_> {
    /// The wire type.
    pub fn ty(&self) -> u16 {
        match self {
            Record::Header { .. } => record_type::HEADER,
            Record::Exit(_) => record_type::EXIT,
            Record::Stats(_) => record_type::STATS,
            Record::StatsNames(_) => record_type::STATS_NAMES,
        }
    }
}

/// One decoded record with its header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The vCPU the record is about.
    pub vcpu: u32,
    /// Bytes, header included.
    pub len: usize,
    /// The body.
    pub record: Record<'a>,
}

// ---------------------------------------------------------------------------
// Errors

/// Why a record could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The buffer is shorter than the record; nothing was written.
    #[error("a {needed}-byte trace record does not fit in {available} bytes")]
    NoRoom {
        /// Record length.
        needed: usize,
        /// Buffer length.
        available: usize,
    },
    /// The record would exceed [`MAX_RECORD_LEN`].
    #[error("a trace record of {len} bytes exceeds the 65528-byte limit; split the STATS or STATS_NAMES into several records")]
    TooLarge {
        /// Length it would have.
        len: usize,
    },
    /// A STATS_NAMES name that is empty or contains a NUL.
    #[error("STATS_NAMES name {index} is empty or contains a NUL byte")]
    BadName {
        /// Which.
        index: usize,
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `size` below 8 or not a multiple of 8: the stream cannot be followed
    /// past this point.
    #[error("trace record header at byte {offset}: type {ty}, size {size} (sizes are multiples of 8, at least 8); cannot resynchronise")]
    BadHeader {
        /// Byte offset in the input (stream decoder: in the whole stream).
        offset: u64,
        /// The type field.
        ty: u16,
        /// The size field.
        size: u16,
    },
    /// The input ends inside a record.
    #[error("trace input ends inside a record at byte {offset}: {have} of {need} bytes present")]
    Incomplete {
        /// Where the record starts.
        offset: u64,
        /// Bytes present.
        have: usize,
        /// Bytes needed (8 when even the header is missing).
        need: usize,
    },
    /// A type this version does not define (skipped: its size is sane).
    #[error("trace record at byte {offset} has unknown type {ty} ({size} bytes, skipped)")]
    UnknownType {
        /// Offset.
        offset: u64,
        /// Type.
        ty: u16,
        /// Size.
        size: u16,
    },
    /// A fixed-size record with the wrong size, or a counted record whose
    /// count does not match its size.
    #[error("trace record at byte {offset}: type {ty} with {detail}")]
    BadLength {
        /// Offset.
        offset: u64,
        /// Type.
        ty: u16,
        /// What does not match.
        detail: LengthDetail,
    },
    /// HEADER with a version other than 1.
    #[error("trace HEADER at byte {offset} says version {version}; this decoder reads version 1")]
    BadVersion {
        /// Offset.
        offset: u64,
        /// Version.
        version: u32,
    },
    /// A reserved field or padding byte that is not zero.
    #[error("trace record at byte {offset}: type {ty} has a nonzero reserved or padding byte at record offset {at}")]
    NonzeroReserved {
        /// Offset.
        offset: u64,
        /// Type.
        ty: u16,
        /// Offset of the byte inside the record.
        at: usize,
    },
    /// EXIT with a reason outside 1..=6.
    #[error("trace EXIT at byte {offset} has unknown reason {reason}")]
    BadReason {
        /// Offset.
        offset: u64,
        /// Reason.
        reason: u32,
    },
    /// STATS_NAMES whose names are missing, empty, not UTF-8 or not
    /// NUL-terminated.
    #[error("trace STATS_NAMES at byte {offset}: name {index} is missing, empty, unterminated or not UTF-8")]
    BadName {
        /// Offset.
        offset: u64,
        /// Which name.
        index: u32,
    },
}

impl DecodeError {
    /// Whether decoding can go on after this error (the record's size was
    /// sane, so the next record's position is known).
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self,
            DecodeError::BadHeader { .. } | DecodeError::Incomplete { .. }
        )
    }

    /// Byte offset of the offending record.
    pub fn offset(&self) -> u64 {
        match *self {
            DecodeError::BadHeader { offset, .. }
            | DecodeError::Incomplete { offset, .. }
            | DecodeError::UnknownType { offset, .. }
            | DecodeError::BadLength { offset, .. }
            | DecodeError::BadVersion { offset, .. }
            | DecodeError::NonzeroReserved { offset, .. }
            | DecodeError::BadReason { offset, .. }
            | DecodeError::BadName { offset, .. } => offset,
        }
    }
}

/// What is wrong with a record's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthDetail {
    /// `size` in the header.
    pub size: u16,
    /// The size the body asks for (`None`: the count cannot fit this
    /// record at all).
    pub expected: Option<usize>,
    /// The count field, for STATS and STATS_NAMES.
    pub count: Option<u32>,
}

impl fmt::Display for LengthDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "size {}", self.size)?;
        if let Some(c) = self.count {
            write!(f, " and count {c}")?;
        }
        match self.expected {
            Some(e) => write!(f, " (expected {e} bytes)"),
            None => write!(f, " (the count cannot fit)"),
        }
    }
}

// ---------------------------------------------------------------------------
// Little-endian helpers (bounds are checked by the callers; out-of-range reads
// give 0 instead of panicking).

fn le16(b: &[u8], at: usize) -> u16 {
    match b.get(at..).and_then(|s| s.first_chunk::<2>()) {
        Some(a) => u16::from_le_bytes(*a),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..).and_then(|s| s.first_chunk::<4>()) {
        Some(a) => u32::from_le_bytes(*a),
        None => 0,
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    match b.get(at..).and_then(|s| s.first_chunk::<8>()) {
        Some(a) => u64::from_le_bytes(*a),
        None => 0,
    }
}

/// Sequential little-endian writer over a slice already checked to be
/// exactly the record's length.
struct Put<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn zeros_to_end(&mut self) {
        if let Some(rest) = self.buf.get_mut(self.at..) {
            rest.fill(0);
        }
        self.at = self.buf.len();
    }
}

/// Checks length and room, then returns the record's slice of `buf` with
/// the record header written.
fn begin<'a>(buf: &'a mut [u8], ty: u16, vcpu: u32, len: usize) -> Result<Put<'a>, EncodeError> {
    if len > MAX_RECORD_LEN {
        return Err(EncodeError::TooLarge { len });
    }
    let available = buf.len();
    let rec = buf.get_mut(..len).ok_or(EncodeError::NoRoom {
        needed: len,
        available,
    })?;
    let mut p = Put { buf: rec, at: 0 };
    p.u16(ty);
    p.u16(len as u16);
    p.u32(vcpu);
    Ok(p)
}

// ---------------------------------------------------------------------------
// Encoder

/// Length of an EXIT record.
pub const fn exit_len() -> usize {
    EXIT_RECORD_LEN
}

/// Length of a STATS record with `n` entries (may exceed
/// [`MAX_RECORD_LEN`]; the encoder then refuses it).
pub const fn stats_len(n: usize) -> usize {
    STATS_FIXED_LEN.saturating_add(n.saturating_mul(16))
}

/// Length of a STATS_NAMES record with these names.
pub fn stats_names_len<S: AsRef<str>>(names: &[S]) -> usize {
    let text: usize = names.iter().map(|n| n.as_ref().len() + 1).sum();
    STATS_NAMES_FIXED_LEN + text.next_multiple_of(8)
}

/// Writes a HEADER record (`version` 1) at the start of `buf`; returns its
/// length (24).
pub fn encode_header(buf: &mut [u8], vcpu: u32, host_ns: u64) -> Result<usize, EncodeError> {
    let mut p = begin(buf, record_type::HEADER, vcpu, HEADER_RECORD_LEN)?;
    p.u32(VERSION);
    p.u32(0);
    p.u64(host_ns);
    Ok(HEADER_RECORD_LEN)
}

/// Writes an EXIT record; returns its length (48).
pub fn encode_exit(buf: &mut [u8], vcpu: u32, exit: &Exit) -> Result<usize, EncodeError> {
    let mut p = begin(buf, record_type::EXIT, vcpu, EXIT_RECORD_LEN)?;
    p.u64(exit.guest_ns);
    p.u64(exit.rip);
    p.u64(exit.addr);
    p.u32(exit.reason.as_u32());
    p.u32(exit.size);
    p.u64(exit.host_ns);
    Ok(EXIT_RECORD_LEN)
}

/// Writes a STATS record; returns its length (24 + 16 × entries). At most
/// [`MAX_STATS`] entries.
pub fn encode_stats(
    buf: &mut [u8],
    vcpu: u32,
    guest_ns: u64,
    stats: &[Stat],
) -> Result<usize, EncodeError> {
    let len = stats_len(stats.len());
    let mut p = begin(buf, record_type::STATS, vcpu, len)?;
    p.u64(guest_ns);
    // len <= MAX_RECORD_LEN was checked, so the count fits a u32.
    p.u32(stats.len() as u32);
    p.u32(0);
    for s in stats {
        p.u64(s.id);
        p.u64(s.value);
    }
    Ok(len)
}

/// Writes a STATS_NAMES record: the names back to back, each followed by a
/// NUL, then zeros to a multiple of 8. Names must be non-empty and free of
/// NUL bytes. Returns the length.
pub fn encode_stats_names<S: AsRef<str>>(
    buf: &mut [u8],
    vcpu: u32,
    names: &[S],
) -> Result<usize, EncodeError> {
    if let Some(index) = names
        .iter()
        .position(|n| n.as_ref().is_empty() || n.as_ref().as_bytes().contains(&0))
    {
        return Err(EncodeError::BadName { index });
    }
    let len = stats_names_len(names);
    let mut p = begin(buf, record_type::STATS_NAMES, vcpu, len)?;
    p.u32(names.len() as u32);
    p.u32(0);
    for n in names {
        p.bytes(n.as_ref().as_bytes());
        p.bytes(&[0]);
    }
    p.zeros_to_end();
    Ok(len)
}

// ---------------------------------------------------------------------------
// Decoder

/// Validates a record header at the start of `bytes` and returns
/// `(type, size, vcpu)`; `bytes` must hold at least 8 bytes.
fn parse_header(bytes: &[u8], offset: u64) -> Result<(u16, u16, u32), DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Incomplete {
            offset,
            have: bytes.len(),
            need: RECORD_HEADER_LEN,
        });
    }
    let ty = le16(bytes, 0);
    let size = le16(bytes, 2);
    let vcpu = le32(bytes, 4);
    if (size as usize) < RECORD_HEADER_LEN || !size.is_multiple_of(8) {
        return Err(DecodeError::BadHeader { offset, ty, size });
    }
    Ok((ty, size, vcpu))
}

fn check_zero(
    rec: &[u8],
    range: std::ops::Range<usize>,
    offset: u64,
    ty: u16,
) -> Result<(), DecodeError> {
    let start = range.start;
    match rec.get(range) {
        Some(bytes) => match bytes.iter().position(|b| *b != 0) {
            Some(i) => Err(DecodeError::NonzeroReserved {
                offset,
                ty,
                at: start + i,
            }),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Decodes one record; `rec` must be exactly the record (`rec.len()` equal
/// to its `size`). `offset` is only used in errors.
pub fn decode_record(rec: &[u8], offset: u64) -> Result<Decoded<'_>, DecodeError> {
    let (ty, size, vcpu) = parse_header(rec, offset)?;
    if size as usize != rec.len() {
        return Err(if (size as usize) > rec.len() {
            DecodeError::Incomplete {
                offset,
                have: rec.len(),
                need: size as usize,
            }
        } else {
            DecodeError::BadLength {
                offset,
                ty,
                detail: LengthDetail {
                    size,
                    expected: Some(rec.len()),
                    count: None,
                },
            }
        });
    }
    let fixed = |expected: usize| -> Result<(), DecodeError> {
        if size as usize == expected {
            Ok(())
        } else {
            Err(DecodeError::BadLength {
                offset,
                ty,
                detail: LengthDetail {
                    size,
                    expected: Some(expected),
                    count: None,
                },
            })
        }
    };
    let record = match ty {
        record_type::HEADER => {
            fixed(HEADER_RECORD_LEN)?;
            let version = le32(rec, 8);
            if version != VERSION {
                return Err(DecodeError::BadVersion { offset, version });
            }
            check_zero(rec, 12..16, offset, ty)?;
            Record::Header {
                host_ns: le64(rec, 16),
            }
        }
        record_type::EXIT => {
            fixed(EXIT_RECORD_LEN)?;
            let reason = le32(rec, 32);
            let reason =
                ExitReason::from_u32(reason).ok_or(DecodeError::BadReason { offset, reason })?;
            Record::Exit(Exit {
                guest_ns: le64(rec, 8),
                rip: le64(rec, 16),
                addr: le64(rec, 24),
                reason,
                size: le32(rec, 36),
                host_ns: le64(rec, 40),
            })
        }
        record_type::STATS => {
            if rec.len() < STATS_FIXED_LEN {
                fixed(STATS_FIXED_LEN)?;
            }
            let count = le32(rec, 16);
            let expected = (count as usize)
                .checked_mul(16)
                .and_then(|n| n.checked_add(STATS_FIXED_LEN))
                .filter(|n| *n <= MAX_RECORD_LEN);
            if expected != Some(rec.len()) {
                return Err(DecodeError::BadLength {
                    offset,
                    ty,
                    detail: LengthDetail {
                        size,
                        expected,
                        count: Some(count),
                    },
                });
            }
            check_zero(rec, 20..24, offset, ty)?;
            Record::Stats(Stats {
                guest_ns: le64(rec, 8),
                raw: rec.get(STATS_FIXED_LEN..).unwrap_or(&[]),
            })
        }
        record_type::STATS_NAMES => {
            if rec.len() < STATS_NAMES_FIXED_LEN {
                fixed(STATS_NAMES_FIXED_LEN)?;
            }
            let count = le32(rec, 8);
            check_zero(rec, 12..16, offset, ty)?;
            let area = rec.get(STATS_NAMES_FIXED_LEN..).unwrap_or(&[]);
            // Each name takes at least 2 bytes (one char and its NUL).
            if (count as usize).saturating_mul(2) > area.len() {
                return Err(DecodeError::BadLength {
                    offset,
                    ty,
                    detail: LengthDetail {
                        size,
                        expected: None,
                        count: Some(count),
                    },
                });
            }
            let mut end = 0usize;
            for index in 0..count {
                let rest = area.get(end..).unwrap_or(&[]);
                let nul = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or(DecodeError::BadName { offset, index })?;
                let name = rest.get(..nul).unwrap_or(&[]);
                if name.is_empty() || std::str::from_utf8(name).is_err() {
                    return Err(DecodeError::BadName { offset, index });
                }
                end += nul + 1;
            }
            // Exactly the padding to the next multiple of 8, all zero.
            let expected = STATS_NAMES_FIXED_LEN + end.next_multiple_of(8);
            if expected != rec.len() {
                return Err(DecodeError::BadLength {
                    offset,
                    ty,
                    detail: LengthDetail {
                        size,
                        expected: Some(expected),
                        count: Some(count),
                    },
                });
            }
            check_zero(rec, STATS_NAMES_FIXED_LEN + end..rec.len(), offset, ty)?;
            Record::StatsNames(StatsNames {
                count,
                raw: area.get(..end).unwrap_or(&[]),
            })
        }
        _ => return Err(DecodeError::UnknownType { offset, ty, size }),
    };
    Ok(Decoded {
        vcpu,
        len: rec.len(),
        record,
    })
}

/// Iterator over the records of one byte slice; see [`decode`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    offset: u64,
    done: bool,
}

impl<'a> Records<'a> {
    /// Bytes not consumed yet (after a fatal error: the bytes from the
    /// offending record on).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }

    /// Offset of [`Records::remainder`] in the input.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Decodes every record in `bytes`. Each item is a record or an error; after
/// a recoverable error (the record's size was sane) the next item is the
/// next record; after a fatal one ([`DecodeError::BadHeader`], or
/// [`DecodeError::Incomplete`] for input ending inside a record) the
/// iterator ends.
pub fn decode(bytes: &[u8]) -> Records<'_> {
    Records {
        rest: bytes,
        offset: 0,
        done: false,
    }
}

/// How the slice walker ended a step.
enum Step<'a> {
    Item(Result<Decoded<'a>, DecodeError>, usize),
    /// Fewer bytes than the next record needs (`have` bytes present).
    Partial,
    Fatal(DecodeError),
}

fn step(rest: &[u8], offset: u64) -> Step<'_> {
    let (_, size, _) = match parse_header(rest, offset) {
        Ok(h) => h,
        Err(DecodeError::Incomplete { .. }) => return Step::Partial,
        Err(e) => return Step::Fatal(e),
    };
    let size = size as usize;
    match rest.get(..size) {
        Some(rec) => Step::Item(decode_record(rec, offset), size),
        None => Step::Partial,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Decoded<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        match step(self.rest, self.offset) {
            Step::Item(item, size) => {
                self.rest = self.rest.get(size..).unwrap_or(&[]);
                self.offset += size as u64;
                Some(item)
            }
            Step::Partial => {
                self.done = true;
                let need = if self.rest.len() < RECORD_HEADER_LEN {
                    RECORD_HEADER_LEN
                } else {
                    le16(self.rest, 2) as usize
                };
                Some(Err(DecodeError::Incomplete {
                    offset: self.offset,
                    have: self.rest.len(),
                    need,
                }))
            }
            Step::Fatal(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Records<'_> {}

/// Counters of a [`StreamDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Bytes fed.
    pub bytes: u64,
    /// Records decoded.
    pub records: u64,
    /// Errors reported.
    pub errors: u64,
    /// Bytes dropped: after a fatal error until a reset, and partial
    /// records dropped by [`StreamDecoder::reset`].
    pub dropped: u64,
    /// Records that straddled two chunks.
    pub straddled: u64,
}

/// A decoder fed the stream in chunks of any size.
///
/// A record split across chunks is kept (at most one record, 64 KiB) until
/// its end arrives. After a fatal error ([`DecodeError::BadHeader`]) the
/// decoder cannot find the next record: it drops every byte until
/// [`StreamDecoder::reset`], which the caller calls where it knows a record
/// starts (for the pvpmu AUX stream: the start of a session after a gap).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// The start of a record that straddles chunks.
    pending: Vec<u8>,
    /// Stream offset of the next byte fed.
    offset: u64,
    desynced: bool,
    stats: StreamStats,
}

impl StreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Bytes of a partial record held back, waiting for the rest.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether a fatal error stopped decoding until the next reset.
    pub fn is_desynced(&self) -> bool {
        self.desynced
    }

    /// Stream offset of the next byte fed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Forgets any partial record and the desynced state: the next byte fed
    /// starts a record. Returns the number of partial bytes dropped.
    pub fn reset(&mut self) -> usize {
        let n = self.pending.len();
        self.stats.dropped += n as u64;
        self.pending.clear();
        self.desynced = false;
        n
    }

    /// End of the stream: a held partial record is an error
    /// ([`DecodeError::Incomplete`]) and is dropped.
    pub fn finish(&mut self) -> Option<DecodeError> {
        if self.pending.is_empty() {
            return None;
        }
        let have = self.pending.len();
        let need = if have < RECORD_HEADER_LEN {
            RECORD_HEADER_LEN
        } else {
            le16(&self.pending, 2) as usize
        };
        let err = DecodeError::Incomplete {
            offset: self.offset - have as u64,
            have,
            need,
        };
        self.stats.errors += 1;
        self.reset();
        Some(err)
    }

    /// Feeds the next bytes of the stream; calls `f` once per record or
    /// error, in stream order.
    pub fn feed<F>(&mut self, chunk: &[u8], mut f: F)
    where
        F: FnMut(Result<Decoded<'_>, DecodeError>),
    {
        self.stats.bytes += chunk.len() as u64;
        let chunk_start = self.offset;
        self.offset += chunk.len() as u64;
        if self.desynced {
            self.stats.dropped += chunk.len() as u64;
            return;
        }
        let mut chunk = chunk;
        let mut at = chunk_start;
        if !self.pending.is_empty() {
            let rec_offset = chunk_start - self.pending.len() as u64;
            // Complete the header first, then the record.
            if self.pending.len() < RECORD_HEADER_LEN {
                let take = (RECORD_HEADER_LEN - self.pending.len()).min(chunk.len());
                let (a, b) = chunk.split_at(take);
                self.pending.extend_from_slice(a);
                chunk = b;
                at += take as u64;
                if self.pending.len() < RECORD_HEADER_LEN {
                    return;
                }
            }
            let size = match parse_header(&self.pending, rec_offset) {
                Ok((_, size, _)) => size as usize,
                Err(e) => {
                    self.fatal(e, chunk.len(), &mut f);
                    return;
                }
            };
            let take = size.saturating_sub(self.pending.len()).min(chunk.len());
            let (a, b) = chunk.split_at(take);
            self.pending.extend_from_slice(a);
            chunk = b;
            at += take as u64;
            if self.pending.len() < size {
                return;
            }
            let rec = std::mem::take(&mut self.pending);
            self.stats.straddled += 1;
            self.emit(decode_record(&rec, rec_offset), &mut f);
            self.pending = rec;
            self.pending.clear();
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            match step(rest, at) {
                Step::Item(item, size) => {
                    self.emit(item, &mut f);
                    rest = rest.get(size..).unwrap_or(&[]);
                    at += size as u64;
                }
                Step::Partial => {
                    self.pending.extend_from_slice(rest);
                    return;
                }
                Step::Fatal(e) => {
                    let dropped = rest.len();
                    self.fatal(e, dropped, &mut f);
                    return;
                }
            }
        }
    }

    fn emit<F>(&mut self, item: Result<Decoded<'_>, DecodeError>, f: &mut F)
    where
        F: FnMut(Result<Decoded<'_>, DecodeError>),
    {
        match &item {
            Ok(_) => self.stats.records += 1,
            Err(_) => self.stats.errors += 1,
        }
        f(item);
    }

    fn fatal<F>(&mut self, e: DecodeError, rest: usize, f: &mut F)
    where
        F: FnMut(Result<Decoded<'_>, DecodeError>),
    {
        self.stats.dropped += (self.pending.len() + rest) as u64;
        self.pending.clear();
        self.desynced = true;
        self.emit(Err(e), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exit(reason: ExitReason) -> Exit {
        Exit {
            guest_ns: 0x1122_3344_5566_7788,
            rip: 0xffff_ffff_8100_0000,
            addr: 0xd000_0004,
            reason,
            size: 4,
            host_ns: 1234,
        }
    }

    fn all(bytes: &[u8]) -> Vec<Result<Decoded<'_>, DecodeError>> {
        decode(bytes).collect()
    }

    #[test]
    fn golden_header() {
        let mut b = [0xaau8; 32];
        assert_eq!(encode_header(&mut b, 3, 0x0102_0304_0506_0708), Ok(24));
        assert_eq!(
            b[..24],
            [
                1, 0, 24, 0, 3, 0, 0, 0, // type 1, size 24, vcpu 3
                1, 0, 0, 0, 0, 0, 0, 0, // version 1, reserved
                8, 7, 6, 5, 4, 3, 2, 1, // host ns
            ]
        );
        assert_eq!(b[24..], [0xaa; 8], "nothing past the record");
        let d = decode_record(&b[..24], 0).unwrap();
        assert_eq!(d.vcpu, 3);
        assert_eq!(d.len, 24);
        assert_eq!(
            d.record,
            Record::Header {
                host_ns: 0x0102_0304_0506_0708
            }
        );
    }

    #[test]
    fn golden_exit() {
        let mut b = [0u8; 48];
        assert_eq!(encode_exit(&mut b, 1, &exit(ExitReason::MmioWrite)), Ok(48));
        let mut want = vec![2, 0, 48, 0, 1, 0, 0, 0];
        want.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        want.extend_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        want.extend_from_slice(&0xd000_0004u64.to_le_bytes());
        want.extend_from_slice(&[4, 0, 0, 0, 4, 0, 0, 0]);
        want.extend_from_slice(&1234u64.to_le_bytes());
        assert_eq!(b.to_vec(), want);
        let d = decode_record(&b, 0).unwrap();
        assert_eq!(d.record, Record::Exit(exit(ExitReason::MmioWrite)));
    }

    #[test]
    fn golden_stats() {
        let mut b = [0u8; 56];
        let st = [Stat { id: 0, value: 7 }, Stat { id: 2, value: 9 }];
        assert_eq!(encode_stats(&mut b, 0, 100, &st), Ok(56));
        let mut want = vec![3, 0, 56, 0, 0, 0, 0, 0];
        want.extend_from_slice(&100u64.to_le_bytes());
        want.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        for (i, v) in [(0u64, 7u64), (2, 9)] {
            want.extend_from_slice(&i.to_le_bytes());
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(b.to_vec(), want);
        let d = decode_record(&b, 0).unwrap();
        let Record::Stats(s) = d.record else {
            panic!("{d:?}")
        };
        assert_eq!(s.guest_ns, 100);
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), st);
        assert_eq!(s.get(1), Some(st[1]));
        assert_eq!(s.get(2), None);
    }

    #[test]
    fn golden_stats_names() {
        let names = ["exits", "kicks"];
        assert_eq!(stats_names_len(&names), 16 + 16);
        let mut b = [0xffu8; 32];
        assert_eq!(encode_stats_names(&mut b, 5, &names), Ok(32));
        let want: Vec<u8> = [
            &[4u8, 0, 32, 0, 5, 0, 0, 0][..],
            &[2, 0, 0, 0, 0, 0, 0, 0],
            b"exits\0kicks\0",
            &[0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(b.to_vec(), want);
        let d = decode_record(&b, 0).unwrap();
        let Record::StatsNames(n) = d.record else {
            panic!("{d:?}")
        };
        assert_eq!(n.iter().collect::<Vec<_>>(), names);
        assert_eq!(n.get(1), Some("kicks"));
        assert_eq!(n.get(2), None);
        // A name list that ends exactly on 8 bytes has no padding.
        assert_eq!(stats_names_len(&["1234567"]), 24);
        assert_eq!(stats_names_len::<&str>(&[]), 16);
    }

    #[test]
    fn encoder_refuses_without_writing() {
        let mut b = [0x55u8; 47];
        assert_eq!(
            encode_exit(&mut b, 0, &exit(ExitReason::Kick)),
            Err(EncodeError::NoRoom {
                needed: 48,
                available: 47
            })
        );
        assert_eq!(b, [0x55; 47]);
        assert!(encode_header(&mut b[..23], 0, 0).is_err());
        let many = vec![Stat::default(); MAX_STATS + 1];
        let mut big = vec![0u8; 70000];
        assert_eq!(
            encode_stats(&mut big, 0, 0, &many),
            Err(EncodeError::TooLarge {
                len: stats_len(MAX_STATS + 1)
            })
        );
        assert_eq!(
            encode_stats(&mut big, 0, 0, &many[..MAX_STATS]),
            Ok(stats_len(MAX_STATS))
        );
        assert!(stats_len(MAX_STATS) <= MAX_RECORD_LEN);
        assert_eq!(
            encode_stats_names(&mut big, 0, &["a", ""]),
            Err(EncodeError::BadName { index: 1 })
        );
        assert_eq!(
            encode_stats_names(&mut big, 0, &["a\0b"]),
            Err(EncodeError::BadName { index: 0 })
        );
    }

    #[test]
    fn exit_reasons() {
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.as_u32(), i as u32 + 1);
            assert_eq!(ExitReason::from_u32(r.as_u32()), Some(*r));
        }
        assert_eq!(ExitReason::from_u32(0), None);
        assert_eq!(ExitReason::from_u32(7), None);
        assert_eq!(ExitReason::MmioRead.to_string(), "mmio_read");
    }

    fn sample_stream() -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        let mut at = 0;
        at += encode_header(&mut v[at..], 0, 42).unwrap();
        at += encode_stats_names(&mut v[at..], 0, &["exits", "kick_ns", "x"]).unwrap();
        for r in ExitReason::ALL {
            at += encode_exit(&mut v[at..], 1, &exit(r)).unwrap();
        }
        at += encode_stats(&mut v[at..], 1, 5, &[Stat { id: 1, value: 2 }]).unwrap();
        v.truncate(at);
        v
    }

    #[test]
    fn decode_stream() {
        let v = sample_stream();
        let items = all(&v);
        assert_eq!(items.len(), 9);
        assert!(items.iter().all(|i| i.is_ok()));
        let tys: Vec<u16> = items
            .iter()
            .map(|i| i.as_ref().unwrap().record.ty())
            .collect();
        assert_eq!(tys, [1, 4, 2, 2, 2, 2, 2, 2, 3]);
        assert!(all(&[]).is_empty());
    }

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn decode_errors() {
        let mut e = [0u8; 48];
        encode_exit(&mut e, 0, &exit(ExitReason::IoIn)).unwrap();
        let mut h = [0u8; 24];
        encode_header(&mut h, 0, 1).unwrap();

        // Bad reason, recoverable: the next record is still decoded.
        let mut b = e;
        put32(&mut b, 32, 7);
        let v = [&b[..], &h[..]].concat();
        let items = all(&v);
        assert_eq!(
            items[0],
            Err(DecodeError::BadReason {
                offset: 0,
                reason: 7
            })
        );
        assert!(items[0].as_ref().unwrap_err().is_recoverable());
        assert!(matches!(
            items[1],
            Ok(Decoded {
                record: Record::Header { host_ns: 1 },
                ..
            })
        ));

        // Version.
        let mut b = h;
        put32(&mut b, 8, 2);
        assert_eq!(
            all(&b),
            [Err(DecodeError::BadVersion {
                offset: 0,
                version: 2
            })]
        );
        // Reserved.
        let mut b = h;
        b[13] = 1;
        assert_eq!(
            all(&b),
            [Err(DecodeError::NonzeroReserved {
                offset: 0,
                ty: 1,
                at: 13
            })]
        );
        // Fixed size wrong (EXIT of 56 bytes).
        let mut b = [&e[..], &[0u8; 8]].concat();
        put16(&mut b, 2, 56);
        assert!(matches!(
            all(&b)[..],
            [Err(DecodeError::BadLength {
                offset: 0,
                ty: 2,
                ..
            })]
        ));
        // Unknown type: skipped, decoding goes on.
        let mut b = h;
        put16(&mut b, 0, 9);
        let v = [&b[..], &h[..]].concat();
        let items = all(&v);
        assert_eq!(
            items[0],
            Err(DecodeError::UnknownType {
                offset: 0,
                ty: 9,
                size: 24
            })
        );
        assert!(items[1].is_ok());
        // Fatal header: size 0, 12, and the rest is not decoded.
        for size in [0u16, 4, 12] {
            let mut b = h;
            put16(&mut b, 2, size);
            let v = [&b[..], &h[..]].concat();
            let items = all(&v);
            assert_eq!(
                items,
                [Err(DecodeError::BadHeader {
                    offset: 0,
                    ty: 1,
                    size
                })]
            );
            assert!(!items[0].as_ref().unwrap_err().is_recoverable());
        }
        // Incomplete at the end.
        let v = [&h[..], &e[..40]].concat();
        let items = all(&v);
        assert!(items[0].is_ok());
        assert_eq!(
            items[1],
            Err(DecodeError::Incomplete {
                offset: 24,
                have: 40,
                need: 48
            })
        );
        assert_eq!(
            all(&h[..5]),
            [Err(DecodeError::Incomplete {
                offset: 0,
                have: 5,
                need: 8
            })]
        );
        // decode_record on a longer slice.
        assert!(matches!(
            decode_record(&[&h[..], &h[..]].concat(), 0),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn stats_errors() {
        let mut b = [0u8; 40];
        encode_stats(&mut b, 0, 0, &[Stat::default()]).unwrap();
        let mut c = b;
        put32(&mut c, 16, 2);
        assert!(matches!(
            all(&c)[..],
            [Err(DecodeError::BadLength {
                detail: LengthDetail {
                    size: 40,
                    expected: Some(56),
                    count: Some(2)
                },
                ..
            })]
        ));
        put32(&mut c, 16, u32::MAX);
        assert!(matches!(
            all(&c)[..],
            [Err(DecodeError::BadLength {
                detail: LengthDetail { expected: None, .. },
                ..
            })]
        ));
        let mut c = b;
        c[22] = 1;
        assert!(matches!(
            all(&c)[..],
            [Err(DecodeError::NonzeroReserved { at: 22, .. })]
        ));
        // Shorter than the fixed part.
        let mut c = [0u8; 16];
        put16(&mut c, 0, 3);
        put16(&mut c, 2, 16);
        assert!(matches!(all(&c)[..], [Err(DecodeError::BadLength { .. })]));
    }

    #[test]
    fn stats_names_errors() {
        let mut b = [0u8; 24];
        assert_eq!(encode_stats_names(&mut b, 0, &["abc", "de"]), Ok(24));
        fn check(c: &[u8]) -> Result<Decoded<'_>, DecodeError> {
            let mut items = all(c);
            assert_eq!(items.len(), 1, "{items:?}");
            items.remove(0)
        }
        assert!(check(&b).is_ok());
        // Count larger than the names present.
        let mut c = b;
        put32(&mut c, 8, 3);
        assert_eq!(
            check(&c),
            Err(DecodeError::BadName {
                offset: 0,
                index: 2
            })
        );
        // A count that cannot fit.
        put32(&mut c, 8, 1000);
        assert!(matches!(
            check(&c),
            Err(DecodeError::BadLength {
                detail: LengthDetail {
                    expected: None,
                    count: Some(1000),
                    ..
                },
                ..
            })
        ));
        // Count smaller: the leftover name is not zero padding.
        let mut c = b;
        put32(&mut c, 8, 1);
        assert_eq!(
            check(&c),
            Err(DecodeError::NonzeroReserved {
                offset: 0,
                ty: 4,
                at: 20
            })
        );
        // Empty name.
        let mut c = b;
        c[16] = 0;
        assert_eq!(
            check(&c),
            Err(DecodeError::BadName {
                offset: 0,
                index: 0
            })
        );
        // Not UTF-8.
        let mut c = b;
        c[17] = 0xff;
        assert_eq!(
            check(&c),
            Err(DecodeError::BadName {
                offset: 0,
                index: 0
            })
        );
        // No NUL at all.
        let mut c = b;
        c[22] = b'f';
        c[23] = b'g';
        assert_eq!(
            check(&c),
            Err(DecodeError::BadName {
                offset: 0,
                index: 1
            })
        );
        // Nonzero padding.
        let mut c = b;
        c[23] = 1;
        assert!(matches!(
            check(&c),
            Err(DecodeError::NonzeroReserved { at: 23, .. })
        ));
        // Too much padding (a whole extra zero word).
        let mut c = [&b[..], &[0u8; 8]].concat();
        put16(&mut c, 2, 32);
        assert!(matches!(
            check(&c),
            Err(DecodeError::BadLength {
                detail: LengthDetail {
                    size: 32,
                    expected: Some(24),
                    count: Some(2)
                },
                ..
            })
        ));
        // Reserved.
        let mut c = b;
        c[12] = 1;
        assert!(matches!(
            check(&c),
            Err(DecodeError::NonzeroReserved { at: 12, .. })
        ));
        // Shorter than the fixed part.
        let mut c = [0u8; 8];
        put16(&mut c, 0, 4);
        put16(&mut c, 2, 8);
        assert!(matches!(check(&c), Err(DecodeError::BadLength { .. })));
        // Zero names is fine.
        let mut z = [0u8; 16];
        assert_eq!(encode_stats_names::<&str>(&mut z, 0, &[]), Ok(16));
        assert!(check(&z).is_ok());
    }

    /// Feeds `v` in chunks of the given sizes (cycled) and returns the Debug
    /// form of every item, `finish()` included.
    fn stream_items(v: &[u8], sizes: &[usize]) -> Vec<String> {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let mut rest = v;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            i += 1;
            let (a, b) = rest.split_at(n);
            d.feed(a, |item| out.push(format!("{item:?}")));
            rest = b;
        }
        if let Some(e) = d.finish() {
            out.push(format!("{:?}", Err::<Decoded<'_>, _>(e)));
        }
        out
    }

    fn slice_items(v: &[u8]) -> Vec<String> {
        decode(v).map(|i| format!("{i:?}")).collect()
    }

    #[test]
    fn stream_split_everywhere() {
        let v = sample_stream();
        let whole = slice_items(&v);
        for cut in 0..=v.len() {
            let mut d = StreamDecoder::new();
            let mut out = Vec::new();
            d.feed(&v[..cut], |i| out.push(format!("{i:?}")));
            d.feed(&v[cut..], |i| out.push(format!("{i:?}")));
            assert_eq!(d.pending(), 0);
            assert!(d.finish().is_none());
            assert_eq!(out, whole, "cut at {cut}");
            assert_eq!(d.stats().records, 9);
        }
        assert_eq!(stream_items(&v, &[1]), whole);
        assert_eq!(stream_items(&v, &[3, 7, 100]), whole);
    }

    #[test]
    fn stream_desync_and_reset() {
        let v = sample_stream();
        let mut bad = v.clone();
        bad[2] = 3; // first record's size becomes 3: fatal
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        d.feed(&bad, |i| out.push(i.map(|r| r.record.ty())));
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Err(DecodeError::BadHeader { offset: 0, .. })
        ));
        assert!(d.is_desynced());
        out.clear();
        d.feed(&v, |i| out.push(i.map(|r| r.record.ty())));
        assert!(out.is_empty(), "dropped while desynced");
        assert_eq!(d.stats().dropped, 2 * v.len() as u64);
        d.reset();
        d.feed(&v[..30], |i| out.push(i.map(|r| r.record.ty())));
        assert_eq!(out, [Ok(1)]);
        assert_eq!(d.pending(), 6);
        // A gap: the caller resets where a record starts.
        assert_eq!(d.reset(), 6);
        d.feed(&v[24..], |i| out.push(i.map(|r| r.record.ty())));
        assert_eq!(out.len(), 9);
        assert!(out.iter().all(|r| r.is_ok()));
        // A fatal header found while completing a straddling record.
        let mut d = StreamDecoder::new();
        let mut n = 0;
        d.feed(&bad[..4], |_| n += 1);
        d.feed(&bad[4..], |i| {
            assert!(matches!(i, Err(DecodeError::BadHeader { offset: 0, .. })));
            n += 1
        });
        assert_eq!(n, 1);
        assert_eq!(d.offset(), bad.len() as u64);
    }

    #[derive(Debug, Clone)]
    enum Model {
        Header(u32, u64),
        Exit(u32, Exit),
        Stats(u32, u64, Vec<Stat>),
        Names(u32, Vec<String>),
    }

    fn reason() -> impl Strategy<Value = ExitReason> {
        prop::sample::select(ExitReason::ALL.to_vec())
    }

    fn model() -> impl Strategy<Value = Model> {
        prop_oneof![
            (any::<u32>(), any::<u64>()).prop_map(|(c, t)| Model::Header(c, t)),
            (
                any::<u32>(),
                (
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                    reason(),
                    any::<u32>(),
                    any::<u64>()
                )
            )
                .prop_map(|(c, (guest_ns, rip, addr, reason, size, host_ns))| {
                    Model::Exit(
                        c,
                        Exit {
                            guest_ns,
                            rip,
                            addr,
                            reason,
                            size,
                            host_ns,
                        },
                    )
                }),
            (
                any::<u32>(),
                any::<u64>(),
                prop::collection::vec(
                    (any::<u64>(), any::<u64>()).prop_map(|(id, value)| Stat { id, value }),
                    0..40
                )
            )
                .prop_map(|(c, t, s)| Model::Stats(c, t, s)),
            (any::<u32>(), prop::collection::vec("[^\u{0}]{1,20}", 0..12))
                .prop_map(|(c, n)| Model::Names(c, n)),
        ]
    }

    fn encode_model(m: &Model, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match m {
            Model::Header(c, t) => encode_header(buf, *c, *t),
            Model::Exit(c, e) => encode_exit(buf, *c, e),
            Model::Stats(c, t, s) => encode_stats(buf, *c, *t, s),
            Model::Names(c, n) => encode_stats_names(buf, *c, n),
        }
    }

    fn matches_model(d: &Decoded<'_>, m: &Model) -> bool {
        match (m, &d.record) {
            (Model::Header(c, t), Record::Header { host_ns }) => d.vcpu == *c && host_ns == t,
            (Model::Exit(c, e), Record::Exit(x)) => d.vcpu == *c && x == e,
            (Model::Stats(c, t, s), Record::Stats(x)) => {
                d.vcpu == *c && x.guest_ns == *t && x.iter().eq(s.iter().copied())
            }
            (Model::Names(c, n), Record::StatsNames(x)) => {
                d.vcpu == *c && x.len() == n.len() && x.iter().eq(n.iter().map(|s| s.as_str()))
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(ms in prop::collection::vec(model(), 0..30), sizes in prop::collection::vec(1usize..200, 1..8)) {
            let mut buf = vec![0u8; 1 << 16];
            let mut at = 0;
            for m in &ms {
                let n = encode_model(m, &mut buf[at..]).unwrap();
                prop_assert_eq!(n % 8, 0);
                at += n;
            }
            let v = &buf[..at];
            let items: Vec<_> = decode(v).collect();
            prop_assert_eq!(items.len(), ms.len());
            for (i, m) in items.iter().zip(&ms) {
                let d = i.as_ref().unwrap();
                prop_assert!(matches_model(d, m), "{:?} vs {:?}", d, m);
            }
            prop_assert_eq!(stream_items(v, &sizes), slice_items(v));
        }

        #[test]
        fn no_room_never_writes(m in model(), cut in 0usize..100) {
            let mut full = vec![0u8; 1 << 16];
            let len = encode_model(&m, &mut full).unwrap();
            let cut = cut.min(len.saturating_sub(1));
            let mut small = vec![0x77u8; cut];
            let r = encode_model(&m, &mut small);
            prop_assert_eq!(r, Err(EncodeError::NoRoom { needed: len, available: cut }));
            prop_assert!(small.iter().all(|b| *b == 0x77));
        }

        #[test]
        fn garbage_never_panics(v in prop::collection::vec(any::<u8>(), 0..512), sizes in prop::collection::vec(1usize..64, 1..8)) {
            let items = slice_items(&v);
            prop_assert_eq!(stream_items(&v, &sizes), items);
            for i in decode(&v).flatten() {
                prop_assert_eq!(i.len % 8, 0);
            }
        }

        /// Mostly-valid streams with a few bytes flipped: the decoder finds
        /// the damage, never panics, and the stream decoder agrees.
        #[test]
        fn corrupted_streams(ms in prop::collection::vec(model(), 1..10), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), sizes in prop::collection::vec(1usize..100, 1..8)) {
            let mut buf = vec![0u8; 1 << 16];
            let mut at = 0;
            for m in &ms {
                at += encode_model(m, &mut buf[at..]).unwrap();
            }
            let mut v = buf[..at].to_vec();
            for (i, x) in &flips {
                let i = i.index(v.len());
                v[i] ^= *x;
            }
            prop_assert_eq!(stream_items(&v, &sizes), slice_items(&v));
        }
    }
}
