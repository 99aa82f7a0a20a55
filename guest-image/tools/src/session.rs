//! One `pvpmu-tool` run: open the events, map the rings, read them with the
//! standard protocol through `perf_ring`, decode the AUX trace with
//! `pvpmu_abi::trace`, and fill a [`Report`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perf_abi::{aux_flag, ctrl, sample as st};
use perf_ring::{
    decode, Body, Checker, CheckerConfig, Consumer, CtrlField, ReadError, ReadMode, RingMemory,
    RingPages, SampleFormat,
};
use pvpmu_abi::trace::StreamDecoder;

use crate::args::Options;
use crate::perf::{self, flag, Mapping, PerfEventAttr, PERF_ATTR_SIZE_VER7};
use crate::report::{Report, TraceNames};
use crate::symbols::{callchain_frames, is_kernel, parse_kallsyms, SymTab, Symbolizer};

/// Set by SIGINT/SIGTERM: stop and print what was read.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// A setup failure (exit status 3) with its message.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn setup<T>(r: io::Result<T>, what: impl FnOnce(&io::Error) -> String) -> Result<T, SetupError> {
    r.map_err(|e| SetupError(what(&e)))
}

/// The sample_type the tool asks for.
pub fn sample_type(callchain: bool) -> u64 {
    let mut t = st::IDENTIFIER | st::IP | st::TID | st::TIME | st::CPU | st::PERIOD;
    if callchain {
        t |= st::CALLCHAIN;
    }
    t
}

/// The attr for one event.
pub fn make_attr(pmu_type: u32, o: &Options, inherit: bool) -> PerfEventAttr {
    let mut a = PerfEventAttr {
        type_: pmu_type,
        size: PERF_ATTR_SIZE_VER7,
        config: perf::PERF_COUNT_SW_CPU_CLOCK,
        sample_type: sample_type(o.callchain),
        read_format: perf::read_format::LOST,
        flags: flag::DISABLED | flag::SAMPLE_ID_ALL,
        ..Default::default()
    };
    match o.period {
        Some(p) => a.sample_period_or_freq = p,
        None => {
            a.flags |= flag::FREQ;
            a.sample_period_or_freq = o.freq;
        }
    }
    if inherit {
        a.flags |= flag::INHERIT;
    }
    a
}

/// The reading side of one ring: consumer, checker, trace decoder and the
/// state that ties PERF_RECORD_AUX records to the AUX stream. Independent
/// of how the ring is mapped, so the tests drive it with the host producer
/// over plain memory.
pub struct Reader {
    consumer: Consumer<RingPages>,
    checker: Checker,
    trace: StreamDecoder,
    names: TraceNames,
    format: SampleFormat,
    cpu: u32,
    aux_size: u64,
    /// Where the next PERF_RECORD_AUX should start (trace continuity).
    aux_next: Option<u64>,
    /// Mirror of the checker's AUX tiling state, to recognise its
    /// complaints about AUX records lost with the data ring full.
    chk_aux_next: Option<u64>,
    lost_since_aux: bool,
    excused: u64,
    corrupt: u64,
    first_corrupt: Option<String>,
    aux_buf: Vec<u8>,
    /// Log AUX and LOST records and trace errors to stderr.
    pub verbose: bool,
    /// A TRUNCATED PERF_RECORD_AUX was read: the perf core disabled the
    /// event (perf_aux_output_end); re-enable it now that the space is free.
    truncated: bool,
}

/// One event, its mappings and its reader. Field order is drop order: the
/// reader (which points into the mappings) goes before them, the fd last.
struct Ring {
    reader: Reader,
    _aux: Option<Mapping>,
    _data: Mapping,
    fd: OwnedFd,
}

impl Ring {
    fn open(
        attr: &PerfEventAttr,
        pid: i32,
        cpu: u32,
        o: &Options,
        page: usize,
        pmu: &str,
    ) -> Result<Ring, SetupError> {
        let fd = setup(perf::perf_event_open(attr, pid, cpu as i32), |e| {
            let hint = match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    " (permission: run as root or lower /proc/sys/kernel/perf_event_paranoid)"
                }
                Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => {
                    " (the PMU refused this event: config or sample_type unsupported?)"
                }
                Some(libc::EINVAL) => " (attr rejected: --freq above perf_event_max_sample_rate?)",
                _ => "",
            };
            format!("perf_event_open({pmu}, pid {pid}, cpu {cpu}): {e}{hint}")
        })?;
        let id = setup(perf::event_id(&fd), |e| {
            format!("PERF_EVENT_IOC_ID on cpu {cpu}: {e}")
        })?;
        let data_len = (1 + o.data_pages) * page;
        let data = setup(Mapping::new(&fd, data_len, 0), |e| {
            format!(
                "mmap of the data ring ({} pages) on cpu {cpu}: {e} (try fewer --data-pages)",
                o.data_pages
            )
        })?;
        let aux = if o.no_aux {
            None
        } else {
            let aux_offset = data_len as u64;
            let aux_len = o.aux_pages * page;
            // SAFETY: the control page is the first page of `data`, valid
            // and 8-aligned; aux_offset/aux_size are u64 fields the consumer
            // writes before mapping AUX (tools/lib/perf does the same with
            // plain stores).
            unsafe {
                let c = data.ptr();
                std::ptr::write_volatile(c.add(ctrl::AUX_OFFSET).cast::<u64>(), aux_offset);
                std::ptr::write_volatile(c.add(ctrl::AUX_SIZE).cast::<u64>(), aux_len as u64);
            }
            Some(setup(Mapping::new(&fd, aux_len, aux_offset), |e| {
                format!(
                    "mmap of the AUX area ({} pages) on cpu {cpu}: {e} ({})",
                    o.aux_pages,
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        "the PMU has no AUX support; use --no-aux"
                    } else {
                        "try fewer --aux-pages, or --no-aux"
                    }
                )
            })?)
        };
        // SAFETY: `data` maps the control page and `data_pages` data pages
        // contiguously, `aux` maps `aux_pages` pages; both live in this
        // Ring after the consumer, which is dropped first.
        let pages = unsafe {
            RingPages::from_contiguous(
                data.ptr(),
                page,
                o.data_pages,
                aux.as_ref().map(|m| (m.ptr(), o.aux_pages)),
            )
        }
        .map_err(|e| SetupError(format!("ring layout on cpu {cpu}: {e}")))?;
        let format = SampleFormat::new(attr.sample_type, attr.read_format, true)
            .map_err(|e| SetupError(e.to_string()))?;
        let mut reader = Reader::new(pages, cpu, id, format);
        reader.verbose = o.verbose;
        Ok(Ring {
            reader,
            _aux: aux,
            _data: data,
            fd,
        })
    }
}

impl Reader {
    /// A reader for the ring in `pages` (data_tail and aux_tail as found),
    /// for the event `id` on `cpu`.
    pub fn new(pages: RingPages, cpu: u32, id: u64, format: SampleFormat) -> Reader {
        let aux_size = pages.aux_size();
        let checker = Checker::new(CheckerConfig {
            format,
            data_size: pages.data_size(),
            mode: ReadMode::Forward,
            known_ids: vec![id],
            strict_types: false,
            ip_is_sequence: false,
        })
        .keep_going(true);
        Reader {
            consumer: Consumer::new(pages, ReadMode::Forward),
            checker,
            trace: StreamDecoder::new(),
            names: TraceNames::default(),
            format,
            cpu,
            aux_size,
            aux_next: None,
            chk_aux_next: None,
            lost_since_aux: false,
            excused: 0,
            corrupt: 0,
            first_corrupt: None,
            aux_buf: Vec::new(),
            verbose: false,
            truncated: false,
        }
    }

    /// Whether a TRUNCATED AUX record was read since the last call.
    pub fn take_truncated(&mut self) -> bool {
        std::mem::take(&mut self.truncated)
    }

    /// Reads everything published and the AUX bytes it names into `r`.
    pub fn drain(&mut self, r: &mut Report, sym: &mut Symbolizer, check_cpu: bool) {
        let mut recs = Vec::new();
        let format = self.format;
        let res = self
            .consumer
            .read_batch(Some(&mut self.checker), |_, bytes| {
                // Undecodable records are the checker's (Decode violation).
                if let Ok(rec) = decode(&format, bytes) {
                    recs.push(rec);
                }
            });
        match res {
            Ok(b) if b.skipped => r.ring_skips += 1,
            Ok(_) => {}
            Err(e) => {
                // Corrupt header (the checker keeps going on violations):
                // resynchronise at the head.
                self.corrupt += 1;
                if self.first_corrupt.is_none() {
                    self.first_corrupt = Some(format!("cpu {}: {e}", self.cpu));
                }
                if matches!(e, ReadError::Corrupt { .. }) {
                    let head = self.consumer.read_head();
                    self.consumer.skip_to_head();
                    self.checker.resync(head);
                    r.ring_skips += 1;
                }
            }
        }
        for rec in recs {
            r.records += 1;
            match rec.body {
                Body::Sample(s) => {
                    r.samples += 1;
                    r.per_cpu.entry(self.cpu).or_default().0 += 1;
                    if check_cpu && s.ids.cpu != self.cpu {
                        r.cpu_mismatch += 1;
                    }
                    let pid = s.ids.pid;
                    let leaf = sym.resolve(pid, s.ip, is_kernel(rec.header.misc, s.ip));
                    let stack = if s.callchain.is_empty() {
                        None
                    } else {
                        let mut names: Vec<String> = callchain_frames(&s.callchain)
                            .into_iter()
                            .take(128)
                            .map(|(ip, k)| sym.resolve(pid, ip, k).to_string())
                            .collect();
                        names.reverse();
                        Some(names.join(";"))
                    };
                    r.on_sample_symbol(leaf, stack);
                }
                Body::Lost { lost, .. } => {
                    if self.verbose {
                        eprintln!("pvpmu-tool: cpu{} PERF_RECORD_LOST lost={lost}", self.cpu);
                    }
                    r.lost += lost;
                    r.per_cpu.entry(self.cpu).or_default().1 += lost;
                    self.lost_since_aux = true;
                }
                Body::LostSamples { lost } => r.lost_samples += lost,
                Body::Throttle { .. } => r.throttles += 1,
                Body::Unthrottle { .. } => r.unthrottles += 1,
                Body::Aux {
                    offset,
                    size,
                    flags,
                } => self.on_aux(r, offset, size, flags),
                _ => r.other_records += 1,
            }
        }
        if self.aux_size > 0 {
            let pages = self.consumer.memory().pages();
            let head = pages.load(CtrlField::AuxHead, Ordering::Acquire);
            let tail = pages.load(CtrlField::AuxTail, Ordering::Relaxed);
            let _ = self.checker.on_aux_head(head, tail, self.aux_size, false);
        }
    }

    fn on_aux(&mut self, r: &mut Report, offset: u64, size: u64, flags: u64) {
        if self.verbose {
            eprintln!(
                "pvpmu-tool: cpu{} PERF_RECORD_AUX offset={offset:#x} size={size} flags={flags:#x}{}",
                self.cpu,
                match self.aux_next {
                    Some(n) if n != offset => format!(" (expected offset {n:#x})"),
                    _ => String::new(),
                }
            );
        }
        r.on_aux_record(size, flags);
        if flags & aux_flag::TRUNCATED != 0 {
            self.truncated = true;
        }
        // The checker wants AUX records to tile the area; one lost with the
        // data ring full leaves a forward gap. Same rule as the checker, so
        // the two counts match record for record.
        if flags & aux_flag::OVERWRITE == 0 {
            if let Some(next) = self.chk_aux_next {
                if offset != next && self.lost_since_aux && (offset.wrapping_sub(next) as i64) > 0 {
                    self.excused += 1;
                }
            }
            self.chk_aux_next = Some(offset.wrapping_add(size));
        }
        self.lost_since_aux = false;
        if size == 0 {
            return;
        }
        if size > self.aux_size {
            r.aux_bad += 1;
            return;
        }
        if let Some(next) = self.aux_next {
            if next != offset {
                r.aux_gaps += 1;
                r.trace_dropped_bytes += self.trace.reset() as u64;
            }
        }
        // Sessions hold whole records (docs/pvpmu.md), so a decoder that
        // lost its way restarts at the next one.
        if self.trace.is_desynced() {
            self.trace.reset();
        }
        self.aux_buf.resize(size as usize, 0);
        self.consumer.copy_aux(offset, &mut self.aux_buf);
        let names = &mut self.names;
        self.trace
            .feed(&self.aux_buf, |item| r.on_trace(item, names));
        self.aux_next = Some(offset.wrapping_add(size));
        // Release the bytes (Release store of aux_tail).
        self.consumer.set_aux_tail(offset.wrapping_add(size));
    }

    /// End of the run: a trace record left half-way is a decode error;
    /// folds the checker's findings into `r` (violations minus the excused
    /// AUX gaps).
    pub fn finish(&mut self, r: &mut Report) {
        if self.verbose {
            let p = self.consumer.memory().pages();
            eprintln!(
                "pvpmu-tool: cpu{} end: data_head={:#x} data_tail={:#x} aux_head={:#x} aux_tail={:#x}; trace stream {} bytes, {} records, {} pending",
                self.cpu,
                p.load(CtrlField::DataHead, Ordering::Acquire),
                p.load(CtrlField::DataTail, Ordering::Relaxed),
                p.load(CtrlField::AuxHead, Ordering::Acquire),
                p.load(CtrlField::AuxTail, Ordering::Relaxed),
                self.trace.stats().bytes,
                self.trace.stats().records,
                self.trace.pending()
            );
        }
        if let Some(e) = self.trace.finish() {
            let names = &mut self.names;
            r.on_trace(Err(e), names);
        }
        let violations = self.checker.violations() + self.corrupt;
        r.checker_violations += violations.saturating_sub(self.excused);
        r.aux_gaps_after_lost += self.excused;
        if r.first_violation.is_none() && violations > self.excused {
            r.first_violation = self
                .checker
                .first_violation()
                .map(|v| format!("cpu {}: {v}", self.cpu))
                .or_else(|| self.first_corrupt.clone());
        }
    }
}

/// A workload forked and held before exec.
struct Workload {
    pid: libc::pid_t,
    go: Option<OwnedFd>,
    path: PathBuf,
    status: Option<libc::c_int>,
}

fn find_in_path(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

impl Workload {
    /// Forks; the child waits for [`Workload::release`] and then execs.
    fn spawn(cmd: &[String]) -> Result<Workload, SetupError> {
        let first = cmd.first().ok_or_else(|| SetupError("no command".into()))?;
        let path = find_in_path(first)
            .ok_or_else(|| SetupError(format!("{first}: command not found in PATH")))?;
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| SetupError(format!("{first}: NUL in the path")))?;
        let cargs = cmd
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SetupError("a NUL byte in the command's arguments".into()))?;
        let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(SetupError(format!("pipe2: {}", io::Error::last_os_error())));
        }
        let [rd, wr] = fds;
        // SAFETY: the tool is single-threaded here; the child only calls
        // async-signal-safe functions (close, read, execv, _exit) on memory
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(SetupError(format!("fork: {}", io::Error::last_os_error())));
        }
        if pid == 0 {
            // SAFETY: see above; `argv` is NUL-terminated and its strings
            // live in `cargs`.
            unsafe {
                libc::close(wr);
                let mut b = 0u8;
                let n = libc::read(rd, (&mut b as *mut u8).cast(), 1);
                if n == 1 {
                    libc::execv(cpath.as_ptr(), argv.as_ptr());
                }
                libc::_exit(127);
            }
        }
        // SAFETY: both are fresh descriptors from pipe2, owned here.
        unsafe {
            libc::close(rd);
        }
        Ok(Workload {
            pid,
            // SAFETY: as above.
            go: Some(unsafe { OwnedFd::from_raw_fd(wr) }),
            path,
            status: None,
        })
    }

    /// Lets the child exec.
    fn release(&mut self) {
        if let Some(fd) = self.go.take() {
            // SAFETY: one byte from a valid buffer to our pipe.
            unsafe {
                libc::write(fd.as_raw_fd(), b"g".as_ptr().cast(), 1);
            }
        }
    }

    /// Whether it exited (reaps it).
    fn poll_exit(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
        if r == self.pid {
            self.status = Some(st);
            true
        } else {
            r < 0
        }
    }

    /// Ends it if still running.
    fn kill(&mut self) {
        if !self.poll_exit() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(self.pid, &mut st, 0);
                self.status = Some(st);
            }
        }
    }

    fn describe(&self) -> String {
        let what = format!("{} (pid {})", self.path.display(), self.pid);
        match self.status {
            Some(st) if libc::WIFEXITED(st) => {
                let code = libc::WEXITSTATUS(st);
                if code == 127 {
                    format!("{what} exited with status 127 (exec failed?)")
                } else {
                    format!("{what} exited with status {code}")
                }
            }
            Some(st) if libc::WIFSIGNALED(st) => {
                format!("{what} killed by signal {}", libc::WTERMSIG(st))
            }
            _ => format!("{what} still running"),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Never leave a child behind (setup errors, panics).
        self.go.take();
        if self.status.is_none() {
            self.kill();
        }
    }
}

/// Reads the kernel symbols.
fn kernel_symbols(notes: &mut Vec<String>) -> SymTab {
    match std::fs::read_to_string("/proc/kallsyms") {
        Ok(t) => {
            let tab = parse_kallsyms(&t);
            if tab.is_empty() {
                notes.push("/proc/kallsyms has no usable addresses (kptr_restrict?); kernel IPs show as [unknown]".into());
            }
            tab
        }
        Err(e) => {
            notes.push(format!("/proc/kallsyms: {e}; kernel IPs show as [unknown]"));
            SymTab::default()
        }
    }
}

/// Runs the tool; `Ok` carries the report (whose failures decide the exit
/// status).
pub fn run(o: &Options) -> Result<Report, SetupError> {
    let sysfs = Path::new("/sys");
    let pmu_type = perf::pmu_type(sysfs, &o.pmu).map_err(|e| {
        SetupError(format!(
            "no {0} PMU: is the {0} module loaded? (/sys/bus/event_source/devices/{0}/type: {e})",
            o.pmu
        ))
    })?;
    let page = perf::page_size();
    let cpus = perf::online_cpus();
    let mut report = Report {
        mode: if o.cpu_wide() { "cpu-wide" } else { "task" },
        pmu: o.pmu.clone(),
        cpus: cpus.len(),
        freq: if o.period.is_some() { 0 } else { o.freq },
        period: o.period.unwrap_or(0),
        ..Default::default()
    };
    let kernel = kernel_symbols(&mut report.notes);
    let mut sym = Symbolizer::new(kernel, "/proc");

    let mut workload = if o.command.is_empty() {
        None
    } else {
        Some(Workload::spawn(&o.command)?)
    };
    let pid = match (&workload, o.cpu_wide()) {
        (Some(w), false) => w.pid,
        _ => -1,
    };
    if let Some(w) = &workload {
        sym.register(w.pid as u32, &w.path);
    }
    let attr = make_attr(pmu_type, o, pid != -1);
    let mut rings = Vec::with_capacity(cpus.len());
    for &cpu in &cpus {
        rings.push(Ring::open(&attr, pid, cpu, o, page, &o.pmu)?);
    }

    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
    for r in &rings {
        setup(perf::enable(&r.fd), |e| {
            format!("PERF_EVENT_IOC_ENABLE on cpu {}: {e}", r.reader.cpu)
        })?;
    }
    let start = Instant::now();
    if let Some(w) = &mut workload {
        w.release();
    }
    let deadline = o.run_for().map(|d| start + d);
    let fds: Vec<_> = rings.iter().map(|r| r.fd.as_raw_fd()).collect();
    let check_cpu = true;
    loop {
        let mut timeout = Duration::from_millis(100);
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        if let Err(e) = perf::poll_in(&fds, timeout.as_millis() as i32) {
            report.notes.push(format!("poll: {e}"));
            std::thread::sleep(timeout);
        }
        for r in &mut rings {
            r.reader.drain(&mut report, &mut sym, check_cpu);
            // A full AUX area disabled the event (TRUNCATED); the reader
            // has freed the space, so sampling resumes.
            if r.reader.take_truncated() {
                match perf::enable(&r.fd) {
                    Ok(()) => report.reenables += 1,
                    Err(e) => report.notes.push(format!(
                        "re-enable after TRUNCATED on cpu {}: {e}",
                        r.reader.cpu
                    )),
                }
            }
        }
        if o.slow_consumer_ms > 0 {
            std::thread::sleep(Duration::from_millis(o.slow_consumer_ms));
        }
        if workload.as_mut().is_some_and(|w| w.poll_exit()) {
            break;
        }
        if STOP.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    for r in &rings {
        if let Err(e) = perf::disable(&r.fd) {
            report.notes.push(format!(
                "PERF_EVENT_IOC_DISABLE on cpu {}: {e}",
                r.reader.cpu
            ));
        }
    }
    report.duration_ms = start.elapsed().as_millis() as u64;
    // Drain what was published up to the disable (twice: records written by
    // an interrupt that raced the disable).
    for _ in 0..2 {
        for r in &mut rings {
            r.reader.drain(&mut report, &mut sym, check_cpu);
        }
    }
    for r in &mut rings {
        r.reader.finish(&mut report);
        // The kernel's own count of drops, which PERF_RECORD_LOST records
        // miss when nothing fitted after the last drop. (For an inherited
        // event, drops by child events are not included.)
        match perf::read_value_and_lost(&r.fd) {
            Ok((count, lost)) => {
                report.lost_counted += lost;
                report.count_ns += count;
            }
            Err(e) => report
                .notes
                .push(format!("read of cpu {}: {e}", r.reader.cpu)),
        }
    }
    if let Some(mut w) = workload.take() {
        if !w.poll_exit() {
            report
                .notes
                .push("the workload was still running at the end; killed".into());
        }
        w.kill();
        report.workload_status = Some(w.describe());
    }
    for p in &sym.problems {
        report.notes.push(format!("symbols: {p}"));
    }
    drop(rings);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    use perf_abi::misc;
    use perf_ring::{Producer, ProducerConfig, Sample, SampleId, Wakeup};
    use pvpmu_abi::trace::{self, Exit, ExitReason, Stat};

    const PAGE: usize = 4096;

    /// Page-aligned zeroed memory, freed on drop.
    struct Mem {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }

    impl Mem {
        fn new(pages: usize) -> Mem {
            let layout = std::alloc::Layout::from_size_align(pages * PAGE, PAGE).unwrap();
            // SAFETY: non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Mem { ptr, layout }
        }
    }

    impl Drop for Mem {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) }
        }
    }

    /// A host producer and a tool reader over the same memory. Field order:
    /// both go before the memory.
    struct Rig {
        prod: Producer<RingPages>,
        reader: Reader,
        ids: SampleId,
        _data: Mem,
        _aux: Mem,
    }

    const ID: u64 = 77;

    fn rig(data_pages: usize, aux_pages: usize) -> Rig {
        let data = Mem::new(1 + data_pages);
        let aux = Mem::new(aux_pages);
        let format = SampleFormat::new(sample_type(false), 0, true).unwrap();
        // SAFETY: both views cover the allocations above, which outlive
        // them (Rig's field order).
        let pages = || unsafe {
            RingPages::from_contiguous(data.ptr, PAGE, data_pages, Some((aux.ptr, aux_pages)))
                .unwrap()
        };
        let prod = Producer::new(
            pages(),
            ProducerConfig {
                format,
                event_id: ID,
                write_backward: false,
                overwrite: false,
                wakeup: Wakeup::Events(0),
                aux_overwrite: false,
                aux_watermark: 0,
            },
        )
        .unwrap();
        let reader = Reader::new(pages(), 1, ID, format);
        Rig {
            prod,
            reader,
            ids: SampleId {
                pid: std::process::id(),
                tid: std::process::id(),
                time: 1,
                id: ID,
                stream_id: ID,
                cpu: 1,
            },
            _data: data,
            _aux: aux,
        }
    }

    #[inline(never)]
    fn sampled_function() -> u64 {
        std::hint::black_box(1)
    }

    fn sample(ip: u64) -> Sample<'static> {
        Sample {
            misc: misc::USER,
            ip,
            period: 1_000_000,
            ..Default::default()
        }
    }

    fn trace_bytes(exits: usize) -> Vec<u8> {
        let mut v = vec![0u8; 64 + exits * 48 + 64];
        let mut at = trace::encode_header(&mut v, 1, 5).unwrap();
        at += trace::encode_stats_names(&mut v[at..], 1, &["kicks"]).unwrap();
        for i in 0..exits {
            let e = Exit {
                guest_ns: i as u64,
                rip: 0x1000,
                addr: 0xd000_0000,
                reason: ExitReason::ALL[i % 6],
                size: 4,
                host_ns: 10,
            };
            at += trace::encode_exit(&mut v[at..], 1, &e).unwrap();
        }
        at += trace::encode_stats(&mut v[at..], 1, 9, &[Stat { id: 0, value: 3 }]).unwrap();
        v.truncate(at);
        v
    }

    fn symbolizer() -> Symbolizer {
        Symbolizer::new(SymTab::default(), "/proc")
    }

    #[test]
    fn reads_samples_and_trace() {
        let mut rig = rig(4, 2);
        let mut r = Report::default();
        let mut sym = symbolizer();
        let ip = sampled_function as *const () as u64;
        for _ in 0..10 {
            let _ = rig.prod.write_sample(&sample(ip), &rig.ids).unwrap();
        }
        // The trace in two sessions, with a record cut between them.
        let t = trace_bytes(12);
        let cut = 24 + 16 + 20;
        for part in [&t[..cut], &t[cut..]] {
            let mut h = rig.prod.aux_begin().unwrap();
            assert_eq!(rig.prod.aux_write(&mut h, part), part.len());
            let _ = rig.prod.aux_end(h, &rig.ids);
        }
        rig.reader.drain(&mut r, &mut sym, true);
        // Wrap the AUX area: more sessions than its 8 KiB.
        for _ in 0..6 {
            let t = trace_bytes(30);
            let mut h = rig.prod.aux_begin().unwrap();
            assert_eq!(rig.prod.aux_write(&mut h, &t), t.len());
            let _ = rig.prod.aux_end(h, &rig.ids);
            rig.reader.drain(&mut r, &mut sym, true);
        }
        rig.reader.finish(&mut r);
        assert_eq!(r.samples, 10);
        assert_eq!(r.records, 10 + 2 + 6);
        assert_eq!(r.aux_records, 8);
        assert_eq!(r.aux_bytes, (t.len() + 6 * trace_bytes(30).len()) as u64);
        assert_eq!(r.exits_total(), 12 + 6 * 30);
        assert_eq!(r.exits[ExitReason::Kick.as_u32() as usize - 1], 2 + 6 * 5);
        assert_eq!(r.trace_records, 7 * 3 + 12 + 6 * 30);
        assert_eq!(r.stats.get(&(1, "kicks".to_string())), Some(&3));
        assert_eq!(r.trace_decode_errors, 0, "{:?}", r.first_trace_error);
        assert_eq!(r.checker_violations, 0, "{:?}", r.first_violation);
        assert_eq!(r.aux_gaps, 0);
        assert!(r.failures().is_empty());
        let top = r.top(1);
        assert!(top[0].0.ends_with("sampled_function"), "{top:?}");
        assert_eq!(top[0].1, 10);
        assert!(r
            .machine_line()
            .contains("top=guest_tools::session::tests::sampled_function"));
    }

    #[test]
    fn lost_aux_record_is_excused_and_trace_restarts() {
        // One data page: fill it with samples nobody reads, then end an AUX
        // session whose PERF_RECORD_AUX is lost.
        let mut rig = rig(1, 2);
        let mut r = Report::default();
        let mut sym = symbolizer();
        let t = trace_bytes(4);
        let session = |rig: &mut Rig, bytes: &[u8]| {
            let mut h = rig.prod.aux_begin().unwrap();
            rig.prod.aux_write(&mut h, bytes);
            rig.prod.aux_end(h, &rig.ids)
        };
        let _ = session(&mut rig, &t);
        rig.reader.drain(&mut r, &mut sym, true);
        let mut n = 0;
        while rig
            .prod
            .write_sample(&sample(0x1000), &rig.ids)
            .unwrap()
            .written
        {
            n += 1;
        }
        let _ = session(&mut rig, &t); // its record is dropped: ring full
        rig.reader.drain(&mut r, &mut sym, true);
        let _ = session(&mut rig, &t); // comes after a LOST
        rig.reader.drain(&mut r, &mut sym, true);
        rig.reader.finish(&mut r);
        assert_eq!(r.samples, n);
        assert!(r.lost >= 2, "{}", r.lost);
        assert_eq!(r.aux_records, 2);
        assert_eq!(r.aux_gaps, 1);
        assert_eq!(r.aux_gaps_after_lost, 1);
        assert_eq!(r.checker_violations, 0, "{:?}", r.first_violation);
        assert_eq!(r.exits_total(), 8);
        assert_eq!(r.trace_decode_errors, 0);
    }

    #[test]
    fn finds_wrong_cpu_bad_trace_and_unknown_ids() {
        let mut rig = rig(4, 2);
        let mut r = Report::default();
        let mut sym = symbolizer();
        let mut ids = rig.ids;
        ids.cpu = 0;
        let _ = rig.prod.write_sample(&sample(0x1000), &ids).unwrap();
        ids.cpu = 1;
        ids.id = 999;
        let _ = rig.prod.write_sample(&sample(0x1000), &ids).unwrap();
        let mut h = rig.prod.aux_begin().unwrap();
        let mut t = trace_bytes(1);
        t[2] = 3; // HEADER size 3: fatal
        rig.prod.aux_write(&mut h, &t);
        let _ = rig.prod.aux_end(h, &rig.ids);
        // Half a record at the end.
        let mut h = rig.prod.aux_begin().unwrap();
        rig.prod.aux_write(&mut h, &trace_bytes(1)[..16]);
        let _ = rig.prod.aux_end(h, &rig.ids);
        rig.reader.drain(&mut r, &mut sym, true);
        rig.reader.finish(&mut r);
        assert_eq!(r.cpu_mismatch, 1);
        assert_eq!(r.checker_violations, 1, "the unknown id");
        assert!(r
            .first_violation
            .as_deref()
            .unwrap()
            .contains("unknown event id"));
        // The fatal header (the rest of that session is dropped), then the
        // next session restarts the decoder and ends inside a record.
        assert_eq!(r.trace_decode_errors, 2, "{:?}", r.first_trace_error);
        assert_eq!(r.failures().len(), 3);
        assert_eq!(&*r.top(1)[0].0, crate::symbols::UNKNOWN);
    }

    #[test]
    fn attr_for_options() {
        let o = Options::default();
        let a = make_attr(42, &o, false);
        assert_eq!(a.type_, 42);
        assert_eq!(a.size, 128);
        assert_eq!(a.config, 0);
        assert_eq!(a.sample_type, 0x10000 | 0x1 | 0x2 | 0x4 | 0x80 | 0x100);
        assert_eq!(a.flags, flag::DISABLED | flag::SAMPLE_ID_ALL | flag::FREQ);
        assert_eq!(a.sample_period_or_freq, 1000);
        let o = Options {
            period: Some(250_000),
            callchain: true,
            ..Default::default()
        };
        let a = make_attr(42, &o, true);
        assert_eq!(
            a.flags,
            flag::DISABLED | flag::SAMPLE_ID_ALL | flag::INHERIT
        );
        assert_eq!(a.sample_period_or_freq, 250_000);
        assert_ne!(a.sample_type & st::CALLCHAIN, 0);
    }

    #[test]
    fn path_lookup() {
        assert_eq!(find_in_path("/x/y"), Some(PathBuf::from("/x/y")));
        assert!(find_in_path("sh").is_some());
        assert_eq!(find_in_path("no-such-command-pvpmu"), None);
    }
}
