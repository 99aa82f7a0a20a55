//! Decoder for the records [`super::records`] encodes, plus the header of
//! any record a real kernel ring may hold.
//!
//! Decoding is total: malformed input yields [`DecodeError`], never a
//! panic, because the guest tool decodes rings it does not trust either.

use super::abi::{misc, read_format as rf, record, sample as st, HEADER_LEN};
use super::records::{SampleFormat, SampleId};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("record needs at least 8 bytes for its header, got {0}")]
    ShortHeader(usize),
    /// `header.size` below 8, not a multiple of 8, or not the byte count.
    #[error("record header size {size} is invalid for a buffer of {len} bytes (sizes are multiples of 8, at least 8)")]
    BadSize {
        /// `header.size`.
        size: u16,
        /// Bytes given.
        len: usize,
    },
    /// The body ended before a field the sample_type asks for.
    #[error("record type {ty} is {size} bytes, too short for the fields sample_type {sample_type:#x} selects")]
    Truncated {
        /// `header.type`.
        ty: u32,
        /// `header.size`.
        size: u16,
        /// The format used.
        sample_type: u64,
    },
    /// Bytes left over after every selected field.
    #[error("record type {ty} has {extra} bytes past the fields sample_type {sample_type:#x} selects; the ring and the decoder disagree on the format")]
    Trailing {
        /// `header.type`.
        ty: u32,
        /// Extra bytes.
        extra: usize,
        /// The format used.
        sample_type: u64,
    },
}

/// `struct perf_event_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// `type`.
    pub ty: u32,
    /// `misc`.
    pub misc: u16,
    /// `size`, header included.
    pub size: u16,
}

impl Header {
    /// Reads a header from the first 8 bytes.
    #[inline]
    pub fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        match bytes.first_chunk::<8>() {
            Some(&[t0, t1, t2, t3, m0, m1, s0, s1]) => Ok(Header {
                ty: u32::from_ne_bytes([t0, t1, t2, t3]),
                misc: u16::from_ne_bytes([m0, m1]),
                size: u16::from_ne_bytes([s0, s1]),
            }),
            None => Err(DecodeError::ShortHeader(bytes.len())),
        }
    }
}

/// An owned READ field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadOwned {
    /// TOTAL_TIME_ENABLED.
    pub time_enabled: u64,
    /// TOTAL_TIME_RUNNING.
    pub time_running: u64,
    /// The counters.
    pub values: Vec<super::records::ReadValue>,
}

/// A decoded PERF_RECORD_SAMPLE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SampleRecord {
    /// TID/TIME/ID/STREAM_ID/CPU/IDENTIFIER (ID from IDENTIFIER if only that
    /// is set).
    pub ids: SampleId,
    /// IP.
    pub ip: u64,
    /// ADDR.
    pub addr: u64,
    /// PERIOD.
    pub period: u64,
    /// READ.
    pub read: Option<ReadOwned>,
    /// CALLCHAIN entries.
    pub callchain: Vec<u64>,
    /// RAW bytes including the kernel's padding.
    pub raw: Option<Vec<u8>>,
    /// AUX bytes including padding to 8.
    pub aux: Option<Vec<u8>>,
}

/// A decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// PERF_RECORD_SAMPLE.
    Sample(SampleRecord),
    /// PERF_RECORD_LOST.
    Lost {
        /// Event id.
        id: u64,
        /// Records lost.
        lost: u64,
    },
    /// PERF_RECORD_THROTTLE.
    Throttle {
        /// Time.
        time: u64,
        /// Id.
        id: u64,
        /// Stream id.
        stream_id: u64,
    },
    /// PERF_RECORD_UNTHROTTLE.
    Unthrottle {
        /// Time.
        time: u64,
        /// Id.
        id: u64,
        /// Stream id.
        stream_id: u64,
    },
    /// PERF_RECORD_AUX.
    Aux {
        /// AUX offset.
        offset: u64,
        /// Bytes.
        size: u64,
        /// Flags.
        flags: u64,
    },
    /// PERF_RECORD_ITRACE_START.
    ItraceStart {
        /// Pid.
        pid: u32,
        /// Tid.
        tid: u32,
    },
    /// PERF_RECORD_LOST_SAMPLES.
    LostSamples {
        /// Lost.
        lost: u64,
    },
    /// PERF_RECORD_SWITCH.
    Switch,
    /// PERF_RECORD_SWITCH_CPU_WIDE.
    SwitchCpuWide {
        /// Next/prev pid.
        next_prev_pid: u32,
        /// Next/prev tid.
        next_prev_tid: u32,
    },
    /// Any other type (MMAP, COMM, ... from a real kernel): the body bytes
    /// between the header and the trailer.
    Other(Vec<u8>),
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The header.
    pub header: Header,
    /// The body.
    pub body: Body,
    /// The `sample_id` trailer of a non-sample record, when
    /// `sample_id_all` is set.
    pub sample_id: Option<SampleId>,
}

impl Record {
    /// `misc & CPUMODE_MASK`.
    pub fn cpumode(&self) -> u16 {
        self.header.misc & misc::CPUMODE_MASK
    }
}

/// Little cursor over native-endian fields; `None` when out of bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_ne_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_ne_bytes)
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
}

fn decode_trailer(fmt: &SampleFormat, r: &mut Reader<'_>) -> Option<SampleId> {
    let t = fmt.sample_type;
    let mut ids = SampleId::default();
    if t & st::TID != 0 {
        ids.pid = r.u32()?;
        ids.tid = r.u32()?;
    }
    if t & st::TIME != 0 {
        ids.time = r.u64()?;
    }
    if t & st::ID != 0 {
        ids.id = r.u64()?;
    }
    if t & st::STREAM_ID != 0 {
        ids.stream_id = r.u64()?;
    }
    if t & st::CPU != 0 {
        ids.cpu = r.u32()?;
        r.u32()?;
    }
    if t & st::IDENTIFIER != 0 {
        ids.id = r.u64()?;
    }
    Some(ids)
}

fn decode_read(fmt: &SampleFormat, r: &mut Reader<'_>) -> Option<ReadOwned> {
    use super::records::ReadValue;
    let f = fmt.read_format;
    let mut out = ReadOwned::default();
    if f & rf::GROUP != 0 {
        let nr = r.u64()?;
        if f & rf::TOTAL_TIME_ENABLED != 0 {
            out.time_enabled = r.u64()?;
        }
        if f & rf::TOTAL_TIME_RUNNING != 0 {
            out.time_running = r.u64()?;
        }
        // Each entry is at least 8 bytes: bound nr by what is left so a
        // hostile nr cannot make us allocate or loop for long.
        if nr > (r.remaining() / 8) as u64 {
            return None;
        }
        for _ in 0..nr {
            let mut v = ReadValue {
                value: r.u64()?,
                ..Default::default()
            };
            if f & rf::ID != 0 {
                v.id = r.u64()?;
            }
            if f & rf::LOST != 0 {
                v.lost = r.u64()?;
            }
            out.values.push(v);
        }
    } else {
        let mut v = ReadValue {
            value: r.u64()?,
            ..Default::default()
        };
        if f & rf::TOTAL_TIME_ENABLED != 0 {
            out.time_enabled = r.u64()?;
        }
        if f & rf::TOTAL_TIME_RUNNING != 0 {
            out.time_running = r.u64()?;
        }
        if f & rf::ID != 0 {
            v.id = r.u64()?;
        }
        if f & rf::LOST != 0 {
            v.lost = r.u64()?;
        }
        out.values.push(v);
    }
    Some(out)
}

fn decode_sample(fmt: &SampleFormat, r: &mut Reader<'_>) -> Option<SampleRecord> {
    let t = fmt.sample_type;
    let mut s = SampleRecord::default();
    if t & st::IDENTIFIER != 0 {
        s.ids.id = r.u64()?;
    }
    if t & st::IP != 0 {
        s.ip = r.u64()?;
    }
    if t & st::TID != 0 {
        s.ids.pid = r.u32()?;
        s.ids.tid = r.u32()?;
    }
    if t & st::TIME != 0 {
        s.ids.time = r.u64()?;
    }
    if t & st::ADDR != 0 {
        s.addr = r.u64()?;
    }
    if t & st::ID != 0 {
        s.ids.id = r.u64()?;
    }
    if t & st::STREAM_ID != 0 {
        s.ids.stream_id = r.u64()?;
    }
    if t & st::CPU != 0 {
        s.ids.cpu = r.u32()?;
        r.u32()?;
    }
    if t & st::PERIOD != 0 {
        s.period = r.u64()?;
    }
    if t & st::READ != 0 {
        s.read = Some(decode_read(fmt, r)?);
    }
    if t & st::CALLCHAIN != 0 {
        let nr = r.u64()?;
        if nr > (r.remaining() / 8) as u64 {
            return None;
        }
        s.callchain = (0..nr).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
    }
    if t & st::RAW != 0 {
        let size = r.u32()? as usize;
        s.raw = Some(r.take(size)?.to_vec());
    }
    if t & st::AUX != 0 {
        let size = r.u64()?;
        let size = usize::try_from(size).ok()?;
        s.aux = Some(r.take(size)?.to_vec());
    }
    Some(s)
}

/// Decodes one whole record (`bytes.len()` must equal `header.size`).
pub fn decode(fmt: &SampleFormat, bytes: &[u8]) -> Result<Record, DecodeError> {
    let header = Header::parse(bytes)?;
    let size = header.size as usize;
    if size < HEADER_LEN || !size.is_multiple_of(8) || size != bytes.len() {
        return Err(DecodeError::BadSize {
            size: header.size,
            len: bytes.len(),
        });
    }
    let mut r = Reader::new(&bytes[HEADER_LEN..]);
    let truncated = DecodeError::Truncated {
        ty: header.ty,
        size: header.size,
        sample_type: fmt.sample_type,
    };
    let trailer = fmt.id_trailer_len();
    let body = match header.ty {
        record::SAMPLE => Body::Sample(decode_sample(fmt, &mut r).ok_or(truncated.clone())?),
        record::LOST => match (r.u64(), r.u64()) {
            (Some(id), Some(lost)) => Body::Lost { id, lost },
            _ => return Err(truncated),
        },
        record::THROTTLE | record::UNTHROTTLE => match (r.u64(), r.u64(), r.u64()) {
            (Some(time), Some(id), Some(stream_id)) if header.ty == record::THROTTLE => {
                Body::Throttle {
                    time,
                    id,
                    stream_id,
                }
            }
            (Some(time), Some(id), Some(stream_id)) => Body::Unthrottle {
                time,
                id,
                stream_id,
            },
            _ => return Err(truncated),
        },
        record::AUX => match (r.u64(), r.u64(), r.u64()) {
            (Some(offset), Some(size), Some(flags)) => Body::Aux {
                offset,
                size,
                flags,
            },
            _ => return Err(truncated),
        },
        record::ITRACE_START => match (r.u32(), r.u32()) {
            (Some(pid), Some(tid)) => Body::ItraceStart { pid, tid },
            _ => return Err(truncated),
        },
        record::LOST_SAMPLES => match r.u64() {
            Some(lost) => Body::LostSamples { lost },
            None => return Err(truncated),
        },
        record::SWITCH => Body::Switch,
        record::SWITCH_CPU_WIDE => match (r.u32(), r.u32()) {
            (Some(next_prev_pid), Some(next_prev_tid)) => Body::SwitchCpuWide {
                next_prev_pid,
                next_prev_tid,
            },
            _ => return Err(truncated),
        },
        _ => {
            // Variable bodies (MMAP, COMM, ...): perf finds the trailer
            // from the end of the record, so do we.
            let body_len = r
                .remaining()
                .checked_sub(trailer)
                .ok_or(truncated.clone())?;
            Body::Other(r.take(body_len).ok_or(truncated.clone())?.to_vec())
        }
    };
    let sample_id = if header.ty != record::SAMPLE && fmt.sample_id_all {
        Some(decode_trailer(fmt, &mut r).ok_or(truncated)?)
    } else {
        None
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Trailing {
            ty: header.ty,
            extra: r.remaining(),
            sample_type: fmt.sample_type,
        });
    }
    Ok(Record {
        header,
        body,
        sample_id,
    })
}
