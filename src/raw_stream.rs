//! The raw sample stream between the two halves of a sandboxed
//! `perfvisor record`: the perfvisor inside the L1 sandbox writes every
//! sample it takes (`--raw-out`), the one outside reads them back and
//! writes the outputs.
//!
//! A stream is a [`Header`] and then tagged items, all integers little
//! endian:
//!
//! ```text
//! header   magic "PVRAWSMP", u32 version (= VERSION), u32 header length (= 16)
//! sample   u8 tag = 1, u8 vcpu, u8 user, u8 comm length, u8 has task,
//!          u16 frames, u16 zero, u32 vCPU thread id, u32 pid, u32 tid,
//!          u64 time ns, u64 ip, u64 period, comm bytes, frames × u64
//! stats    u8 tag = 2, u64 lost, u64 walks, u64 walk ns (the end)
//! ```
//!
//! Fields are written and read one after the other in that order, not
//! at offsets. Every length is bounded by its field's width
//! (comm ≤ 255 bytes, ≤ 65535 frames), so a reader never allocates more
//! than 512 KiB for one item whatever the bytes say.

use std::io::{self, Read, Write};

use thiserror::Error;
use vmm::introspect::GuestTask;
use vmm::recorder::RecordedSample;

/// The stream's magic bytes.
const MAGIC: &[u8; 8] = b"PVRAWSMP";
/// The format version this perfvisor writes and reads.
pub(crate) const VERSION: u32 = 3;
/// Bytes of the header.
const HEADER_LEN: u32 = 16;

const TAG_SAMPLE: u8 = 1;
const TAG_STATS: u8 = 2;

/// The stream's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
}

impl Header {
    /// The header this perfvisor writes.
    pub(crate) const CURRENT: Header = Header { version: VERSION };

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&self.version.to_le_bytes())?;
        w.write_all(&HEADER_LEN.to_le_bytes())
    }

    fn read(r: &mut impl Read) -> Result<Header, RawError> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(RawError::Io)?;
        if &magic != MAGIC {
            return Err(RawError::NotRaw);
        }
        let version = u32_le(r)?;
        let len = u32_le(r)?;
        if version != VERSION || len != HEADER_LEN {
            return Err(RawError::Version { version, len });
        }
        Ok(Header { version })
    }
}

/// The recorder's final counters, the stream's last item.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawStats {
    pub(crate) lost: u64,
    pub(crate) walks: u64,
    pub(crate) walk_ns: u64,
}

/// One item of the stream.
#[derive(Debug)]
pub(crate) enum RawItem {
    Sample(RecordedSample),
    Stats(RawStats),
}

/// A stream that cannot be read.
#[derive(Debug, Error)]
pub(crate) enum RawError {
    #[error("not a perfvisor raw sample stream (no PVRAWSMP header)")]
    NotRaw,
    #[error("raw sample stream version {version} (header {len} bytes); this perfvisor reads version {VERSION}: the perfvisor inside the sandbox must be this same binary")]
    Version { version: u32, len: u32 },
    #[error("unknown raw item tag {0}")]
    Tag(u8),
    #[error("{0}")]
    Io(io::Error),
}

/// Writes a stream: the header at once, then items.
pub(crate) struct RawWriter<W: Write> {
    w: W,
}

impl<W: Write> RawWriter<W> {
    pub(crate) fn new(mut w: W) -> io::Result<Self> {
        Header::CURRENT.write(&mut w)?;
        Ok(RawWriter { w })
    }

    /// One sample; a longer comm or callchain than the fields hold is cut.
    pub(crate) fn sample(&mut self, s: &RecordedSample) -> io::Result<()> {
        let w = &mut self.w;
        let comm = s.task.as_ref().map(|t| t.comm.as_bytes()).unwrap_or(&[]);
        let comm = &comm[..comm.len().min(usize::from(u8::MAX))];
        let frames = &s.callchain[..s.callchain.len().min(usize::from(u16::MAX))];
        let (pid, tid) = s.task.as_ref().map_or((0, 0), |t| (t.pid, t.tid));
        w.write_all(&[TAG_SAMPLE, s.vcpu, u8::from(s.user)])?;
        w.write_all(&[comm.len() as u8, u8::from(s.task.is_some())])?;
        w.write_all(&(frames.len() as u16).to_le_bytes())?;
        w.write_all(&0u16.to_le_bytes())?;
        for v in [s.vcpu_tid, pid, tid] {
            w.write_all(&v.to_le_bytes())?;
        }
        for v in [s.time_ns, s.ip, s.period] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(comm)?;
        for f in frames {
            w.write_all(&f.to_le_bytes())?;
        }
        Ok(())
    }

    /// The final counters, then flush: the end of the stream.
    pub(crate) fn finish(mut self, st: RawStats) -> io::Result<()> {
        self.w.write_all(&[TAG_STATS])?;
        for v in [st.lost, st.walks, st.walk_ns] {
            self.w.write_all(&v.to_le_bytes())?;
        }
        self.w.flush()
    }
}

/// Reads a stream; [`RawReader::open`] checks the header.
pub(crate) struct RawReader<R: Read> {
    r: R,
}

fn u8_(r: &mut impl Read) -> Result<u8, RawError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(RawError::Io)?;
    Ok(b[0])
}

fn u16_le(r: &mut impl Read) -> Result<u16, RawError> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).map_err(RawError::Io)?;
    Ok(u16::from_le_bytes(b))
}

fn u32_le(r: &mut impl Read) -> Result<u32, RawError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(RawError::Io)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(r: &mut impl Read) -> Result<u64, RawError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(RawError::Io)?;
    Ok(u64::from_le_bytes(b))
}

impl<R: Read> RawReader<R> {
    pub(crate) fn open(mut r: R) -> Result<Self, RawError> {
        Header::read(&mut r)?;
        Ok(RawReader { r })
    }

    /// The next item, or `None` at a clean end.
    pub(crate) fn next_item(&mut self) -> Result<Option<RawItem>, RawError> {
        let r = &mut self.r;
        let mut tag = [0u8; 1];
        match r.read_exact(&mut tag) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(RawError::Io(e)),
        }
        match tag[0] {
            TAG_STATS => Ok(Some(RawItem::Stats(RawStats {
                lost: u64_le(r)?,
                walks: u64_le(r)?,
                walk_ns: u64_le(r)?,
            }))),
            TAG_SAMPLE => {
                let vcpu = u8_(r)?;
                let user = u8_(r)? != 0;
                let comm_len = usize::from(u8_(r)?);
                let has_task = u8_(r)? != 0;
                let nframes = usize::from(u16_le(r)?);
                let _zero = u16_le(r)?;
                let vcpu_tid = u32_le(r)?;
                let pid = u32_le(r)?;
                let tid = u32_le(r)?;
                let time_ns = u64_le(r)?;
                let ip = u64_le(r)?;
                let period = u64_le(r)?;
                let mut comm = vec![0u8; comm_len];
                r.read_exact(&mut comm).map_err(RawError::Io)?;
                let callchain = (0..nframes)
                    .map(|_| u64_le(r))
                    .collect::<Result<Vec<u64>, RawError>>()?;
                Ok(Some(RawItem::Sample(RecordedSample {
                    vcpu,
                    vcpu_tid,
                    time_ns,
                    ip,
                    user,
                    task: has_task.then(|| GuestTask {
                        pid,
                        tid,
                        comm: String::from_utf8_lossy(&comm).into_owned(),
                    }),
                    callchain,
                    period,
                })))
            }
            other => Err(RawError::Tag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<RecordedSample> {
        vec![
            RecordedSample {
                vcpu: 1,
                vcpu_tid: 4242,
                time_ns: 123,
                ip: 0xffff_ffff_8100_0000,
                user: false,
                task: Some(GuestTask {
                    pid: 7,
                    tid: 8,
                    comm: "pv-workload".into(),
                }),
                callchain: vec![1, 2, 3],
                period: 1_000_000,
            },
            RecordedSample {
                vcpu: 0,
                vcpu_tid: 1,
                time_ns: 5,
                ip: 0x40_1000,
                user: true,
                task: None,
                callchain: vec![],
                period: 9,
            },
        ]
    }

    fn stream(samples: &[RecordedSample], st: RawStats) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = RawWriter::new(&mut buf).unwrap();
        for s in samples {
            w.sample(s).unwrap();
        }
        w.finish(st).unwrap();
        buf
    }

    #[test]
    fn raw_samples_round_trip() {
        let st = RawStats {
            lost: 1,
            walks: 2,
            walk_ns: 3,
        };
        let buf = stream(&samples(), st);
        let mut r = RawReader::open(&buf[..]).unwrap();
        let (mut back, mut stats) = (Vec::new(), None);
        while let Some(item) = r.next_item().unwrap() {
            match item {
                RawItem::Sample(s) => back.push(s),
                RawItem::Stats(s) => stats = Some(s),
            }
        }
        assert_eq!(stats, Some(st));
        let want = samples();
        assert_eq!(back.len(), 2);
        for (b, w) in back.iter().zip(&want) {
            assert_eq!(
                (b.vcpu, b.vcpu_tid, b.time_ns, b.ip, b.user, b.period),
                (w.vcpu, w.vcpu_tid, w.time_ns, w.ip, w.user, w.period)
            );
            assert_eq!(b.task, w.task);
            assert_eq!(b.callchain, w.callchain);
        }
    }

    #[test]
    fn the_header_is_checked() {
        let buf = stream(&[], RawStats::default());
        assert_eq!(&buf[..8], MAGIC);
        assert_eq!(buf[8..12], VERSION.to_le_bytes());
        assert!(matches!(
            RawReader::open(&b"PVRAW002rest"[..]),
            Err(RawError::NotRaw)
        ));
        let mut old = buf.clone();
        old[8] = 2;
        let e = RawReader::open(&old[..]).err().unwrap();
        assert!(matches!(e, RawError::Version { version: 2, .. }), "{e}");
        assert!(e.to_string().contains("reads version 3"));
    }

    #[test]
    fn truncated_or_garbled_streams_are_errors_not_panics() {
        let buf = stream(&samples(), RawStats::default());
        for cut in 16..buf.len() {
            let mut r = RawReader::open(&buf[..cut]).unwrap();
            while let Ok(Some(_)) = r.next_item() {}
        }
        let mut bad = buf.clone();
        bad[16] = 9;
        let mut r = RawReader::open(&bad[..]).unwrap();
        assert!(matches!(r.next_item(), Err(RawError::Tag(9))));
    }
}
