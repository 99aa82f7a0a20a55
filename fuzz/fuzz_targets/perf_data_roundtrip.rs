//! Fuzzes record's perf.data writer (record/src/perf_data.rs) end to end:
//! samples the guest shapes (pids, tids, comms, instruction pointers,
//! callchains) go in, the file comes back out and is read as perf reads it.
//!
//! Feeds: a recording set-up from the first byte (1-4 vCPUs, callchains on
//! or off, with or without guest kernel symbols (a System.map, so the
//! output is a perf.data directory with a guest kernel MMAP), with or
//! without two static guest binaries (MMAP2 records on exec changes),
//! vCPU thread ids known up front or not, frequency or period), then up
//! to 200 samples sliced from the rest: vCPU (sometimes out of range),
//! vCPU thread id, guest pid/tid/comm (each maybe absent; comms with NULs,
//! multibyte characters, longer than 15), time, ip, period and callchain
//! (kernel, user, zero and context-marker-range addresses; sometimes more
//! than PERF_MAX_FRAMES), written through PerfDataWriter into a tempdir.
//!
//! Checks, reading the file back with its own parser and perf-ring's
//! record decoder (`perf_ring::decode`):
//! - `sample` fails exactly for a vCPU outside the recording;
//! - the perf_file_header (PERFILE2): sizes, the ids, attr, data and
//!   feature sections in order, inside the file, the feature payloads
//!   ending at its end; the attr's sample_type and sample_id_all; the ids;
//!   EVENT_DESC, NRCPUS and SAMPLE_TIME agree with them and the samples;
//! - the data section is records that tile it exactly and all decode:
//!   ID_INDEX first (every id with the VMM's pid and its vCPU), the host
//!   and (with symbols) guest kernel MMAPs, COMMs, MMAP2s, SAMPLEs;
//! - every sample written comes back, in order, with its id, ip, pid/tid
//!   (the VMM's pid and the vCPU thread when the guest task is unknown),
//!   time, cpu, period and cpumode, and its callchain: the mode's context
//!   marker, the ip, the first PERF_MAX_FRAMES frames minus zeros and
//!   marker-range values, each run under the marker of its address space;
//! - when it comes, perf already knows its threads' names (the host vCPU
//!   thread's COMM, the guest thread's latest COMM is its comm cut to 15
//!   characters) and, for a sample with user frames, the binary its comm
//!   runs (or none) is what the MMAP2s map into its process;
//! - the WriteSummary's counts, data size and layout.
//!
//! Why: perf.data is what `perfvisor record` leaves the user, and its
//! contents are guest-chosen; a wrong offset or size makes perf reject or
//! misread the whole file, a lost COMM or MMAP2 silently misnames samples.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perf_ring::abi::{context, misc, record as rec, sample as st};
use perf_ring::{decode, Body, SampleFormat};
use record::{is_kernel_address, GuestSample, Layout, PerfDataWriter, RecordMeta, PERF_MAX_FRAMES};

const VMM_PID: u32 = 4242;
const KERNEL_TEXT: u64 = 0xffff_ffff_8100_0000;
const ATTR_SIZE: usize = 128;
const HEADER_SIZE: usize = 104;
const PERF_RECORD_ID_INDEX: u32 = 69;
/// perf's own record types (no sample_id trailer) start here.
const USER_TYPE_START: u32 = 64;
const MAX_SAMPLES: usize = 200;
/// The feature bits the writer sets (util/header.h numbers).
const FEATURES: [u32; 14] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 21];
const HEADER_NRCPUS: u32 = 7;
const HEADER_EVENT_DESC: u32 = 12;
const HEADER_SAMPLE_TIME: u32 = 21;

/// A guest binary the fixture wrote: (comm that runs it, canonical path,
/// load address of its one executable segment).
struct Binary {
    name: &'static str,
    path: PathBuf,
    base: u64,
}

struct Fixture {
    dir: tempfile::TempDir,
    system_map: PathBuf,
    binaries: Vec<Binary>,
}

/// A minimal static, non-PIE x86-64 ELF: one R+X PT_LOAD at `base`, a
/// .text section in it and one function symbol, `fuzz_main`.
fn tiny_elf(base: u64) -> Vec<u8> {
    fn u16_(b: &mut Vec<u8>, v: u16) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    fn u32_(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    fn u64_(b: &mut Vec<u8>, v: u64) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    const TEXT_OFF: u64 = 0x100;
    const TEXT_LEN: u64 = 0x100;
    const SYMTAB_OFF: u64 = 0x200;
    const STRTAB: &[u8] = b"\0fuzz_main\0";
    const SHSTRTAB: &[u8] = b"\0.text\0.symtab\0.strtab\0.shstrtab\0";
    let strtab_off = SYMTAB_OFF + 48;
    let shstrtab_off = strtab_off + STRTAB.len() as u64;
    let sh_off = (shstrtab_off + SHSTRTAB.len() as u64).div_ceil(8) * 8;

    let mut b = Vec::new();
    b.extend_from_slice(b"\x7fELF\x02\x01\x01");
    b.resize(16, 0);
    u16_(&mut b, 2); // ET_EXEC
    u16_(&mut b, 62); // EM_X86_64
    u32_(&mut b, 1);
    u64_(&mut b, base + TEXT_OFF); // e_entry
    u64_(&mut b, 64); // e_phoff
    u64_(&mut b, sh_off);
    u32_(&mut b, 0);
    for v in [64u16, 56, 1, 64, 5, 4] {
        u16_(&mut b, v); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    // PT_LOAD, PF_R | PF_X, the headers and .text.
    u32_(&mut b, 1);
    u32_(&mut b, 5);
    for v in [
        0,
        base,
        base,
        TEXT_OFF + TEXT_LEN,
        TEXT_OFF + TEXT_LEN,
        0x1000,
    ] {
        u64_(&mut b, v);
    }
    b.resize(TEXT_OFF as usize, 0);
    b.resize((TEXT_OFF + TEXT_LEN) as usize, 0xcc);
    // .symtab: the null symbol, then fuzz_main (GLOBAL FUNC in .text).
    b.resize(SYMTAB_OFF as usize + 24, 0);
    u32_(&mut b, 1);
    b.extend_from_slice(&[0x12, 0]);
    u16_(&mut b, 1);
    u64_(&mut b, base + TEXT_OFF);
    u64_(&mut b, 0x40);
    b.extend_from_slice(STRTAB);
    b.extend_from_slice(SHSTRTAB);
    b.resize(sh_off as usize, 0);
    // Section headers: name, type, flags, addr, offset, size, link, info,
    // align, entsize.
    let mut sh = |name: u32,
                  ty: u32,
                  flags: u64,
                  addr: u64,
                  off: u64,
                  size: u64,
                  link: u32,
                  info: u32,
                  align: u64,
                  entsize: u64| {
        u32_(&mut b, name);
        u32_(&mut b, ty);
        u64_(&mut b, flags);
        u64_(&mut b, addr);
        u64_(&mut b, off);
        u64_(&mut b, size);
        u32_(&mut b, link);
        u32_(&mut b, info);
        u64_(&mut b, align);
        u64_(&mut b, entsize);
    };
    sh(0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    sh(1, 1, 6, base + TEXT_OFF, TEXT_OFF, TEXT_LEN, 0, 0, 16, 0);
    sh(7, 2, 0, 0, SYMTAB_OFF, 48, 3, 1, 8, 24);
    sh(15, 3, 0, 0, strtab_off, STRTAB.len() as u64, 0, 0, 1, 0);
    sh(23, 3, 0, 0, shstrtab_off, SHSTRTAB.len() as u64, 0, 0, 1, 0);
    b
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a tempdir");
        let system_map = dir.path().join("System.map");
        std::fs::write(
            &system_map,
            format!(
                "{KERNEL_TEXT:016x} T _text\n{:016x} T start_kernel\n{:016x} t do_fuzz\n",
                KERNEL_TEXT + 0x100,
                KERNEL_TEXT + 0x1000
            ),
        )
        .unwrap();
        let binaries = [("fuzzbin", 0x40_0000), ("other", 0x60_0000)]
            .into_iter()
            .map(|(name, base)| {
                let p = dir.path().join(name);
                std::fs::write(&p, tiny_elf(base)).unwrap();
                Binary {
                    name,
                    path: std::fs::canonicalize(&p).unwrap(),
                    base,
                }
            })
            .collect();
        Fixture {
            dir,
            system_map,
            binaries,
        }
    })
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..4 {
            v |= u32::from(self.byte()?) << (8 * i);
        }
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Some(v)
    }
    /// An address: any, kernel text, either binary's text, zero, or in
    /// the context-marker range.
    fn addr(&mut self) -> Option<u64> {
        let small = |v: u8| u64::from(v) * 8;
        Some(match self.byte()? % 6 {
            0 => self.u64()?,
            1 => KERNEL_TEXT + small(self.byte()?),
            2 => 0x40_0100 + small(self.byte()?),
            3 => 0x60_0100 + small(self.byte()?),
            4 => 0,
            _ => context::MAX + u64::from(self.byte()?),
        })
    }
}

/// One sample as the fuzzer made it (owned; lent as a GuestSample).
#[derive(Debug)]
struct Spec {
    cpu: u32,
    vcpu_tid: u32,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<String>,
    time: u64,
    ip: u64,
    user: bool,
    chain: Vec<u64>,
    period: u64,
}

impl Spec {
    fn parse(inp: &mut Input<'_>, nr_cpus: u32) -> Option<Spec> {
        let f = inp.byte()?;
        let cpu = if f & 0x80 != 0 {
            nr_cpus + u32::from(f & 3)
        } else {
            u32::from(f) % nr_cpus
        };
        let t = inp.byte()?;
        let vcpu_tid = if t % 8 < 6 {
            100 + u32::from(t % 6)
        } else {
            inp.u32()?
        };
        let pick = |b: u8, inp: &mut Input<'_>| -> Option<Option<u32>> {
            Some(match b % 6 {
                0 => None,
                1 => Some(1),
                2 => Some(2),
                3 => Some(VMM_PID),
                4 => Some(100),
                _ => Some(inp.u32()?),
            })
        };
        let p = inp.byte()?;
        let pid = pick(p & 7, inp)?;
        let tid = pick(p >> 3, inp)?;
        let comm = match inp.byte()? % 7 {
            0 => None,
            1 => Some("fuzzbin".into()),
            2 => Some("other".into()),
            3 => Some("init".into()),
            4 => Some("a-comm-longer-than-fifteen".into()),
            _ => {
                let len = usize::from(inp.byte()? % 24);
                let raw: Vec<u8> = (0..len).map_while(|_| inp.byte()).collect();
                Some(String::from_utf8_lossy(&raw).into_owned())
            }
        };
        let time = inp.u64()?;
        let ip = inp.addr()?;
        let period = u64::from(inp.u32()?);
        let n = inp.byte()?;
        let chain = if n == 255 {
            // Past PERF_MAX_FRAMES: kernel and user frames alternating in
            // runs, zeros and markers among them.
            let seed = inp.u64()?;
            (0..PERF_MAX_FRAMES as u64 + 77)
                .map(|i| match i.wrapping_add(seed) % 7 {
                    0 | 1 => KERNEL_TEXT + 8 * i,
                    2 | 3 => 0x40_0100 + 8 * i,
                    4 => 0,
                    5 => context::USER,
                    _ => seed.rotate_left(i as u32),
                })
                .collect()
        } else {
            (0..n % 48)
                .map(|_| inp.addr())
                .collect::<Option<Vec<u64>>>()?
        };
        Some(Spec {
            cpu,
            vcpu_tid,
            pid,
            tid,
            comm,
            time,
            ip,
            user: f & 0x40 != 0,
            chain,
            period,
        })
    }

    fn guest_sample(&self) -> GuestSample<'_> {
        GuestSample {
            cpu: self.cpu,
            vcpu_tid: self.vcpu_tid,
            guest_pid: self.pid,
            guest_tid: self.tid,
            comm: self.comm.as_deref(),
            start_code: None,
            time_ns: self.time,
            ip: self.ip,
            user: self.user,
            callchain: &self.chain,
            period: self.period,
        }
    }

    /// (pid, tid) in perf: the guest task's, else the VMM and vCPU thread.
    fn ids(&self) -> (u32, u32) {
        match self.pid {
            Some(p) => (p, self.tid.unwrap_or(p)),
            None => (VMM_PID, self.vcpu_tid),
        }
    }

    /// The name perf must know the sample's guest thread by, if given.
    fn comm_name(&self) -> Option<String> {
        let c = match self.pid {
            Some(_) => self.comm.clone()?,
            None => format!("[vcpu{}]", self.cpu),
        };
        Some(c.chars().take(15).filter(|c| *c != '\0').collect())
    }

    fn has_user_frames(&self) -> bool {
        self.user || self.chain.iter().any(|a| *a != 0 && !is_kernel_address(*a))
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}
/// A perf_file_section (offset, size) at `off`, checked to lie in `b`.
fn section(b: &[u8], off: usize) -> (usize, usize) {
    let (o, s) = (u64_at(b, off), u64_at(b, off + 8));
    let end = o.checked_add(s).expect("section end overflows");
    assert!(
        end <= b.len() as u64,
        "section {o:#x}+{s:#x} past the file ({:#x})",
        b.len()
    );
    (o as usize, s as usize)
}
/// A NUL-padded string: the bytes before the first NUL.
fn padded_str(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .expect("a NUL-terminated name");
    &b[..end]
}

/// Checks a decoded callchain against the sample that made it.
fn check_chain(s: &Spec, got: &[u64]) {
    let mode = if s.user {
        context::USER
    } else {
        context::KERNEL
    };
    assert_eq!(
        got.first(),
        Some(&mode),
        "the chain starts with the mode's marker"
    );
    let mut want: Vec<u64> = Vec::new();
    if s.ip < context::MAX {
        want.push(s.ip);
    }
    want.extend(
        s.chain
            .iter()
            .take(PERF_MAX_FRAMES)
            .copied()
            .filter(|a| *a != 0 && *a < context::MAX),
    );
    let addrs: Vec<u64> = got.iter().copied().filter(|a| *a < context::MAX).collect();
    assert_eq!(addrs, want, "the chain's addresses");
    // Every frame (after the ip) sits under its own space's marker, and a
    // marker comes only when the space changes.
    let mut ctx = mode;
    let frames = &got[1 + usize::from(s.ip < context::MAX)..];
    for &a in frames {
        if a >= context::MAX {
            assert!(a == context::KERNEL || a == context::USER, "marker {a:#x}");
            assert_ne!(a, ctx, "a marker that changes nothing");
            ctx = a;
        } else {
            let space = if is_kernel_address(a) {
                context::KERNEL
            } else {
                context::USER
            };
            assert_eq!(space, ctx, "frame {a:#x} under the wrong marker");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let mut inp = Input(data);
    let Some(cfg) = inp.byte() else { return };
    let nr = 1 + u32::from(cfg & 3);
    let callchain = cfg & 4 != 0;
    let symbols = cfg & 8 != 0;
    let binaries = cfg & 16 != 0;
    let tids_known = cfg & 32 != 0;
    let freq = if cfg & 64 != 0 { 0 } else { 997 };

    let mut meta = RecordMeta::new(nr, freq);
    meta.hostname = "fuzz".into();
    meta.cmdline = vec!["perfvisor".into(), "record".into()];
    meta.vmm_pid = VMM_PID;
    meta.callchain = callchain;
    if symbols {
        meta.guest_system_map = Some(fx.system_map.clone());
    }
    if binaries {
        meta.guest_binaries = fx
            .binaries
            .iter()
            .map(|b| record::GuestBinary {
                path: b.path.clone(),
                name: Some(b.name.into()),
            })
            .collect();
    }
    if tids_known {
        meta.vcpu_tids = (0..nr).map(|i| 100 + i).collect();
    }
    let root = fx.dir.path().join("perf.data");
    let mut w = PerfDataWriter::create(&root, &meta).expect("the writer is created");
    let mut written = Vec::new();
    while written.len() < MAX_SAMPLES {
        let Some(s) = Spec::parse(&mut inp, nr) else {
            break;
        };
        let r = w.sample(&s.guest_sample());
        assert_eq!(
            r.is_ok(),
            s.cpu < nr,
            "sample() fails exactly for a vCPU out of range: {r:?}"
        );
        if r.is_ok() {
            written.push(s);
        }
    }
    let summary = w.finish().expect("finish");

    // The summary.
    assert_eq!(summary.path, root);
    assert_eq!(
        summary.layout,
        if symbols {
            Layout::Directory
        } else {
            Layout::File
        }
    );
    assert_eq!(summary.samples, written.len() as u64);
    assert_eq!(
        summary.user_samples,
        written.iter().filter(|s| s.user).count() as u64
    );
    assert_eq!(
        summary.kernel_samples,
        written.iter().filter(|s| !s.user).count() as u64
    );
    assert_eq!(summary.machine_pid, VMM_PID);
    assert_eq!(summary.untracked_task_samples, 0);
    let data_path: &Path = &if symbols {
        root.join("data")
    } else {
        root.clone()
    };
    if symbols {
        let k =
            std::fs::read_to_string(root.join(format!("kcore_dir__{VMM_PID}/kallsyms"))).unwrap();
        assert!(
            k.starts_with(&format!("{KERNEL_TEXT:016x} t perfvisor_guest_text\n")),
            "{k}"
        );
    }
    let f = std::fs::read(data_path).expect("the perf.data file");

    // perf_file_header.
    assert!(f.len() >= HEADER_SIZE);
    assert_eq!(&f[..8], b"PERFILE2");
    assert_eq!(u64_at(&f, 8), HEADER_SIZE as u64);
    assert_eq!(u64_at(&f, 16), (ATTR_SIZE + 16) as u64, "attr_size");
    let attrs = section(&f, 24);
    let data_sec = section(&f, 40);
    assert_eq!(u64_at(&f, 56), 0, "event_types unused");
    assert_eq!(u64_at(&f, 64), 0, "event_types unused");
    let bits: [u64; 4] = std::array::from_fn(|i| u64_at(&f, 72 + 8 * i));
    let want_bits = FEATURES.iter().fold([0u64; 4], |mut b, f| {
        b[(*f / 64) as usize] |= 1 << (f % 64);
        b
    });
    assert_eq!(bits, want_bits, "feature bits");

    // The ids, then the one attr, then the data.
    let ids_off = HEADER_SIZE;
    assert_eq!(
        attrs,
        (ids_off + 8 * nr as usize, ATTR_SIZE + 16),
        "attrs section"
    );
    let attr = &f[attrs.0..attrs.0 + ATTR_SIZE];
    assert_eq!(u32_at(attr, 0), perf_ring::attr::PERF_TYPE_SOFTWARE);
    assert_eq!(u32_at(attr, 4), ATTR_SIZE as u32);
    let sample_type = u64_at(attr, 24);
    let mut want_type = st::IDENTIFIER | st::IP | st::TID | st::TIME | st::CPU | st::PERIOD;
    if callchain {
        want_type |= st::CALLCHAIN;
    }
    assert_eq!(sample_type, want_type, "sample_type");
    let flags = u64_at(attr, 40);
    let fl = perf_ring::attr::flag::SAMPLE_ID_ALL | perf_ring::attr::flag::EXCLUDE_HOST;
    assert_eq!(flags & fl, fl, "sample_id_all and exclude_host");
    assert_eq!(
        flags & perf_ring::attr::flag::FREQ != 0,
        freq != 0,
        "freq flag"
    );
    let id_sec = section(&f, attrs.0 + ATTR_SIZE);
    assert_eq!(id_sec, (ids_off, 8 * nr as usize), "the attr's ids section");
    let ids: Vec<u64> = (0..nr as usize)
        .map(|i| u64_at(&f, ids_off + 8 * i))
        .collect();
    assert_eq!(
        ids,
        (1..=u64::from(nr)).collect::<Vec<_>>(),
        "one id per vCPU"
    );
    assert_eq!(data_sec.0, attrs.0 + attrs.1, "data follows the attrs");
    assert_eq!(data_sec.1 as u64, summary.data_bytes);

    // The feature sections: a table right after the data, one entry per
    // bit in bit order, payloads back to back up to the end of the file.
    let table = data_sec.0 + data_sec.1;
    let mut next = table + 16 * FEATURES.len();
    let mut feature = HashMap::new();
    for (i, bit) in FEATURES.iter().enumerate() {
        let (o, s) = section(&f, table + 16 * i);
        assert_eq!(o, next, "feature {bit} is where the previous one ended");
        next = o + s;
        feature.insert(*bit, &f[o..o + s]);
    }
    assert_eq!(next, f.len(), "the last feature ends the file");
    let nrcpus = feature[&HEADER_NRCPUS];
    assert_eq!((u32_at(nrcpus, 0), u32_at(nrcpus, 4)), (nr, nr));
    let times = feature[&HEADER_SAMPLE_TIME];
    let first = written.iter().map(|s| s.time).min().unwrap_or(0);
    let last = written.iter().map(|s| s.time).max().unwrap_or(0);
    assert_eq!(
        (u64_at(times, 0), u64_at(times, 8)),
        (first, last),
        "SAMPLE_TIME"
    );
    let desc = feature[&HEADER_EVENT_DESC];
    assert_eq!((u32_at(desc, 0), u32_at(desc, 4)), (1, ATTR_SIZE as u32));
    assert_eq!(&desc[8..8 + ATTR_SIZE], attr, "EVENT_DESC repeats the attr");
    assert_eq!(u32_at(desc, 8 + ATTR_SIZE), nr, "EVENT_DESC's ids");
    let name_len = u32_at(desc, 12 + ATTR_SIZE) as usize;
    let name_at = 16 + ATTR_SIZE;
    assert_eq!(
        padded_str(&desc[name_at..name_at + name_len]),
        b"cpu-clock:G"
    );
    let desc_ids: Vec<u64> = (0..nr as usize)
        .map(|i| u64_at(desc, name_at + name_len + 8 * i))
        .collect();
    assert_eq!(desc_ids, ids);
    assert_eq!(desc.len(), name_at + name_len + 8 * nr as usize);

    // The data section, record by record.
    let fmt = SampleFormat::new(sample_type, 0, true).expect("a format perf-ring lays out");
    let own = SampleFormat::new(sample_type, 0, false).unwrap();
    let data = &f[data_sec.0..table];
    let mut off = 0;
    let mut n_records = 0usize;
    let mut expect = written.iter();
    let mut comms: HashMap<(bool, u32, u32), Vec<u8>> = HashMap::new();
    let mut maps: HashMap<u32, Option<usize>> = HashMap::new();
    let (mut host_mmaps, mut guest_mmaps) = (0, 0);
    while off < data.len() {
        assert!(data.len() - off >= 8, "a partial header at {off:#x}");
        let size = usize::from(u16_at(data, off + 6));
        assert!(
            size >= 8 && size % 8 == 0 && off + size <= data.len(),
            "record size {size} at {off:#x}"
        );
        let bytes = &data[off..off + size];
        let ty = u32_at(bytes, 0);
        let r = decode(if ty >= USER_TYPE_START { &own } else { &fmt }, bytes)
            .unwrap_or_else(|e| panic!("record {n_records} (type {ty}) at {off:#x}: {e}"));
        let mode = r.cpumode();
        if n_records == 0 {
            assert_eq!(ty, PERF_RECORD_ID_INDEX, "ID_INDEX comes first");
        }
        match (ty, r.body) {
            (PERF_RECORD_ID_INDEX, Body::Other(b)) => {
                assert_eq!(n_records, 0, "one ID_INDEX");
                let n = nr as usize;
                assert_eq!(u64_at(&b, 0), n as u64);
                assert_eq!(b.len(), 8 + 32 * n + 16 * n);
                for i in 0..n {
                    let e = 8 + 32 * i;
                    assert_eq!((u64_at(&b, e), u64_at(&b, e + 8)), (ids[i], i as u64));
                    let tid = if tids_known { 100 + i as u64 } else { u64::MAX };
                    assert_eq!(u64_at(&b, e + 24), tid, "id {i}'s thread");
                    let m = 8 + 32 * n + 16 * i;
                    assert_eq!(
                        (u64_at(&b, m), u64_at(&b, m + 8)),
                        (u64::from(VMM_PID), i as u64)
                    );
                }
            }
            (rec::COMM, Body::Other(b)) => {
                let sid = r.sample_id.expect("a COMM carries sample_id");
                let (pid, tid) = (u32_at(&b, 0), u32_at(&b, 4));
                assert_eq!((sid.pid, sid.tid), (pid, tid), "COMM trailer");
                assert!(ids.contains(&sid.id));
                let guest = match mode {
                    misc::GUEST_KERNEL => true,
                    misc::CPUMODE_UNKNOWN => false,
                    m => panic!("COMM with cpumode {m}"),
                };
                assert_eq!(b.len() % 8, 0);
                let name = padded_str(&b[8..]).to_vec();
                if !guest {
                    assert_eq!(pid, VMM_PID, "a host COMM is a VMM thread's");
                    assert!(name.starts_with(b"vcpu"), "{name:?}");
                }
                comms.insert((guest, pid, tid), name);
            }
            (rec::MMAP, Body::Other(b)) => {
                let (pid, start, len, pgoff) =
                    (u32_at(&b, 0), u64_at(&b, 8), u64_at(&b, 16), u64_at(&b, 24));
                let name = padded_str(&b[32..]);
                assert_eq!(len, u64::MAX - start);
                if mode == misc::KERNEL {
                    assert_eq!((pid, name), (u32::MAX, &b"[kernel.kallsyms]_text"[..]));
                    host_mmaps += 1;
                } else {
                    assert_eq!(mode, misc::GUEST_KERNEL);
                    assert!(symbols, "a guest kernel map without guest kernel symbols");
                    let want = format!("[guest.kernel.kallsyms.{VMM_PID}]perfvisor_guest_text");
                    assert_eq!(
                        (pid, name, start, pgoff),
                        (VMM_PID, want.as_bytes(), KERNEL_TEXT, KERNEL_TEXT)
                    );
                    guest_mmaps += 1;
                }
            }
            (rec::MMAP2, Body::Other(b)) => {
                assert!(binaries, "MMAP2 without guest binaries");
                assert_eq!(mode, misc::GUEST_USER);
                let (pid, start, len) = (u32_at(&b, 0), u64_at(&b, 8), u64_at(&b, 16));
                let prot = u32_at(&b, 56);
                let name = padded_str(&b[64..]);
                let seg = fx
                    .binaries
                    .iter()
                    .position(|x| x.base == start)
                    .expect("a binary's segment");
                assert_eq!(len, 0x1000);
                let now = if name == b"//anon" {
                    assert_eq!(prot, 1, "an unmapping anon map is not executable");
                    None
                } else {
                    assert_eq!(name, fx.binaries[seg].path.as_os_str().as_encoded_bytes());
                    assert_eq!(prot, 5);
                    Some(seg)
                };
                maps.insert(pid, now);
            }
            (rec::SAMPLE, Body::Sample(got)) => {
                let s = expect.next().expect("no more samples than were written");
                assert_eq!(host_mmaps, 1, "the host kernel map precedes samples");
                assert_eq!(
                    mode,
                    if s.user {
                        misc::GUEST_USER
                    } else {
                        misc::GUEST_KERNEL
                    }
                );
                let (pid, tid) = s.ids();
                assert_eq!(got.ids.id, ids[s.cpu as usize], "id of {s:?}");
                assert_eq!(got.ip, s.ip);
                assert_eq!((got.ids.pid, got.ids.tid), (pid, tid));
                assert_eq!(got.ids.time, s.time);
                assert_eq!(got.ids.cpu, s.cpu);
                assert_eq!(got.period, s.period.max(1));
                if callchain {
                    check_chain(s, &got.callchain);
                } else {
                    assert!(got.callchain.is_empty());
                }
                assert!(
                    comms.contains_key(&(false, VMM_PID, s.vcpu_tid)),
                    "the vCPU thread is named"
                );
                if let Some(name) = s.comm_name() {
                    assert_eq!(
                        comms.get(&(true, pid, tid)).map(|v| &v[..]),
                        Some(name.as_bytes()),
                        "the thread's name for {s:?}"
                    );
                }
                if binaries && s.has_user_frames() {
                    let want = match (s.pid, s.comm.as_deref()) {
                        (Some(_), Some(c)) => fx.binaries.iter().position(|b| b.name == c),
                        _ => None,
                    };
                    assert_eq!(
                        maps.get(&pid).copied().flatten(),
                        want,
                        "the binary of {s:?}"
                    );
                }
            }
            (ty, body) => panic!("unexpected record type {ty}: {body:?}"),
        }
        off += size;
        n_records += 1;
    }
    assert_eq!(off, data.len(), "records tile the data section");
    assert!(expect.next().is_none(), "every sample written came back");
    assert_eq!(host_mmaps, 1);
    assert_eq!(guest_mmaps, usize::from(symbols));
});
