//! The raw sample stream between the two halves of a sandboxed
//! `perfvisor record`: the perfvisor inside the L1 sandbox writes every
//! sample it takes (`--raw-out`), the one outside reads them back and
//! writes the outputs. The outer half treats the stream as untrusted input
//! (it comes out of the sandbox): reading it never panics and never
//! allocates more than a fixed bound per item, whatever the bytes say.
//!
//! A stream is a [`Header`] and then tagged items, all integers little
//! endian:
//!
//! ```text
//! header   magic "PVRAWSMP", u32 version (= VERSION), u32 header length (= 16)
//! sample   u8 tag = 1, u8 vcpu, u8 user, u8 comm length, u8 has task,
//!          u16 frames, u16 flags, u32 vCPU thread id, u32 pid, u32 tid,
//!          u64 time ns, u64 ip, u64 period, [u64 start_code if flags bit 0],
//!          comm bytes (UTF-8), frames × u64
//! stats    u8 tag = 2, u64 lost, u64 walks, u64 walk ns (the end)
//! ```
//!
//! Fields are written and read one after the other in that order, not
//! at offsets. Every length is bounded by its field's width (comm ≤
//! [`MAX_COMM`] bytes, read into a fixed buffer; ≤ [`MAX_FRAMES`] frames,
//! collected as they are read, never reserved from the count), so one item
//! never takes more than 512 KiB, and never more than twice the bytes the
//! stream really holds for it.
//!
//! Samples are written from a [`GuestSample`] (what the outputs take) and
//! read back as an owned [`RawSample`] ([`RawSample::as_guest_sample`]
//! gives the `GuestSample` again): the stream is plain data, like the rest
//! of this crate, and knows nothing of the recorder that took it.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::GuestSample;

/// The stream's magic bytes.
const MAGIC: &[u8; 8] = b"PVRAWSMP";
/// The format version this perfvisor writes and reads.
pub const VERSION: u32 = 4;
/// Bytes of the header.
const HEADER_LEN: u32 = 16;
/// Longest comm a sample carries (bytes; a longer one is cut at a
/// character boundary).
pub const MAX_COMM: usize = u8::MAX as usize;
/// Most frames a sample carries (a longer callchain is cut).
pub const MAX_FRAMES: usize = u16::MAX as usize;

const TAG_SAMPLE: u8 = 1;
const TAG_STATS: u8 = 2;
/// A sample's flags: its task's start_code follows the period.
const FLAG_START_CODE: u16 = 1;

/// The stream's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
}

impl Header {
    /// The header this perfvisor writes.
    pub const CURRENT: Header = Header { version: VERSION };

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
pub struct RawStats {
    pub lost: u64,
    pub walks: u64,
    pub walk_ns: u64,
}

/// The guest task of a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTask {
    pub pid: u32,
    pub tid: u32,
    /// At most [`MAX_COMM`] bytes.
    pub comm: String,
    /// The process's `mm->start_code`, when read.
    pub start_code: Option<u64>,
}

/// One sample as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// vCPU index.
    pub vcpu: u8,
    /// Host thread id of the vCPU thread.
    pub vcpu_tid: u32,
    /// Host time of the sample, ns.
    pub time_ns: u64,
    pub ip: u64,
    pub user: bool,
    /// The guest task, when the sampler identified it.
    pub task: Option<RawTask>,
    /// Return addresses after `ip`, innermost first; at most
    /// [`MAX_FRAMES`].
    pub callchain: Vec<u64>,
    pub period: u64,
}

impl RawSample {
    /// The sample as the outputs take it (a task's comm is always given,
    /// possibly empty).
    pub fn as_guest_sample(&self) -> GuestSample<'_> {
        GuestSample {
            cpu: u32::from(self.vcpu),
            vcpu_tid: self.vcpu_tid,
            guest_pid: self.task.as_ref().map(|t| t.pid),
            guest_tid: self.task.as_ref().map(|t| t.tid),
            comm: self.task.as_ref().map(|t| t.comm.as_str()),
            start_code: self.task.as_ref().and_then(|t| t.start_code),
            time_ns: self.time_ns,
            ip: self.ip,
            user: self.user,
            callchain: &self.callchain,
            period: self.period,
        }
    }
}

/// One item of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawItem {
    Sample(RawSample),
    Stats(RawStats),
}

/// A stream that cannot be read.
#[derive(Debug, Error)]
pub enum RawError {
    #[error("not a perfvisor raw sample stream (no PVRAWSMP header)")]
    NotRaw,
    #[error("raw sample stream version {version} (header {len} bytes); this perfvisor reads version {VERSION}: the perfvisor inside the sandbox must be this same binary")]
    Version { version: u32, len: u32 },
    #[error("unknown raw item tag {0}")]
    Tag(u8),
    #[error("raw sample comm is not UTF-8 (this perfvisor writes only UTF-8): the stream is corrupt or not from this binary")]
    Comm,
    #[error("{0}")]
    Io(io::Error),
}

/// Writes a stream: the header at once, then items.
pub struct RawWriter<W: Write> {
    w: W,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<W: Write> RawWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        Header::CURRENT.write(&mut w)?;
        Ok(RawWriter { w })
    }

    /// One sample. A longer comm or callchain than the fields hold is cut
    /// (the comm at a character boundary); a task's tid defaults to its
    /// pid, its comm to empty; a `guest_tid` without a `guest_pid` is not
    /// kept (the outputs ignore it too). A vCPU index above 255 is an
    /// `InvalidInput` error.
    pub fn sample(&mut self, s: &GuestSample<'_>) -> io::Result<()> {
        let vcpu = u8::try_from(s.cpu).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("vCPU {} does not fit the raw stream's u8 vCPU field", s.cpu),
            )
        })?;
        let w = &mut self.w;
        let task = s.guest_pid.map(|pid| (pid, s.guest_tid.unwrap_or(pid)));
        let comm = match task {
            Some(_) => cut_str(s.comm.unwrap_or(""), MAX_COMM).as_bytes(),
            None => &[],
        };
        let frames = &s.callchain[..s.callchain.len().min(MAX_FRAMES)];
        let (pid, tid) = task.unwrap_or((0, 0));
        w.write_all(&[TAG_SAMPLE, vcpu, u8::from(s.user)])?;
        w.write_all(&[comm.len() as u8, u8::from(task.is_some())])?;
        w.write_all(&(frames.len() as u16).to_le_bytes())?;
        let start_code = task.and(s.start_code);
        w.write_all(&u16::from(start_code.is_some()).to_le_bytes())?;
        for v in [s.vcpu_tid, pid, tid] {
            w.write_all(&v.to_le_bytes())?;
        }
        for v in [s.time_ns, s.ip, s.period] {
            w.write_all(&v.to_le_bytes())?;
        }
        if let Some(sc) = start_code {
            w.write_all(&sc.to_le_bytes())?;
        }
        w.write_all(comm)?;
        for f in frames {
            w.write_all(&f.to_le_bytes())?;
        }
        Ok(())
    }

    /// The final counters, then flush: the end of the stream.
    pub fn finish(mut self, st: RawStats) -> io::Result<()> {
        self.w.write_all(&[TAG_STATS])?;
        for v in [st.lost, st.walks, st.walk_ns] {
            self.w.write_all(&v.to_le_bytes())?;
        }
        self.w.flush()
    }
}

/// Reads a stream; [`RawReader::open`] checks the header.
pub struct RawReader<R: Read> {
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
    pub fn open(mut r: R) -> Result<Self, RawError> {
        Header::read(&mut r)?;
        Ok(RawReader { r })
    }

    /// The next item, or `None` at a clean end.
    pub fn next_item(&mut self) -> Result<Option<RawItem>, RawError> {
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
                let flags = u16_le(r)?;
                let vcpu_tid = u32_le(r)?;
                let pid = u32_le(r)?;
                let tid = u32_le(r)?;
                let time_ns = u64_le(r)?;
                let ip = u64_le(r)?;
                let period = u64_le(r)?;
                // Flag bit 0: the task's start_code follows (other bits
                // are not written; a reader ignores them).
                let start_code = if flags & FLAG_START_CODE != 0 {
                    Some(u64_le(r)?)
                } else {
                    None
                };
                // comm_len ≤ MAX_COMM by its width: a fixed buffer.
                let mut comm = [0u8; MAX_COMM];
                let comm = &mut comm[..comm_len];
                r.read_exact(comm).map_err(RawError::Io)?;
                let comm = std::str::from_utf8(comm).map_err(|_| RawError::Comm)?;
                // Grown as frames arrive (not reserved from nframes): a
                // short stream that claims MAX_FRAMES allocates little.
                let mut callchain = Vec::new();
                for _ in 0..nframes {
                    callchain.push(u64_le(r)?);
                }
                Ok(Some(RawItem::Sample(RawSample {
                    vcpu,
                    vcpu_tid,
                    time_ns,
                    ip,
                    user,
                    task: has_task.then(|| RawTask {
                        pid,
                        tid,
                        comm: comm.to_owned(),
                        start_code,
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

    fn samples() -> Vec<RawSample> {
        vec![
            RawSample {
                vcpu: 1,
                vcpu_tid: 4242,
                time_ns: 123,
                ip: 0xffff_ffff_8100_0000,
                user: false,
                task: Some(RawTask {
                    pid: 7,
                    tid: 8,
                    comm: "pv-workload".into(),
                    start_code: Some(0x5555_5555_5000),
                }),
                callchain: vec![1, 2, 3],
                period: 1_000_000,
            },
            RawSample {
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

    fn stream(samples: &[RawSample], st: RawStats) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = RawWriter::new(&mut buf).unwrap();
        for s in samples {
            w.sample(&s.as_guest_sample()).unwrap();
        }
        w.finish(st).unwrap();
        buf
    }

    fn read_all(buf: &[u8]) -> Result<(Vec<RawSample>, Option<RawStats>), RawError> {
        let mut r = RawReader::open(buf)?;
        let (mut back, mut stats) = (Vec::new(), None);
        while let Some(item) = r.next_item()? {
            match item {
                RawItem::Sample(s) => back.push(s),
                RawItem::Stats(s) => stats = Some(s),
            }
        }
        Ok((back, stats))
    }

    #[test]
    fn raw_samples_round_trip() {
        let st = RawStats {
            lost: 1,
            walks: 2,
            walk_ns: 3,
        };
        let buf = stream(&samples(), st);
        let (back, stats) = read_all(&buf).unwrap();
        assert_eq!(stats, Some(st));
        assert_eq!(back, samples());
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
        assert!(e.to_string().contains("reads version 4"));
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

    /// A comm longer than the field is cut on a character boundary, so what
    /// is read back is the UTF-8 prefix, and reads back the same again.
    #[test]
    fn a_long_comm_is_cut_on_a_character_boundary() {
        let mut s = samples().remove(0);
        // 254 ASCII bytes then a 3-byte character across the 255-byte limit.
        let long = format!("{}€tail", "a".repeat(254));
        s.task.as_mut().unwrap().comm = long;
        let (back, _) = read_all(&stream(&[s], RawStats::default())).unwrap();
        assert_eq!(back[0].task.as_ref().unwrap().comm, "a".repeat(254));
        let again = read_all(&stream(&back, RawStats::default())).unwrap().0;
        assert_eq!(again, back);
    }

    #[test]
    fn a_comm_that_is_not_utf8_is_an_error() {
        let mut buf = stream(&samples()[..1], RawStats::default());
        // The comm follows the 16-byte header, the 45-byte fixed part and
        // the task's start_code.
        let at = 16 + 45 + 8;
        assert_eq!(&buf[at..at + 11], b"pv-workload");
        buf[at] = 0xff;
        let e = read_all(&buf).err().unwrap();
        assert!(matches!(e, RawError::Comm), "{e}");
    }

    /// A sample that claims the most frames but ends at once is an I/O
    /// error (unexpected end), after reading only what is there.
    #[test]
    fn a_frame_count_beyond_the_bytes_is_an_error() {
        let mut buf = stream(&samples()[1..], RawStats::default());
        buf.truncate(16 + 45);
        buf[16 + 5..16 + 7].copy_from_slice(&u16::MAX.to_le_bytes());
        buf.extend_from_slice(&7u64.to_le_bytes());
        let e = read_all(&buf).err().unwrap();
        assert!(
            matches!(&e, RawError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof),
            "{e}"
        );
    }

    #[test]
    fn a_vcpu_above_255_is_refused_by_the_writer() {
        let s = samples().remove(0);
        let mut g = s.as_guest_sample();
        g.cpu = 256;
        let mut w = RawWriter::new(Vec::new()).unwrap();
        let e = w.sample(&g).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
