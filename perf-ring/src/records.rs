//! Typed encoders for the records the producer writes.
//!
//! Layouts follow kernel/events/core.c of Linux 6.1: `perf_output_sample`
//! for PERF_RECORD_SAMPLE, `__perf_event__output_id_sample` for the
//! `sample_id` trailer, and the `perf_log_*` / `perf_event_*_output`
//! functions for the other records. All fields are native-endian, as in the
//! kernel.

use super::abi::{misc, read_format as rf, record, sample as st, HEADER_LEN, MAX_RECORD_LEN};
use super::Error;

/// The `perf_event_attr` fields that decide record layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleFormat {
    /// `attr.sample_type` (`PERF_SAMPLE_*` bits).
    pub sample_type: u64,
    /// `attr.read_format` (`PERF_FORMAT_*` bits), used by `PERF_SAMPLE_READ`.
    pub read_format: u64,
    /// `attr.sample_id_all`: non-sample records carry the `sample_id` trailer.
    pub sample_id_all: bool,
}

impl SampleFormat {
    /// Checks that every requested bit is one this module can lay out.
    pub fn new(sample_type: u64, read_format: u64, sample_id_all: bool) -> Result<Self, Error> {
        let unsupported = sample_type & !st::SUPPORTED;
        if unsupported != 0 {
            return Err(Error::UnsupportedSampleType(unsupported));
        }
        if read_format & !rf::ALL != 0 {
            return Err(Error::UnsupportedReadFormat(read_format & !rf::ALL));
        }
        Ok(SampleFormat {
            sample_type,
            read_format,
            sample_id_all,
        })
    }

    fn has(&self, bit: u64) -> bool {
        self.sample_type & bit != 0
    }

    /// Length of the `sample_id` trailer on non-sample records
    /// (`perf_event__id_header_size`), 0 without `sample_id_all`.
    pub fn id_trailer_len(&self) -> usize {
        if !self.sample_id_all {
            return 0;
        }
        let bits = [
            st::TID,
            st::TIME,
            st::ID,
            st::STREAM_ID,
            st::CPU,
            st::IDENTIFIER,
        ];
        8 * bits.iter().filter(|b| self.has(**b)).count()
    }

    /// Length of a PERF_RECORD_LOST, with its trailer.
    pub fn lost_record_len(&self) -> usize {
        HEADER_LEN + 16 + self.id_trailer_len()
    }

    /// Bytes of the READ field for `nr` counters (`__perf_event_read_size`).
    pub fn read_len(&self, nr: usize) -> usize {
        let f = self.read_format;
        let mut entry = 8;
        let mut size = 0;
        if f & rf::TOTAL_TIME_ENABLED != 0 {
            size += 8;
        }
        if f & rf::TOTAL_TIME_RUNNING != 0 {
            size += 8;
        }
        if f & rf::ID != 0 {
            entry += 8;
        }
        if f & rf::LOST != 0 {
            entry += 8;
        }
        let nr = if f & rf::GROUP != 0 {
            size += 8;
            nr
        } else {
            1
        };
        size + nr * entry
    }
}

/// Per-record context: the values of the `sample_id` fields
/// (`__perf_event_header__init_id`). For a sample they are also the
/// sample's own TID/TIME/ID/STREAM_ID/CPU/IDENTIFIER fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleId {
    /// `tid_entry.pid`.
    pub pid: u32,
    /// `tid_entry.tid`.
    pub tid: u32,
    /// Time in the guest's perf clock.
    pub time: u64,
    /// `primary_event_id`: ID and IDENTIFIER.
    pub id: u64,
    /// `event->id`: STREAM_ID.
    pub stream_id: u64,
    /// `cpu_entry.cpu` (`reserved` is written as 0).
    pub cpu: u32,
}

/// One counter of a READ field (`perf_output_read_one` / `_group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadValue {
    /// Counter value.
    pub value: u64,
    /// With PERF_FORMAT_ID.
    pub id: u64,
    /// With PERF_FORMAT_LOST.
    pub lost: u64,
}

/// The READ field of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadData<'a> {
    /// With PERF_FORMAT_TOTAL_TIME_ENABLED.
    pub time_enabled: u64,
    /// With PERF_FORMAT_TOTAL_TIME_RUNNING.
    pub time_running: u64,
    /// One value without PERF_FORMAT_GROUP; the leader then the siblings
    /// with it.
    pub values: &'a [ReadValue],
}

/// A PERF_RECORD_SAMPLE body. TID/TIME/ID/STREAM_ID/CPU/IDENTIFIER come
/// from the [`SampleId`] passed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample<'a> {
    /// `header.misc`: cpumode (KERNEL/USER for the guest's own tools) and
    /// EXACT_IP.
    pub misc: u16,
    /// PERF_SAMPLE_IP.
    pub ip: u64,
    /// PERF_SAMPLE_ADDR.
    pub addr: u64,
    /// PERF_SAMPLE_PERIOD.
    pub period: u64,
    /// PERF_SAMPLE_READ.
    pub read: ReadData<'a>,
    /// PERF_SAMPLE_CALLCHAIN entries (without `nr`), context markers
    /// included.
    pub callchain: &'a [u64],
    /// PERF_SAMPLE_RAW payload; padded with zeros so `4 + size` is a
    /// multiple of 8, as `perf_prepare_sample` does.
    pub raw: &'a [u8],
    /// PERF_SAMPLE_AUX snapshot bytes; `aux_size` is rounded up to 8 and the
    /// pad is zeros, as `perf_aux_sample_output` does.
    pub aux: &'a [u8],
}

/// A record to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// PERF_RECORD_SAMPLE.
    Sample(Sample<'a>),
    /// PERF_RECORD_LOST (the producer injects these itself).
    Lost {
        /// `primary_event_id` of the event that lost records.
        id: u64,
        /// Records lost.
        lost: u64,
    },
    /// PERF_RECORD_THROTTLE.
    Throttle {
        /// Time.
        time: u64,
        /// `primary_event_id`.
        id: u64,
        /// `event->id`.
        stream_id: u64,
    },
    /// PERF_RECORD_UNTHROTTLE.
    Unthrottle {
        /// Time.
        time: u64,
        /// `primary_event_id`.
        id: u64,
        /// `event->id`.
        stream_id: u64,
    },
    /// PERF_RECORD_AUX.
    Aux {
        /// AUX offset of the data (`aux_head` before in normal mode).
        offset: u64,
        /// Bytes.
        size: u64,
        /// `PERF_AUX_FLAG_*`.
        flags: u64,
    },
    /// PERF_RECORD_ITRACE_START.
    ItraceStart {
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
    },
    /// PERF_RECORD_LOST_SAMPLES.
    LostSamples {
        /// Samples lost (e.g. by the hardware).
        lost: u64,
    },
    /// PERF_RECORD_SWITCH (per-task events).
    Switch {
        /// Switched out (`PERF_RECORD_MISC_SWITCH_OUT`).
        out: bool,
        /// Preempted while runnable (`SWITCH_OUT_PREEMPT`).
        preempt: bool,
    },
    /// PERF_RECORD_SWITCH_CPU_WIDE.
    SwitchCpuWide {
        /// Switched out.
        out: bool,
        /// Preempted while runnable.
        preempt: bool,
        /// The next (switch out) or previous (switch in) process.
        next_prev_pid: u32,
        /// The next or previous thread.
        next_prev_tid: u32,
    },
}

fn round8(n: usize) -> usize {
    (n + 7) & !7
}

impl Event<'_> {
    /// `header.type`.
    pub fn record_type(&self) -> u32 {
        match self {
            Event::Sample(_) => record::SAMPLE,
            Event::Lost { .. } => record::LOST,
            Event::Throttle { .. } => record::THROTTLE,
            Event::Unthrottle { .. } => record::UNTHROTTLE,
            Event::Aux { .. } => record::AUX,
            Event::ItraceStart { .. } => record::ITRACE_START,
            Event::LostSamples { .. } => record::LOST_SAMPLES,
            Event::Switch { .. } => record::SWITCH,
            Event::SwitchCpuWide { .. } => record::SWITCH_CPU_WIDE,
        }
    }

    fn misc(&self) -> u16 {
        let switch = |out: bool, preempt: bool| {
            let mut m = 0;
            if out {
                m |= misc::SWITCH_OUT;
                if preempt {
                    m |= misc::SWITCH_OUT_PREEMPT;
                }
            }
            m
        };
        match self {
            Event::Sample(s) => s.misc,
            Event::Switch { out, preempt } => switch(*out, *preempt),
            Event::SwitchCpuWide { out, preempt, .. } => switch(*out, *preempt),
            _ => 0,
        }
    }

    /// Encoded length in bytes (`header.size`), or an error if the record
    /// cannot be laid out (over 65535 bytes, READ values not matching
    /// read_format).
    pub fn encoded_len(&self, fmt: &SampleFormat) -> Result<usize, Error> {
        let len = match self {
            Event::Sample(s) => sample_len(fmt, s)?,
            other => HEADER_LEN + other.fixed_body_len() + fmt.id_trailer_len(),
        };
        if len > MAX_RECORD_LEN {
            return Err(Error::RecordTooLarge(len));
        }
        Ok(len)
    }

    fn fixed_body_len(&self) -> usize {
        match self {
            Event::Sample(_) => 0,
            Event::Lost { .. } => 16,
            Event::Throttle { .. } | Event::Unthrottle { .. } => 24,
            Event::Aux { .. } => 24,
            Event::ItraceStart { .. } => 8,
            Event::LostSamples { .. } => 8,
            Event::Switch { .. } => 0,
            Event::SwitchCpuWide { .. } => 8,
        }
    }

    /// Appends the record to `out`; returns its length.
    pub fn encode(
        &self,
        fmt: &SampleFormat,
        ids: &SampleId,
        out: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        let len = self.encoded_len(fmt)?;
        let start = out.len();
        out.reserve(len);
        put_u32(out, self.record_type());
        put_u16(out, self.misc());
        put_u16(out, len as u16);
        match self {
            Event::Sample(s) => encode_sample_body(fmt, ids, s, out)?,
            Event::Lost { id, lost } => {
                put_u64(out, *id);
                put_u64(out, *lost);
            }
            Event::Throttle {
                time,
                id,
                stream_id,
            }
            | Event::Unthrottle {
                time,
                id,
                stream_id,
            } => {
                put_u64(out, *time);
                put_u64(out, *id);
                put_u64(out, *stream_id);
            }
            Event::Aux {
                offset,
                size,
                flags,
            } => {
                put_u64(out, *offset);
                put_u64(out, *size);
                put_u64(out, *flags);
            }
            Event::ItraceStart { pid, tid } => {
                put_u32(out, *pid);
                put_u32(out, *tid);
            }
            Event::LostSamples { lost } => put_u64(out, *lost),
            Event::Switch { .. } => {}
            Event::SwitchCpuWide {
                next_prev_pid,
                next_prev_tid,
                ..
            } => {
                put_u32(out, *next_prev_pid);
                put_u32(out, *next_prev_tid);
            }
        }
        if !matches!(self, Event::Sample(_)) {
            encode_id_trailer(fmt, ids, out);
        }
        debug_assert_eq!(out.len() - start, len);
        Ok(len)
    }
}

/// The record layout of a sample format without variable-length fields
/// (no READ, CALLCHAIN, RAW or AUX), computed once per [`SampleFormat`] so
/// the producer's per-record path is a header word plus a gather of 8-byte
/// words: no branches on `sample_type`, no length computation, no buffer.
///
/// Every fixed field of a PERF_RECORD_SAMPLE is one native-endian u64 (TID
/// and CPU are two u32s that sit in memory as one u64), so the body is
/// `n` words picked, in `perf_output_sample` order, from the eight values
/// of [`FixedLayout::sources`]. The bytes are identical to
/// [`Event::encode`]'s (tests/perf_ring_golden.rs checks every one of the
/// 512 formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedLayout {
    /// Header word without `misc`: type and size.
    header: u64,
    /// For body word k, its index into [`FixedLayout::sources`] (< 8) in
    /// bits `3k..3k+3`.
    idx: u32,
    /// Body words (0..=9).
    n: u8,
}

/// Shift of `misc` within the native-endian header word
/// (`{u32 type, u16 misc, u16 size}`).
const MISC_SHIFT: u32 = if cfg!(target_endian = "little") {
    32
} else {
    16
};

/// `misc` placed in a header word (OR it into one with misc 0).
#[inline(always)]
pub(crate) const fn misc_word(misc: u16) -> u64 {
    (misc as u64) << MISC_SHIFT
}

/// Two u32 fields as they sit in memory (first at the lower address), as one
/// native-endian u64.
#[inline(always)]
const fn pair(first: u32, second: u32) -> u64 {
    if cfg!(target_endian = "little") {
        first as u64 | (second as u64) << 32
    } else {
        (first as u64) << 32 | second as u64
    }
}

impl FixedLayout {
    const VARIABLE: u64 = st::READ | st::CALLCHAIN | st::RAW | st::AUX;

    /// `perf_output_sample` order of the fixed fields, with the index of
    /// each one's value in [`FixedLayout::sources`].
    const ORDER: [(u64, u8); 9] = [
        (st::IDENTIFIER, 0),
        (st::IP, 1),
        (st::TID, 2),
        (st::TIME, 3),
        (st::ADDR, 4),
        (st::ID, 0),
        (st::STREAM_ID, 5),
        (st::CPU, 6),
        (st::PERIOD, 7),
    ];

    /// The layout of `fmt`'s samples, or `None` if they have
    /// variable-length fields.
    pub(crate) fn new(fmt: &SampleFormat) -> Option<Self> {
        let t = fmt.sample_type;
        if t & Self::VARIABLE != 0 {
            return None;
        }
        let mut idx = 0u32;
        let mut n = 0u8;
        for (bit, src) in Self::ORDER {
            if t & bit != 0 {
                idx |= u32::from(src) << (3 * n);
                n += 1;
            }
        }
        let size = HEADER_LEN as u64 + 8 * u64::from(n);
        let header = if cfg!(target_endian = "little") {
            record::SAMPLE as u64 | size << 48
        } else {
            (record::SAMPLE as u64) << 32 | size
        };
        Some(FixedLayout { header, idx, n })
    }

    /// `header.size` in bytes.
    #[inline(always)]
    pub(crate) fn len(&self) -> u64 {
        HEADER_LEN as u64 + 8 * u64::from(self.n)
    }

    /// The header word of a sample with this `misc`.
    #[inline(always)]
    pub(crate) fn header(&self, misc: u16) -> u64 {
        self.header | misc_word(misc)
    }

    /// Number of body words (0..=9).
    #[inline(always)]
    pub(crate) fn body_words(&self) -> usize {
        usize::from(self.n)
    }

    /// Indexes into [`FixedLayout::sources`] of the body words, 3 bits
    /// each, word 0 in the low bits.
    #[inline(always)]
    pub(crate) fn body_index(&self) -> u32 {
        self.idx
    }

    /// Every value a fixed field can take, indexed by [`FixedLayout::body`].
    #[inline(always)]
    pub(crate) fn sources(ids: &SampleId, s: &Sample<'_>) -> [u64; 8] {
        [
            ids.id,
            s.ip,
            pair(ids.pid, ids.tid),
            ids.time,
            s.addr,
            ids.stream_id,
            pair(ids.cpu, 0),
            s.period,
        ]
    }
}

/// `header.size` of a sample (`perf_prepare_sample`).
pub fn sample_len(fmt: &SampleFormat, s: &Sample<'_>) -> Result<usize, Error> {
    let t = fmt.sample_type;
    let mut len = HEADER_LEN;
    for bit in [
        st::IDENTIFIER,
        st::IP,
        st::TID,
        st::TIME,
        st::ADDR,
        st::ID,
        st::STREAM_ID,
        st::CPU,
        st::PERIOD,
    ] {
        if t & bit != 0 {
            len += 8;
        }
    }
    if t & st::READ != 0 {
        check_read(fmt, &s.read)?;
        len += fmt.read_len(s.read.values.len());
    }
    if t & st::CALLCHAIN != 0 {
        len = len.saturating_add(8usize.saturating_add(s.callchain.len().saturating_mul(8)));
    }
    if t & st::RAW != 0 {
        len = len.saturating_add(round8(s.raw.len().saturating_add(4)));
    }
    if t & st::AUX != 0 {
        len = len.saturating_add(8usize.saturating_add(round8(s.aux.len())));
    }
    if len > MAX_RECORD_LEN {
        return Err(Error::RecordTooLarge(len));
    }
    Ok(len)
}

fn check_read(fmt: &SampleFormat, r: &ReadData<'_>) -> Result<(), Error> {
    let n = r.values.len();
    let ok = if fmt.read_format & rf::GROUP != 0 {
        n >= 1
    } else {
        n == 1
    };
    if ok {
        Ok(())
    } else {
        Err(Error::ReadValues {
            given: n,
            group: fmt.read_format & rf::GROUP != 0,
        })
    }
}

#[inline]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

#[inline]
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

#[inline]
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn put_zeros(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

/// The `sample_id` trailer, in `__perf_event__output_id_sample` order:
/// TID, TIME, ID, STREAM_ID, CPU, IDENTIFIER.
fn encode_id_trailer(fmt: &SampleFormat, ids: &SampleId, out: &mut Vec<u8>) {
    if !fmt.sample_id_all {
        return;
    }
    let t = fmt.sample_type;
    if t & st::TID != 0 {
        put_u32(out, ids.pid);
        put_u32(out, ids.tid);
    }
    if t & st::TIME != 0 {
        put_u64(out, ids.time);
    }
    if t & st::ID != 0 {
        put_u64(out, ids.id);
    }
    if t & st::STREAM_ID != 0 {
        put_u64(out, ids.stream_id);
    }
    if t & st::CPU != 0 {
        put_u32(out, ids.cpu);
        put_u32(out, 0);
    }
    if t & st::IDENTIFIER != 0 {
        put_u64(out, ids.id);
    }
}

/// The sample body in `perf_output_sample` order.
fn encode_sample_body(
    fmt: &SampleFormat,
    ids: &SampleId,
    s: &Sample<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let t = fmt.sample_type;
    if t & st::IDENTIFIER != 0 {
        put_u64(out, ids.id);
    }
    if t & st::IP != 0 {
        put_u64(out, s.ip);
    }
    if t & st::TID != 0 {
        put_u32(out, ids.pid);
        put_u32(out, ids.tid);
    }
    if t & st::TIME != 0 {
        put_u64(out, ids.time);
    }
    if t & st::ADDR != 0 {
        put_u64(out, s.addr);
    }
    if t & st::ID != 0 {
        put_u64(out, ids.id);
    }
    if t & st::STREAM_ID != 0 {
        put_u64(out, ids.stream_id);
    }
    if t & st::CPU != 0 {
        put_u32(out, ids.cpu);
        put_u32(out, 0);
    }
    if t & st::PERIOD != 0 {
        put_u64(out, s.period);
    }
    if t & st::READ != 0 {
        encode_read(fmt, &s.read, out)?;
    }
    if t & st::CALLCHAIN != 0 {
        put_u64(out, s.callchain.len() as u64);
        for ip in s.callchain {
            put_u64(out, *ip);
        }
    }
    if t & st::RAW != 0 {
        // perf_prepare_sample: size = round_up(sum + 4, 8); raw->size =
        // size - 4, and the pad is skipped (zeros here: fresh bytes).
        let padded = round8(s.raw.len() + 4) - 4;
        put_u32(out, padded as u32);
        out.extend_from_slice(s.raw);
        put_zeros(out, padded - s.raw.len());
    }
    if t & st::AUX != 0 {
        let padded = round8(s.aux.len());
        put_u64(out, padded as u64);
        out.extend_from_slice(s.aux);
        put_zeros(out, padded - s.aux.len());
    }
    Ok(())
}

fn encode_read(fmt: &SampleFormat, r: &ReadData<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    check_read(fmt, r)?;
    let f = fmt.read_format;
    let entry = |v: &ReadValue, out: &mut Vec<u8>| {
        put_u64(out, v.value);
        if f & rf::ID != 0 {
            put_u64(out, v.id);
        }
        if f & rf::LOST != 0 {
            put_u64(out, v.lost);
        }
    };
    if f & rf::GROUP != 0 {
        // perf_output_read_group: nr, times, then each counter.
        put_u64(out, r.values.len() as u64);
        if f & rf::TOTAL_TIME_ENABLED != 0 {
            put_u64(out, r.time_enabled);
        }
        if f & rf::TOTAL_TIME_RUNNING != 0 {
            put_u64(out, r.time_running);
        }
        for v in r.values {
            entry(v, out);
        }
    } else {
        // perf_output_read_one: value, times, id, lost.
        let v = r.values.first().copied().unwrap_or_default();
        put_u64(out, v.value);
        if f & rf::TOTAL_TIME_ENABLED != 0 {
            put_u64(out, r.time_enabled);
        }
        if f & rf::TOTAL_TIME_RUNNING != 0 {
            put_u64(out, r.time_running);
        }
        if f & rf::ID != 0 {
            put_u64(out, v.id);
        }
        if f & rf::LOST != 0 {
            put_u64(out, v.lost);
        }
    }
    Ok(())
}
