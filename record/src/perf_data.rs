//! perf.data writer for guest samples taken on the host.
//!
//! Layout (tools/perf/Documentation/perf.data-file-format.txt and
//! tools/perf/util/header.c, Linux 6.1):
//!
//! ```text
//! 0        perf_file_header (PERFILE2, 104 bytes)
//! 104      sample ids, one u64 per vCPU
//!          perf_file_attr: perf_event_attr (128 bytes, VER7) + ids section
//!          data: PERF_RECORD_ID_INDEX, COMM, MMAP, MMAP2, SAMPLE records
//!          feature section table, then the feature payloads
//! ```
//!
//! How the samples become guest samples that perf resolves (util/session.c,
//! util/machine.c, util/symbol.c of 6.1; this is what `perf inject
//! --guest-data` produces):
//!
//! * The attribute has PERF_SAMPLE_IDENTIFIER, one sample id per vCPU, and a
//!   PERF_RECORD_ID_INDEX whose second-format entries give each id a
//!   `machine_pid` (the VMM's pid) and `vcpu`. perf_event__process_id_index()
//!   then registers a guest machine for that pid and turns on guest
//!   processing (`perf_guest = true`): no `perf kvm` or option is needed.
//! * Every record has cpumode GUEST_KERNEL / GUEST_USER in `misc`, so
//!   machines__find_for_cpumode() puts it in that guest machine.
//! * A kernel MMAP `[guest.kernel.kallsyms.PID]perfvisor_guest_text` (pgoff =
//!   `_text`; see [`REF_SYMBOL`]) gives the guest machine its kernel map. perf_session__register_guest() loads
//!   that machine's kernel symbols from `<perf.data dir>/kcore_dir__PID/kallsyms`
//!   (perf_data__guest_kallsyms_name()), so with guest kernel symbols the
//!   output is a perf.data *directory* (`data` + `kcore_dir__PID/kallsyms`),
//!   the layout `perf record --kcore` writes; `perf report -i perf.data`
//!   opens either.
//! * Guest tasks are threads of the guest machine (COMM records with guest
//!   cpumode); a static guest binary is an MMAP2 with guest cpumode whose
//!   file name is its host copy, so perf reads its symbol table.
//! * Callchains use PERF_CONTEXT_KERNEL / PERF_CONTEXT_USER: perf 6.1 resolves
//!   them against the sample thread's machine (the guest), while
//!   PERF_CONTEXT_GUEST* markers make add_callchain_ip() discard the chain.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{RecordError, Result};
use crate::symbols::{self, is_kernel_address, SymbolTable, UserBinary};
use crate::sysinfo;
use crate::{GuestSample, RecordMeta};

use perf_abi::attr::{flag, PERF_ATTR_SIZE_VER7, PERF_COUNT_SW_CPU_CLOCK, PERF_TYPE_SOFTWARE};
use perf_abi::{context, misc, record as rec, sample as st};

/// PERF_RECORD_ID_INDEX: a record type of perf's own (tools/lib/perf
/// event.h, `PERF_RECORD_USER_TYPE_START` + 1), not of the kernel uapi.
const PERF_RECORD_ID_INDEX: u32 = 69;

/// perf_event_attr as of PERF_ATTR_SIZE_VER7 (what 6.1 writes).
const ATTR_SIZE: usize = PERF_ATTR_SIZE_VER7 as usize;
const FILE_HEADER_SIZE: u64 = 104;
/// Callchain frames kept per sample (perf's default max stack is 127);
/// the rest of a longer chain is dropped.
pub const PERF_MAX_FRAMES: usize = 1024;

// Feature bits (util/header.h).
const HEADER_HOSTNAME: u32 = 3;
const HEADER_OSRELEASE: u32 = 4;
const HEADER_VERSION: u32 = 5;
const HEADER_ARCH: u32 = 6;
const HEADER_NRCPUS: u32 = 7;
const HEADER_CPUDESC: u32 = 8;
const HEADER_CPUID: u32 = 9;
const HEADER_TOTAL_MEM: u32 = 10;
const HEADER_CMDLINE: u32 = 11;
const HEADER_EVENT_DESC: u32 = 12;
const HEADER_CPU_TOPOLOGY: u32 = 13;
const HEADER_NUMA_TOPOLOGY: u32 = 14;
const HEADER_PMU_MAPPINGS: u32 = 16;
const HEADER_SAMPLE_TIME: u32 = 21;

/// perf's reference relocation symbol for the guest kernel map: a local text
/// symbol only perfvisor's kallsyms copy has, at the guest's `_text`. Named in
/// the kernel MMAP, it makes perf relocate nothing with our kallsyms and fail
/// (leave guest kernel addresses unresolved) with any other kallsyms, such as
/// the host's /proc/kallsyms, which perf falls back to when the `data` file
/// is read without its directory.
const REF_SYMBOL: &str = "perfvisor_guest_text";

/// The event's name: a software clock that counts only guest time.
const EVENT_NAME: &str = "cpu-clock:G";

/// Whether the output is a single perf.data file or a perf.data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `PATH` is the perf.data file (no guest kernel symbols were given).
    File,
    /// `PATH/data` is the perf.data file and `PATH/kcore_dir__PID/kallsyms`
    /// the guest kernel's symbols; perf opens `PATH` as usual.
    Directory,
}

/// What [`PerfDataWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// What to pass to `perf report -i` / `perf script -i`.
    pub path: PathBuf,
    pub layout: Layout,
    pub samples: u64,
    pub kernel_samples: u64,
    pub user_samples: u64,
    /// Bytes of the data section.
    pub data_bytes: u64,
    /// The guest machine's pid in perf (the VMM's pid).
    pub machine_pid: u32,
    /// Commands that read the file, for the user.
    pub report_hint: String,
    /// Samples of guest threads beyond [`MAX_TASKS`] (their COMM was
    /// written again with each).
    pub untracked_task_samples: u64,
    /// Samples of host vCPU threads beyond [`MAX_HOST_THREADS`] (their
    /// COMM was written again with each).
    pub untracked_host_thread_samples: u64,
}

fn push_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_ne_bytes());
}
fn push_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_ne_bytes());
}
fn push_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_ne_bytes());
}
/// A NUL-terminated string padded with NULs to a multiple of `align`.
fn push_padded_str(b: &mut Vec<u8>, s: &str, align: usize) {
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != 0).collect();
    let len = (bytes.len() + 1).div_ceil(align) * align;
    b.extend_from_slice(&bytes);
    b.resize(b.len() + len - bytes.len(), 0);
}
/// perf_header_string: u32 length (padded to 64 like do_write_string), bytes.
fn push_header_string(b: &mut Vec<u8>, s: &str) {
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != 0).collect();
    let len = (bytes.len() + 1).div_ceil(64) * 64;
    push_u32(b, len as u32);
    b.extend_from_slice(&bytes);
    b.resize(b.len() + len - bytes.len(), 0);
}
fn push_string_list(b: &mut Vec<u8>, list: &[String]) {
    push_u32(b, list.len() as u32);
    for s in list {
        push_header_string(b, s);
    }
}

/// Guest threads and processes whose COMM and binary mapping the writer
/// remembers; samples of further ones are written with their COMM (and
/// MMAP2) again, so the file stays right and memory bounded.
pub const MAX_TASKS: usize = 65_536;

/// Host vCPU threads whose COMM the writer remembers (a VM has at most 255
/// vCPUs; a raw stream read back may name any thread id); samples of
/// further ones get their COMM again.
pub const MAX_HOST_THREADS: usize = 1024;

/// What the writer knows about a guest process.
#[derive(Default)]
struct GuestProcess {
    /// The binary mapped into it in perf's view, if any, and its load bias.
    binary: Option<(usize, u64)>,
    /// Samples of it written so far.
    samples: u64,
}

/// Streams guest samples into a perf.data file (see the module docs).
pub struct PerfDataWriter {
    root: PathBuf,
    layout: Layout,
    data_path: PathBuf,
    out: BufWriter<File>,
    meta: RecordMeta,
    ids: Vec<u64>,
    attr: [u8; ATTR_SIZE],
    sample_type: u64,
    data_offset: u64,
    data_size: u64,
    first_time: Option<u64>,
    last_time: u64,
    samples: u64,
    kernel_samples: u64,
    user_samples: u64,
    binaries: Vec<UserBinary>,
    /// Bounded by [`MAX_HOST_THREADS`].
    host_threads: HashSet<u32>,
    /// Samples of host threads past [`MAX_HOST_THREADS`].
    untracked_host: u64,
    /// Bounded by [`MAX_TASKS`] (the guest chooses its pids and comms).
    guest_comms: HashMap<(u32, u32), String>,
    /// Bounded by [`MAX_TASKS`].
    processes: HashMap<u32, GuestProcess>,
    /// Samples of threads past [`MAX_TASKS`], whose COMM is rewritten.
    untracked: u64,
    buf: Vec<u8>,
    chain: Vec<u64>,
}

fn build_attr(meta: &RecordMeta, sample_type: u64) -> [u8; ATTR_SIZE] {
    let mut a = Vec::with_capacity(ATTR_SIZE);
    push_u32(&mut a, PERF_TYPE_SOFTWARE);
    push_u32(&mut a, ATTR_SIZE as u32);
    push_u64(&mut a, PERF_COUNT_SW_CPU_CLOCK);
    let freq = meta.freq != 0;
    push_u64(&mut a, if freq { u64::from(meta.freq) } else { 1 });
    push_u64(&mut a, sample_type);
    push_u64(&mut a, 0); // read_format
    let mut flags = flag::DISABLED
        | flag::MMAP
        | flag::COMM
        | flag::TASK
        | flag::SAMPLE_ID_ALL
        | flag::EXCLUDE_HOST // guest samples only
        | flag::MMAP2
        | flag::COMM_EXEC;
    if freq {
        flags |= flag::FREQ;
    }
    push_u64(&mut a, flags);
    a.resize(ATTR_SIZE, 0);
    let mut out = [0u8; ATTR_SIZE];
    out.copy_from_slice(&a);
    out
}

/// Removes an earlier output at `path`: a perf.data file (or an empty file, or
/// a symlink), or a directory that holds only what perf.data directories
/// hold. Anything else is refused.
fn clear_output(path: &Path) -> Result<()> {
    let Ok(md) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let exists = || RecordError::OutputExists {
        path: path.to_path_buf(),
    };
    if md.file_type().is_symlink() {
        return fs::remove_file(path).map_err(|e| RecordError::write(path, e));
    }
    if md.is_file() {
        // Only an empty file or a perf.data file (PERFILE2 magic).
        let mut magic = [0u8; 8];
        let n = File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
            .map_err(|e| RecordError::read("output", path, e))?;
        if n != 0 && magic[..n] != b"PERFILE2"[..n] {
            return Err(exists());
        }
        return fs::remove_file(path).map_err(|e| RecordError::write(path, e));
    }
    if !md.is_dir() {
        return Err(exists());
    }
    let entries = fs::read_dir(path).map_err(|e| RecordError::read("output", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| RecordError::read("output", path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name == "data" || name.starts_with("data.") || name.starts_with("kcore_dir")) {
            return Err(exists());
        }
    }
    fs::remove_dir_all(path).map_err(|e| RecordError::write(path, e))
}

impl PerfDataWriter {
    /// Creates the output: a perf.data directory at `path` if `meta` names
    /// guest kernel symbols (System.map or vmlinux), else a perf.data file. An
    /// earlier perf.data file or directory there is replaced.
    pub fn create(path: impl AsRef<Path>, meta: &RecordMeta) -> Result<PerfDataWriter> {
        let root = path.as_ref().to_path_buf();
        if meta.nr_cpus == 0 || meta.nr_cpus > 1024 {
            return Err(RecordError::InvalidMeta(format!(
                "nr_cpus is {}; it must be 1..=1024",
                meta.nr_cpus
            )));
        }
        if meta.vmm_pid == 0 {
            return Err(RecordError::InvalidMeta(
                "vmm_pid is 0; perf names the guest machine after the VMM's pid, which must be non-zero (std::process::id())".into(),
            ));
        }
        let found = symbols::find_kernel_symbols(meta)?.0;
        let kernel: Option<(&SymbolTable, Option<&Path>)> = found
            .as_ref()
            .map(|k| (&k.table, k.is_map.then_some(k.path.as_path())));
        let mut binaries = Vec::new();
        for b in &meta.guest_binaries {
            binaries.push(UserBinary::load(&b.path, b.name.as_deref())?);
        }

        clear_output(&root)?;
        let (layout, data_path) = if let Some((table, map_path)) = &kernel {
            fs::create_dir(&root).map_err(|e| RecordError::Create {
                path: root.clone(),
                source: e,
            })?;
            let kdir = root.join(format!("kcore_dir__{}", meta.vmm_pid));
            fs::create_dir(&kdir).map_err(|e| RecordError::Create {
                path: kdir.clone(),
                source: e,
            })?;
            let kallsyms = kdir.join("kallsyms");
            let ref_addr = table.text_start().or(table.first_start()).unwrap_or(0);
            let mut text = format!("{ref_addr:016x} t {REF_SYMBOL}\n").into_bytes();
            // A System.map / kallsyms copy is already in kallsyms format.
            match map_path {
                Some(p) => {
                    text.extend(fs::read(p).map_err(|e| RecordError::read("System.map", p, e))?)
                }
                None => text.extend(table.to_kallsyms().into_bytes()),
            }
            fs::write(&kallsyms, text).map_err(|e| RecordError::write(&kallsyms, e))?;
            (Layout::Directory, root.join("data"))
        } else {
            (Layout::File, root.clone())
        };
        let text_start = kernel
            .as_ref()
            .map(|(t, _)| t.text_start().or(t.first_start()).unwrap_or(0));

        let file = File::create(&data_path).map_err(|e| RecordError::Create {
            path: data_path.clone(),
            source: e,
        })?;
        let mut sample_type = st::IDENTIFIER | st::IP | st::TID | st::TIME | st::CPU | st::PERIOD;
        if meta.callchain {
            sample_type |= st::CALLCHAIN;
        }
        let ids: Vec<u64> = (1..=u64::from(meta.nr_cpus)).collect();
        let ids_offset = FILE_HEADER_SIZE;
        let attrs_offset = ids_offset + 8 * ids.len() as u64;
        let data_offset = attrs_offset + ATTR_SIZE as u64 + 16;
        let mut w = PerfDataWriter {
            root,
            layout,
            data_path,
            out: BufWriter::with_capacity(1 << 16, file),
            meta: meta.clone(),
            attr: build_attr(meta, sample_type),
            ids,
            sample_type,
            data_offset,
            data_size: 0,
            first_time: None,
            last_time: 0,
            samples: 0,
            kernel_samples: 0,
            user_samples: 0,
            binaries,
            host_threads: HashSet::new(),
            guest_comms: HashMap::new(),
            processes: HashMap::new(),
            untracked: 0,
            untracked_host: 0,
            buf: Vec::with_capacity(4096),
            chain: Vec::with_capacity(PERF_MAX_FRAMES + 8),
        };

        // Header placeholder (rewritten by finish), ids, attr.
        let mut head = vec![0u8; FILE_HEADER_SIZE as usize];
        for id in &w.ids {
            push_u64(&mut head, *id);
        }
        head.extend_from_slice(&w.attr);
        push_u64(&mut head, ids_offset);
        push_u64(&mut head, 8 * w.ids.len() as u64);
        debug_assert_eq!(head.len() as u64, data_offset);
        w.write_raw(&head)?;

        w.write_id_index()?;
        w.write_host_kernel_mmap()?;
        if let Some(text_start) = text_start {
            w.write_kernel_mmap(text_start)?;
        }
        for (cpu, tid) in meta.vcpu_tids.clone().into_iter().enumerate() {
            w.ensure_host_thread(cpu as u32, tid)?;
        }
        Ok(w)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| RecordError::write(&self.data_path, e))
    }

    /// Writes the record in `self.buf` (header included, size patched).
    fn emit(&mut self) -> Result<()> {
        let len = self.buf.len();
        let size = u16::try_from(len).map_err(|_| {
            RecordError::InvalidSample(format!("record of {len} bytes exceeds perf's 64 KiB"))
        })?;
        self.buf[6..8].copy_from_slice(&size.to_ne_bytes());
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_raw(&buf);
        self.buf = buf;
        self.data_size += len as u64;
        r
    }

    fn begin(&mut self, ty: u32, misc: u16) {
        self.buf.clear();
        push_u32(&mut self.buf, ty);
        push_u16(&mut self.buf, misc);
        push_u16(&mut self.buf, 0);
    }

    /// The sample_id_all trailer: TID, TIME, CPU, IDENTIFIER.
    fn trailer(&mut self, pid: u32, tid: u32, time: u64, cpu: u32) {
        let id = self.ids[(cpu as usize).min(self.ids.len() - 1)];
        push_u32(&mut self.buf, pid);
        push_u32(&mut self.buf, tid);
        push_u64(&mut self.buf, time);
        push_u32(&mut self.buf, cpu);
        push_u32(&mut self.buf, 0);
        push_u64(&mut self.buf, id);
    }

    /// PERF_RECORD_ID_INDEX with machine_pid/vcpu (id_index_entry_2).
    fn write_id_index(&mut self) -> Result<()> {
        self.begin(PERF_RECORD_ID_INDEX, 0);
        let nr = self.ids.len();
        push_u64(&mut self.buf, nr as u64);
        for (i, id) in self.ids.clone().into_iter().enumerate() {
            let tid = self
                .meta
                .vcpu_tids
                .get(i)
                .map_or(u64::MAX, |t| u64::from(*t));
            push_u64(&mut self.buf, id);
            push_u64(&mut self.buf, i as u64); // idx
            push_u64(&mut self.buf, u64::MAX); // cpu: -1, per-thread on the host
            push_u64(&mut self.buf, tid);
        }
        for i in 0..nr {
            push_u64(&mut self.buf, u64::from(self.meta.vmm_pid));
            push_u64(&mut self.buf, i as u64);
        }
        self.emit()
    }

    /// The host kernel's map, `[kernel.kallsyms]_text`, as perf record writes
    /// it. No sample hits it; without it `perf report` warns that kernel
    /// address maps were restricted (report__warn_kptr_restrict() looks at
    /// the host machine's kernel map).
    fn write_host_kernel_mmap(&mut self) -> Result<()> {
        let text = sysinfo::host_kernel_text();
        let start = text.unwrap_or(0xffff_ffff_8100_0000);
        self.begin(rec::MMAP, misc::KERNEL);
        push_u32(&mut self.buf, u32::MAX); // pid -1: the host kernel
        push_u32(&mut self.buf, 0);
        push_u64(&mut self.buf, start);
        push_u64(&mut self.buf, u64::MAX - start);
        push_u64(&mut self.buf, text.unwrap_or(0));
        push_padded_str(&mut self.buf, "[kernel.kallsyms]_text", 8);
        self.trailer(u32::MAX, 0, 0, 0);
        self.emit()
    }

    /// The guest kernel's map, `[guest.kernel.kallsyms.PID]` + the reference
    /// symbol, from `_text` up. Only written with guest kernel symbols: for a
    /// guest machine without kcore_dir__PID/kallsyms perf would read the
    /// host's /proc/kallsyms and show host symbols for guest addresses.
    fn write_kernel_mmap(&mut self, text_start: u64) -> Result<()> {
        let start = text_start;
        let pid = self.meta.vmm_pid;
        let name = format!("[guest.kernel.kallsyms.{pid}]{REF_SYMBOL}");
        self.begin(rec::MMAP, misc::GUEST_KERNEL);
        push_u32(&mut self.buf, pid);
        push_u32(&mut self.buf, 0);
        push_u64(&mut self.buf, start);
        push_u64(&mut self.buf, u64::MAX - start);
        push_u64(&mut self.buf, text_start); // pgoff: the ref reloc symbol's address
        push_padded_str(&mut self.buf, &name, 8);
        self.trailer(pid, 0, 0, 0);
        self.emit()
    }

    fn write_comm(
        &mut self,
        misc: u16,
        pid: u32,
        tid: u32,
        comm: &str,
        time: u64,
        cpu: u32,
    ) -> Result<()> {
        self.begin(rec::COMM, misc);
        push_u32(&mut self.buf, pid);
        push_u32(&mut self.buf, tid);
        // The kernel's comm is at most 15 bytes.
        let comm: String = comm.chars().filter(|c| *c != '\0').take(15).collect();
        push_padded_str(&mut self.buf, &comm, 8);
        self.trailer(pid, tid, time, cpu);
        self.emit()
    }

    /// A COMM in the host machine for a vCPU thread (named like perfvisor's
    /// threads, "vcpuN").
    fn ensure_host_thread(&mut self, cpu: u32, tid: u32) -> Result<()> {
        if self.host_threads.contains(&tid) {
            return Ok(());
        }
        if self.host_threads.len() < MAX_HOST_THREADS {
            self.host_threads.insert(tid);
        } else {
            // Past the cap the COMM goes with each sample: a bigger file,
            // a bounded memory.
            self.untracked_host += 1;
        }
        let pid = self.meta.vmm_pid;
        self.write_comm(
            misc::CPUMODE_UNKNOWN,
            pid,
            tid,
            &format!("vcpu{cpu}"),
            0,
            cpu,
        )
    }

    /// A COMM in the guest machine when a thread is new or renamed.
    fn ensure_guest_comm(
        &mut self,
        pid: u32,
        tid: u32,
        comm: &str,
        time: u64,
        cpu: u32,
    ) -> Result<()> {
        let comm: String = comm.chars().take(15).collect();
        let when = match self.guest_comms.get(&(pid, tid)) {
            Some(old) if *old == comm => return Ok(()),
            Some(_) => time,
            None => 0,
        };
        self.write_comm(misc::GUEST_KERNEL, pid, tid, &comm, when, cpu)?;
        if self.guest_comms.len() < MAX_TASKS || self.guest_comms.contains_key(&(pid, tid)) {
            self.guest_comms.insert((pid, tid), comm);
        } else {
            // Past the cap the COMM is written again at each sample of an
            // untracked thread: a bigger file, a bounded memory.
            self.untracked += 1;
        }
        Ok(())
    }

    /// MMAP2 of segment `(vaddr, memsz, file offset)` into guest thread
    /// `(pid, tid)`, at `(time, cpu)`.
    fn write_mmap2(
        &mut self,
        (pid, tid): (u32, u32),
        (vaddr, memsz, offset): (u64, u64, u64),
        prot: u32,
        name: &str,
        (time, cpu): (u64, u32),
    ) -> Result<()> {
        let start = vaddr & !0xfff;
        let end = vaddr.saturating_add(memsz).saturating_add(0xfff) & !0xfff;
        self.begin(rec::MMAP2, misc::GUEST_USER);
        push_u32(&mut self.buf, pid);
        push_u32(&mut self.buf, tid);
        push_u64(&mut self.buf, start);
        push_u64(&mut self.buf, end - start);
        push_u64(&mut self.buf, offset & !0xfff);
        push_u32(&mut self.buf, 0); // maj
        push_u32(&mut self.buf, 0); // min
        push_u64(&mut self.buf, 0); // ino
        push_u64(&mut self.buf, 0); // ino_generation
        push_u32(&mut self.buf, prot);
        push_u32(&mut self.buf, 2); // MAP_PRIVATE
        push_padded_str(&mut self.buf, name, 8);
        self.trailer(pid, tid, time, cpu);
        self.emit()
    }

    /// Makes perf's view of guest process `pid` map the binary its comm
    /// runs (MMAP2 of the host copy, at its load bias: a PIE's comes from
    /// the process's `start_code`), or nothing (a non-executable anon
    /// mapping over the previous binary, so stale symbols are not used).
    fn ensure_process_map(
        &mut self,
        pid: u32,
        tid: u32,
        (comm, start_code): (Option<&str>, Option<u64>),
        time: u64,
        cpu: u32,
    ) -> Result<()> {
        // A PIE whose load bias the guest did not give maps nowhere.
        let want = symbols::pick_binary(&self.binaries, comm).and_then(|i| {
            let bias = self.binaries.get(i)?.bias(start_code)?;
            Some((i, bias))
        });
        let mut untracked = GuestProcess::default();
        let proc = if self.processes.len() < MAX_TASKS || self.processes.contains_key(&pid) {
            self.processes.entry(pid).or_default()
        } else {
            &mut untracked
        };
        if proc.binary == want {
            return Ok(());
        }
        // The binary of a process's first sample was there all along; a
        // later change (exec) happens at its sample's time.
        let when = if proc.samples == 0 { 0 } else { time };
        let old = proc.binary;
        proc.binary = want;
        let ((idx, bias), prot, name) = match (want, old) {
            (Some(i), _) => (i, 5, None),              // PROT_READ | PROT_EXEC
            (None, Some(i)) => (i, 1, Some("//anon")), // PROT_READ: not a JIT map
            (None, None) => return Ok(()),
        };
        let Some(bin) = self.binaries.get(idx) else {
            return Ok(());
        };
        let name = name.map_or_else(|| bin.path.to_string_lossy().into_owned(), str::to_string);
        let segs: Vec<(u64, u64, u64)> = bin
            .exec_segments
            .iter()
            .filter_map(|s| Some((s.vaddr.checked_add(bias)?, s.memsz, s.offset)))
            .collect();
        for seg in segs {
            self.write_mmap2((pid, tid), seg, prot, &name, (when, cpu))?;
        }
        Ok(())
    }

    /// Adds one guest sample.
    pub fn sample(&mut self, s: &GuestSample<'_>) -> Result<()> {
        if s.cpu >= self.meta.nr_cpus {
            return Err(RecordError::InvalidSample(format!(
                "vCPU {} but the recording has {} (RecordMeta::nr_cpus)",
                s.cpu, self.meta.nr_cpus
            )));
        }
        self.ensure_host_thread(s.cpu, s.vcpu_tid)?;
        let (pid, tid) = match (s.guest_pid, s.guest_tid) {
            (Some(p), t) => (p, t.unwrap_or(p)),
            (None, _) => (self.meta.vmm_pid, s.vcpu_tid),
        };
        let comm_owned;
        let comm = match (s.guest_pid, s.comm) {
            (Some(_), c) => c,
            (None, _) => {
                comm_owned = format!("[vcpu{}]", s.cpu);
                Some(comm_owned.as_str())
            }
        };
        if let Some(c) = comm {
            self.ensure_guest_comm(pid, tid, c, s.time_ns, s.cpu)?;
        }
        let has_user_frames = s.user
            || s.callchain
                .iter()
                .any(|a| *a != 0 && !is_kernel_address(*a));
        if has_user_frames && !self.binaries.is_empty() {
            let comm_for_map = if s.guest_pid.is_some() { s.comm } else { None };
            self.ensure_process_map(pid, tid, (comm_for_map, s.start_code), s.time_ns, s.cpu)?;
        }

        let misc = if s.user {
            misc::GUEST_USER
        } else {
            misc::GUEST_KERNEL
        };
        let id = self.ids[s.cpu as usize];
        self.begin(rec::SAMPLE, misc);
        push_u64(&mut self.buf, id); // IDENTIFIER
        push_u64(&mut self.buf, s.ip);
        push_u32(&mut self.buf, pid);
        push_u32(&mut self.buf, tid);
        push_u64(&mut self.buf, s.time_ns);
        push_u32(&mut self.buf, s.cpu);
        push_u32(&mut self.buf, 0);
        push_u64(&mut self.buf, s.period.max(1));
        if self.sample_type & st::CALLCHAIN != 0 {
            self.chain.clear();
            let mut ctx = if s.user {
                context::USER
            } else {
                context::KERNEL
            };
            self.chain.push(ctx);
            if s.ip < context::MAX {
                self.chain.push(s.ip);
            }
            for &a in s.callchain.iter().take(PERF_MAX_FRAMES) {
                if a == 0 || a >= context::MAX {
                    continue;
                }
                let c = if is_kernel_address(a) {
                    context::KERNEL
                } else {
                    context::USER
                };
                if c != ctx {
                    self.chain.push(c);
                    ctx = c;
                }
                self.chain.push(a);
            }
            push_u64(&mut self.buf, self.chain.len() as u64);
            for i in 0..self.chain.len() {
                let v = self.chain[i];
                push_u64(&mut self.buf, v);
            }
        }
        self.emit()?;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.samples += 1;
        }
        self.samples += 1;
        if s.user {
            self.user_samples += 1;
        } else {
            self.kernel_samples += 1;
        }
        self.first_time = Some(self.first_time.map_or(s.time_ns, |t| t.min(s.time_ns)));
        self.last_time = self.last_time.max(s.time_ns);
        Ok(())
    }

    fn features(&self) -> Vec<(u32, Vec<u8>)> {
        let m = &self.meta;
        let n = m.nr_cpus;
        let mut f = Vec::new();
        let string = |s: &str| {
            let mut b = Vec::new();
            push_header_string(&mut b, s);
            b
        };
        f.push((HEADER_HOSTNAME, string(&m.hostname)));
        let release = if m.kernel_release.is_empty() {
            "unknown"
        } else {
            &m.kernel_release
        };
        f.push((HEADER_OSRELEASE, string(release)));
        f.push((
            HEADER_VERSION,
            string(&format!("perfvisor-record {}", env!("CARGO_PKG_VERSION"))),
        ));
        f.push((HEADER_ARCH, string("x86_64")));
        let mut b = Vec::new();
        push_u32(&mut b, n);
        push_u32(&mut b, n);
        f.push((HEADER_NRCPUS, b));
        f.push((HEADER_CPUDESC, string(&sysinfo::cpu_desc())));
        f.push((HEADER_CPUID, string(&sysinfo::cpuid())));
        let mut b = Vec::new();
        push_u64(&mut b, sysinfo::total_mem_kb());
        f.push((HEADER_TOTAL_MEM, b));
        let mut b = Vec::new();
        let mut cmdline = m.cmdline.clone();
        if cmdline.is_empty() {
            cmdline.push(String::from("perfvisor"));
        }
        push_string_list(&mut b, &cmdline);
        f.push((HEADER_CMDLINE, b));

        let mut b = Vec::new();
        push_u32(&mut b, 1);
        push_u32(&mut b, ATTR_SIZE as u32);
        b.extend_from_slice(&self.attr);
        push_u32(&mut b, self.ids.len() as u32);
        push_header_string(&mut b, EVENT_NAME);
        for id in &self.ids {
            push_u64(&mut b, *id);
        }
        f.push((HEADER_EVENT_DESC, b));

        // One socket, one die, a core per vCPU, a thread per core.
        let mut b = Vec::new();
        push_string_list(&mut b, &[sysinfo::cpu_list(n)]);
        let threads: Vec<String> = (0..n).map(|c| c.to_string()).collect();
        push_string_list(&mut b, &threads);
        for c in 0..n {
            push_u32(&mut b, c); // core_id
            push_u32(&mut b, 0); // socket_id
        }
        push_string_list(&mut b, &[sysinfo::cpu_list(n)]);
        for _ in 0..n {
            push_u32(&mut b, 0); // die_id
        }
        f.push((HEADER_CPU_TOPOLOGY, b));

        let mut b = Vec::new();
        push_u32(&mut b, 1);
        push_u32(&mut b, 0);
        let mem = sysinfo::total_mem_kb();
        push_u64(&mut b, mem);
        push_u64(&mut b, mem);
        push_header_string(&mut b, &sysinfo::cpu_list(n));
        f.push((HEADER_NUMA_TOPOLOGY, b));

        let mut b = Vec::new();
        push_u32(&mut b, 1);
        push_u32(&mut b, PERF_TYPE_SOFTWARE);
        push_header_string(&mut b, "software");
        f.push((HEADER_PMU_MAPPINGS, b));

        let mut b = Vec::new();
        push_u64(&mut b, self.first_time.unwrap_or(0));
        push_u64(&mut b, self.last_time);
        f.push((HEADER_SAMPLE_TIME, b));
        f
    }

    /// Writes the feature sections and the final header; returns what was
    /// written and how to read it.
    pub fn finish(mut self) -> Result<WriteSummary> {
        let features = self.features();
        let feat_offset = self.data_offset + self.data_size;
        let mut table = Vec::new();
        let mut payload = Vec::new();
        let mut off = feat_offset + 16 * features.len() as u64;
        let mut bits = [0u64; 4];
        for (bit, data) in &features {
            bits[(*bit / 64) as usize] |= 1 << (bit % 64);
            push_u64(&mut table, off);
            push_u64(&mut table, data.len() as u64);
            off += data.len() as u64;
            payload.extend_from_slice(data);
        }
        self.write_raw(&table)?;
        self.write_raw(&payload)?;

        let ids_offset = FILE_HEADER_SIZE;
        let attrs_offset = ids_offset + 8 * self.ids.len() as u64;
        let mut h = Vec::with_capacity(FILE_HEADER_SIZE as usize);
        h.extend_from_slice(b"PERFILE2");
        push_u64(&mut h, FILE_HEADER_SIZE);
        push_u64(&mut h, ATTR_SIZE as u64 + 16);
        push_u64(&mut h, attrs_offset);
        push_u64(&mut h, ATTR_SIZE as u64 + 16);
        push_u64(&mut h, self.data_offset);
        push_u64(&mut h, self.data_size);
        push_u64(&mut h, 0); // event_types (unused)
        push_u64(&mut h, 0);
        for b in bits {
            push_u64(&mut h, b);
        }
        let path = self.data_path.clone();
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| RecordError::write(&path, e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&h))
            .and_then(|_| file.sync_all())
            .map_err(|e| RecordError::write(&path, e))?;

        let shown = self.root.display();
        let report_hint =
            format!("perf report -i {shown} --stdio\nperf script -i {shown} -F +machine_pid,+vcpu");
        Ok(WriteSummary {
            path: self.root,
            layout: self.layout,
            samples: self.samples,
            kernel_samples: self.kernel_samples,
            user_samples: self.user_samples,
            data_bytes: self.data_size,
            machine_pid: self.meta.vmm_pid,
            report_hint,
            untracked_task_samples: self.untracked,
            untracked_host_thread_samples: self.untracked_host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_strings() {
        let mut b = Vec::new();
        push_padded_str(&mut b, "vcpu0", 8);
        assert_eq!(b, b"vcpu0\0\0\0");
        b.clear();
        push_padded_str(&mut b, "12345678", 8);
        assert_eq!(b.len(), 16);
        b.clear();
        push_header_string(&mut b, "x86_64");
        assert_eq!(b.len(), 4 + 64);
        assert_eq!(&b[..4], &64u32.to_ne_bytes());
    }

    /// A kernel-mode sample on vCPU 0 of host thread `vcpu_tid`, guest task
    /// `pid` named `comm`.
    fn kernel_sample(vcpu_tid: u32, pid: u32, comm: &str, time_ns: u64) -> GuestSample<'_> {
        GuestSample {
            cpu: 0,
            vcpu_tid,
            guest_pid: Some(pid),
            guest_tid: None,
            comm: Some(comm),
            start_code: None,
            time_ns,
            ip: 0xffff_ffff_8100_0000,
            user: false,
            callchain: &[],
            period: 1,
        }
    }

    /// A guest that gives every sample a new pid and comm: the writer's
    /// tables stop at MAX_TASKS and every sample is still written.
    #[test]
    fn unique_tasks_past_the_cap_keep_memory_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RecordMeta::new(1, 99);
        let mut w = PerfDataWriter::create(dir.path().join("perf.data"), &meta).unwrap();
        let n = MAX_TASKS as u64 + 50_000;
        for i in 0..n {
            let comm = format!("c{i}");
            w.sample(&kernel_sample(7, i as u32 + 1, &comm, i)).unwrap();
        }
        assert_eq!(w.guest_comms.len(), MAX_TASKS);
        assert!(w.processes.len() <= MAX_TASKS);
        let sum = w.finish().unwrap();
        assert_eq!(sum.samples, n);
        assert_eq!(sum.untracked_task_samples, n - MAX_TASKS as u64);
    }

    /// A raw stream that names a new host vCPU thread in every sample:
    /// the writer remembers MAX_HOST_THREADS of them and writes the COMM
    /// of the rest with each sample.
    #[test]
    fn unique_host_threads_past_the_cap_keep_memory_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RecordMeta::new(1, 99);
        let mut w = PerfDataWriter::create(dir.path().join("perf.data"), &meta).unwrap();
        let n = MAX_HOST_THREADS as u64 + 5_000;
        for i in 0..n {
            w.sample(&kernel_sample(1000 + i as u32, 1, "w", i))
                .unwrap();
        }
        assert_eq!(w.host_threads.len(), MAX_HOST_THREADS);
        let sum = w.finish().unwrap();
        assert_eq!(sum.samples, n);
        assert_eq!(
            sum.untracked_host_thread_samples,
            n - MAX_HOST_THREADS as u64
        );
    }

    #[test]
    fn attr_is_ver7_sized_guest_only() {
        let meta = RecordMeta::new(2, 99);
        let a = build_attr(&meta, st::IP);
        assert_eq!(u32::from_ne_bytes(a[4..8].try_into().unwrap()), 128);
        let flags = u64::from_ne_bytes(a[40..48].try_into().unwrap());
        assert_ne!(flags & (1 << 18), 0, "sample_id_all");
        assert_ne!(flags & (1 << 19), 0, "exclude_host");
        assert_eq!(flags & (1 << 20), 0, "exclude_guest clear");
    }
}
