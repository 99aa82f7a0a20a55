//! `perfvisor record`: profile a guest from the host, for its whole run,
//! with no help from the guest, into perf.data, folded stacks and a flame
//! graph.
//!
//! On a capable host the samples flow from the vCPU threads straight into
//! the writers. Otherwise perfvisor records inside the L1 sandbox into a raw
//! sample file, which the sandbox copies back; the outputs are written here,
//! so they name this host's copies of the guest's binaries.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use record::raw_stream::{RawError, RawItem, RawReader, RawStats, RawWriter};
use record::{
    flamegraph, FlameInput, Folded, GuestBinary, GuestSample, PerfDataWriter, RecordMeta,
    Symbolizer,
};
use vmm::introspect::KernelInfo;
use vmm::orc::OrcTable;
use vmm::recorder::{RecordConfig, RecordStats, RecordedSample};
use vmm::sampler::Backend;
use vmm::Vm;

use crate::error::{exit_code, CliError};
use crate::forward::GivenArgs;
use crate::launch::{
    default_image_dir, guest_orc, resolve, sandbox_for, sandbox_job, ship_guest_orc, use_sandbox,
    vm_config, with_includes, without_kaslr, RunArgs,
};

/// `perfvisor record` options.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Samples per second per vCPU.
    #[arg(short = 'F', long = "freq", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub freq: u32,
    /// Callchains: `fp` walks the guest's frame pointers (kick backend only); kernel frames of a --kernel with ORC tables (CONFIG_UNWINDER_ORC, as distribution kernels) are unwound with those instead.
    #[arg(long = "call-graph", value_parser = ["fp"])]
    pub call_graph: Option<String>,
    /// perf.data output (a directory when guest kernel symbols are known; `perf report -i` opens either).
    #[arg(short = 'o', long = "output", default_value = "perf.data")]
    pub output: PathBuf,
    /// Also write an SVG flame graph.
    #[arg(long)]
    pub flamegraph: Option<PathBuf>,
    /// Also write folded stacks (flamegraph.pl / inferno input).
    #[arg(long)]
    pub folded: Option<PathBuf>,
    /// The guest kernel's symbols: its System.map, a copy of its /proc/kallsyms, or an unstripped vmlinux [default: the default image's]. Without text symbols (Debian's /boot/System.map is a placeholder), kernel frames stay raw addresses and every output is still written.
    #[arg(long)]
    pub guest_system_map: Option<PathBuf>,
    /// A guest executable (unstripped; a PIE's load address comes from the guest kernel's mm->start_code) to resolve user symbols with, for tasks of its name (repeatable) [default: the guest image's tools and the programs given to --include].
    #[arg(long = "guest-binary")]
    pub guest_binaries: Vec<PathBuf>,
    /// Internal: write raw samples here instead of the outputs (the sandboxed half of a record).
    #[arg(long, hide = true)]
    pub raw_out: Option<PathBuf>,
    /// Internal: the guest kernel layout file for task identification.
    #[arg(long, hide = true)]
    pub guest_info: Option<PathBuf>,
}

/// Options of `record` the outer perfvisor keeps: it writes the outputs,
/// from the raw samples the inner one sends back.
pub const RECORD_HOST_ONLY: &[&str] = &[
    "output",
    "flamegraph",
    "folded",
    "guest_system_map",
    "guest_binaries",
    "raw_out",
    "guest_info",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything the outputs need to know besides the samples.
fn meta(
    args: &RecordArgs,
    nr_cpus: u32,
    backend: Backend,
    image_kallsyms: Option<PathBuf>,
) -> RecordMeta {
    let mut m = RecordMeta::new(nr_cpus, args.freq);
    m.guest_image_kallsyms = image_kallsyms;
    // The default image, when this run boots it (its kernel, or its
    // initramfs under another kernel).
    let image = default_image_dir().ok();
    let default_kernel = image.as_deref().filter(|_| args.run.kernel.is_none());
    m.guest_system_map = args
        .guest_system_map
        .clone()
        .or_else(|| default_kernel.map(|i| i.join("System.map")));
    if let Some(image) = default_kernel {
        m.guest_vmlinux = Some(image.join("vmlinux"));
        m.kernel_release = std::fs::read_to_string(image.join("manifest.txt"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("kernel_release=").map(str::to_string))
            })
            .unwrap_or_default();
    }
    let mut bins = args.guest_binaries.clone();
    match &image {
        Some(image) if bins.is_empty() && runs_default_userspace(args, image) => {
            // The guest image's static tools, as scripts/build-guest-image.sh
            // publishes them next to the initramfs that holds them.
            let dir = image.join("guest-tools");
            for name in ["pv-workload", "pvpmu-tool", "pv-exit"] {
                if dir.join(name).is_file() {
                    bins.push(dir.join(name));
                }
            }
        }
        _ => {}
    }
    m.guest_binaries = bins
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect());
            GuestBinary { path, name }
        })
        .collect();
    m.guest_binaries.extend(included_binaries(&args.run));
    m.callchain = args.call_graph.is_some() && backend == Backend::Kick;
    m.backend = backend.to_string();
    m
}

/// What the kernel image the user brings tells the recorder, read once.
#[derive(Default)]
struct KernelFacts {
    /// Where the guest kernel keeps the current task and its ids.
    layout: Option<KernelInfo>,
    /// The kernel's symbols as kallsyms text, from its kallsyms tables.
    kallsyms: Option<String>,
    /// The kernel's ORC tables, for kernel callchains without frame
    /// pointers.
    orc: Option<Arc<OrcTable>>,
}

/// What the recorder needs to know about the guest kernel: where it keeps
/// the current task and its ids, so samples carry the guest pid, tid and
/// comm (the inner perfvisor's --guest-info, the default image's
/// guest-info.txt, or the BTF of the kernel the user brings); for a kernel
/// the user brings, its symbols from the kallsyms tables in its image
/// (used when no System.map or vmlinux has any) and, with --call-graph, its
/// ORC tables. A kernel without them records anyway, and says why.
fn kernel_facts(args: &RecordArgs) -> KernelFacts {
    let from_file = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| KernelInfo::parse(&t))
    };
    let mut facts = KernelFacts::default();
    let Some(kernel) = &args.run.kernel else {
        let default = default_image_dir().ok().map(|d| d.join("guest-info.txt"));
        facts.layout = args
            .guest_info
            .as_deref()
            .or(default.as_deref())
            .and_then(from_file);
        return facts;
    };
    if let Some(p) = &args.guest_info {
        facts.layout = from_file(p);
    }
    if args.run.guest_orc.is_some() {
        facts.orc = guest_orc(&args.run, "record");
    }
    // The inner half of a sandboxed recording writes raw samples only: the
    // outer one reads the image, and hands it the layout and the tables.
    let want_symbols = args.raw_out.is_none();
    let want_orc = args.call_graph.is_some() && args.run.guest_orc.is_none();
    if !want_symbols && !want_orc && facts.layout.is_some() {
        return facts;
    }
    let start = Instant::now();
    let vmlinux = match vmm::kernel_image::Vmlinux::open(kernel) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("perfvisor record: the kernel image gives no task layout, symbols or unwind tables: {e}");
            return facts;
        }
    };
    if facts.layout.is_none() {
        match vmm::btf_layout::layout_from_vmlinux(&vmlinux) {
            Ok(info) => {
                eprintln!(
                    "perfvisor record: guest tasks named with the task_struct layout from {}'s BTF ({:.2} s)",
                    kernel.display(),
                    start.elapsed().as_secs_f64()
                );
                facts.layout = Some(info);
            }
            Err(e) => eprintln!("perfvisor record: guest tasks will not be named: {e}"),
        }
    }
    if want_symbols {
        let start = Instant::now();
        match vmm::kallsyms::symbols_from_image(&vmlinux) {
            Ok(syms) => {
                eprintln!(
                    "perfvisor record: {} guest kernel symbols read from {}'s kallsyms tables ({:.2} s)",
                    syms.len(),
                    kernel.display(),
                    start.elapsed().as_secs_f64()
                );
                facts.kallsyms = Some(vmm::kallsyms::to_kallsyms_text(&syms));
            }
            Err(e) => eprintln!("perfvisor record: {e}"),
        }
    }
    if want_orc {
        match OrcTable::from_image(&vmlinux) {
            Ok(t) => {
                eprintln!(
                    "perfvisor record: guest kernel callchains unwound with {}'s ORC tables ({} entries, {:?} format)",
                    kernel.display(),
                    t.len(),
                    t.format()
                );
                facts.orc = Some(Arc::new(t));
            }
            Err(e) => eprintln!("perfvisor record: {e}"),
        }
    }
    facts
}

/// Writes the recovered kallsyms text into `dir` for the outputs.
fn write_image_kallsyms(facts: &KernelFacts, dir: &Path) -> Result<Option<PathBuf>, CliError> {
    let Some(text) = &facts.kallsyms else {
        return Ok(None);
    };
    let path = dir.join("kallsyms");
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(Some(path))
}

/// The programs the user `--include`s by name, to resolve their frames
/// with, under the name the guest runs them by (the guest path's file
/// name, cut to 15 bytes like a comm). One that cannot be (a stripped
/// file) is named on stderr, and its frames stay addresses.
fn included_binaries(args: &RunArgs) -> Vec<GuestBinary> {
    let mut out = Vec::new();
    for spec in &args.include {
        let mut magic = [0u8; 4];
        let elf = File::open(&spec.host)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if !elf {
            continue;
        }
        let name: String = Path::new(&spec.guest)
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        match Symbolizer::new().add_user_binary(&spec.host, Some(&name)) {
            Ok(_) => out.push(GuestBinary {
                path: spec.host.clone(),
                name: Some(name),
            }),
            Err(e) => eprintln!(
                "perfvisor record: --include {}: its frames stay addresses: {e}",
                spec.host.display()
            ),
        }
    }
    out
}

/// Whether the guest's user space is the default image's (no --initrd, or
/// --initrd naming the default image's initramfs, as with a kernel the user
/// brings): then the image's own tools resolve user frames.
fn runs_default_userspace(args: &RecordArgs, image: &Path) -> bool {
    match &args.run.initrd {
        None => args.run.kernel.is_none(),
        Some(initrd) => {
            let default = image.join("initramfs.cpio");
            match (
                std::fs::canonicalize(initrd),
                std::fs::canonicalize(default),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
    }
}

/// Turns samples into the outputs.
struct Outputs {
    writer: PerfDataWriter,
    folded: Folded,
    symbolizer: Symbolizer,
    per_vcpu: Vec<u64>,
    total: u64,
    with_task: u64,
    first_ns: Option<u64>,
    last_ns: u64,
}

/// A recorder's sample as the outputs and the raw stream take it (record/
/// knows nothing of vmm: docs/architecture.md).
fn guest_sample(s: &RecordedSample) -> GuestSample<'_> {
    GuestSample {
        cpu: u32::from(s.vcpu),
        vcpu_tid: s.vcpu_tid,
        guest_pid: s.task.as_ref().map(|t| t.pid),
        guest_tid: s.task.as_ref().map(|t| t.tid),
        comm: s.task.as_ref().map(|t| t.comm.as_str()),
        start_code: s.task.as_ref().and_then(|t| t.start_code),
        time_ns: s.time_ns,
        ip: s.ip,
        user: s.user,
        callchain: &s.callchain,
        period: s.period,
    }
}

impl Outputs {
    fn new(args: &RecordArgs, meta: &RecordMeta) -> Result<Outputs, CliError> {
        let rec = |e: record::RecordError| CliError::Record(e.to_string());
        Ok(Outputs {
            writer: PerfDataWriter::create(&args.output, meta).map_err(rec)?,
            folded: Folded::new(),
            symbolizer: Symbolizer::from_meta(meta).map_err(rec)?,
            per_vcpu: vec![0; meta.nr_cpus as usize],
            total: 0,
            with_task: 0,
            first_ns: None,
            last_ns: 0,
        })
    }

    fn add(&mut self, g: &GuestSample<'_>) -> Result<(), CliError> {
        self.writer
            .sample(g)
            .map_err(|e| CliError::Record(e.to_string()))?;
        self.folded.add(g, &self.symbolizer);
        if let Some(c) = usize::try_from(g.cpu)
            .ok()
            .and_then(|i| self.per_vcpu.get_mut(i))
        {
            *c += 1;
        }
        self.total += 1;
        self.with_task += u64::from(g.guest_pid.is_some());
        self.first_ns.get_or_insert(g.time_ns);
        self.last_ns = self.last_ns.max(g.time_ns);
        Ok(())
    }

    fn finish(
        self,
        args: &RecordArgs,
        backend: Backend,
        lost: u64,
        walk: Option<(u64, u64)>,
    ) -> Result<(), CliError> {
        let rec = |e: record::RecordError| CliError::Record(e.to_string());
        let summary = self.writer.finish().map_err(rec)?;
        if let Some(p) = &args.folded {
            self.folded.write(p).map_err(rec)?;
        }
        if let Some(svg) = &args.flamegraph {
            let lines = self.folded.lines();
            flamegraph(
                FlameInput::Lines(&lines),
                svg,
                "perfvisor record: guest profile",
            )
            .map_err(rec)?;
        }
        let secs = self.last_ns.saturating_sub(self.first_ns.unwrap_or(0)) as f64 / 1e9;
        let chains = match (args.call_graph.is_some(), backend) {
            (false, _) => "no callchains".to_string(),
            (true, Backend::Kick) => "frame-pointer callchains".to_string(),
            (true, Backend::HostTimer) => {
                "no callchains: the host-timer backend gives only an IP, stacks are IP-only"
                    .to_string()
            }
        };
        eprintln!(
            "perfvisor record: {} samples in {secs:.1} s on {} vCPU(s) ({}), backend {backend}, {chains}, {lost} lost",
            self.total,
            self.per_vcpu.len(),
            self.per_vcpu.iter().map(u64::to_string).collect::<Vec<_>>().join("/"),
        );
        if self.total > 0 {
            eprintln!(
                "  guest task identified for {:.0}% of samples",
                self.with_task as f64 * 100.0 / self.total as f64
            );
        }
        if let Some(note) = self.symbolizer.kernel_note() {
            eprintln!(
                "  guest kernel frames are raw addresses: {note}; pass --guest-system-map with a copy of the guest's /proc/kallsyms or an unstripped vmlinux"
            );
        }
        if let Some((walks, ns)) = walk.filter(|w| w.0 > 0) {
            eprintln!(
                "  callchain walk: {:.1} us per sample ({walks} walks)",
                ns as f64 / walks as f64 / 1e3
            );
        }
        if summary.untracked_task_samples > 0 {
            eprintln!(
                "  {} samples were of guest threads beyond the {} perf.data tracks: their COMM records were written again with each",
                summary.untracked_task_samples,
                record::MAX_TASKS
            );
        }
        if summary.untracked_host_thread_samples > 0 {
            eprintln!(
                "  {} samples were of host vCPU threads beyond the {} perf.data tracks: their COMM records were written again with each",
                summary.untracked_host_thread_samples,
                record::MAX_HOST_THREADS
            );
        }
        if self.folded.folded_stacks() > 0 {
            eprintln!(
                "  {} samples had a stack beyond the {} distinct ones kept: they count as {} in the folded stacks and flame graph (perf.data has them all)",
                self.folded.folded_stacks(),
                record::MAX_STACKS,
                record::OTHER
            );
        }
        eprintln!("  {:>7}  {:>8}  function", "overhead", "samples");
        for (name, n) in self.folded.top(10) {
            eprintln!(
                "  {:>7.2}%  {n:>8}  {name}",
                n as f64 * 100.0 / self.total.max(1) as f64
            );
        }
        eprintln!("  {}", summary.report_hint.replace('\n', "\n  "));
        for (what, p) in [
            ("folded stacks", &args.folded),
            ("flame graph", &args.flamegraph),
        ] {
            if let Some(p) = p {
                eprintln!("  {what}: {}", p.display());
            }
        }
        Ok(())
    }
}

/// Live progress on stderr: samples/s per vCPU, lost, elapsed. On a terminal
/// the line is rewritten in place; `inner` (the sandboxed half, whose
/// stderr is relayed line by line) always ends lines.
fn progress(stats: &RecordStats, start: Instant, last: &mut (Vec<u64>, Instant), inner: bool) {
    let now: Vec<u64> = stats
        .samples
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let secs = last.1.elapsed().as_secs_f64().max(1e-3);
    let rates: Vec<String> = now
        .iter()
        .zip(last.0.iter())
        .map(|(n, l)| format!("{:.0}", (n - l) as f64 / secs))
        .collect();
    let line = format!(
        "perfvisor record: {:>6.1} s, samples/s per vCPU: {}, lost {}",
        start.elapsed().as_secs_f64(),
        rates.join(" "),
        stats.dropped.load(Ordering::Relaxed)
    );
    if std::io::stderr().is_terminal() && !inner {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{line}");
    }
    *last = (now, Instant::now());
}

pub fn record(args: RecordArgs, given: &GivenArgs) -> Result<ExitCode, CliError> {
    if args.run.cpus == 0 {
        return Err(CliError::NoCpus);
    }
    let backend: Backend = args.run.pmu_backend.resolve(args.call_graph.is_some());
    if args.raw_out.is_none() && use_sandbox(&args.run)? {
        return record_in_sandbox(&args, given, backend);
    }
    // The recovered symbols and the includes' archive live here until the
    // outputs are written.
    let private = sandbox::TempDir::new()?;
    let mut boot = with_includes(&args.run, resolve(&args.run)?, private.path())?;
    boot.cmdline = without_kaslr(boot.cmdline);
    // The terminal stays cooked, so Ctrl-C reaches perfvisor. The pvpmu
    // device stays (a guest with the driver boots as usual), but the
    // recorder's hooks replace its sampler, so it walks no callchains.
    let config = vm_config(&args.run, boot, backend, false, false, None);
    let facts = kernel_facts(&args);
    let image_kallsyms = write_image_kallsyms(&facts, private.path())?;
    let mut vm = Vm::new(config, Box::new(std::io::stdout()))?;
    let recording = vm.record(RecordConfig {
        freq: args.freq,
        callchain: args.call_graph.is_some(),
        backend,
        kernel_info: facts.layout,
        orc: facts.orc.clone(),
    });
    vm.stop_on_signals()?;
    let stats = recording.stats.clone();
    let final_stats = recording.stats.clone();

    // The writer: raw samples (sandboxed half) or the outputs.
    let mut raw = match &args.raw_out {
        Some(p) => {
            Some(RawWriter::new(BufWriter::new(File::create(p).map_err(io(p))?)).map_err(io(p))?)
        }
        None => None,
    };
    let mut outputs = match raw {
        Some(_) => None,
        None => Some(Outputs::new(
            &args,
            &meta(&args, u32::from(args.run.cpus), backend, image_kallsyms),
        )?),
    };
    let inner = args.raw_out.is_some();
    let in_place = std::io::stderr().is_terminal() && !inner;
    let writer = std::thread::spawn(move || -> Result<Option<Outputs>, CliError> {
        let start = Instant::now();
        let mut last = (vec![0; stats.samples.len()], start);
        let mut next_progress = start + Duration::from_secs(1);
        loop {
            match recording.samples.recv_timeout(Duration::from_millis(100)) {
                Ok(s) => {
                    if let Some(w) = raw.as_mut() {
                        w.sample(&guest_sample(&s))
                            .map_err(|e| CliError::Record(e.to_string()))?;
                    } else if let Some(o) = outputs.as_mut() {
                        o.add(&guest_sample(&s))?;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_progress {
                progress(&stats, start, &mut last, inner);
                next_progress += Duration::from_secs(if in_place { 1 } else { 5 });
            }
        }
        if in_place {
            eprintln!();
        }
        if let Some(w) = raw {
            let st = RawStats {
                lost: stats.dropped.load(Ordering::Relaxed),
                walks: stats.walks.load(Ordering::Relaxed),
                walk_ns: stats.walk_ns.load(Ordering::Relaxed),
            };
            w.finish(st).map_err(|e| CliError::Record(e.to_string()))?;
        }
        Ok(outputs)
    });
    let report = vm.run()?;
    let outputs = writer
        .join()
        .map_err(|_| CliError::Record("the writer thread panicked".into()))??;
    if let Some(o) = outputs {
        let lost = final_stats.dropped.load(Ordering::Relaxed);
        let walk = (
            final_stats.walks.load(Ordering::Relaxed),
            final_stats.walk_ns.load(Ordering::Relaxed),
        );
        o.finish(&args, backend, lost, Some(walk))?;
        drop(private);
    } else {
        eprintln!(
            "perfvisor record: {} samples, {} lost, callchain walks {} ({} ns in total)",
            final_stats
                .samples
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>(),
            final_stats.dropped.load(Ordering::Relaxed),
            final_stats.walks.load(Ordering::Relaxed),
            final_stats.walk_ns.load(Ordering::Relaxed)
        );
    }
    if let Some(msg) = report.outcome.describe() {
        eprintln!("perfvisor: {msg}");
    }
    // Ctrl-C is how a recording of a long-running guest ends: the outputs
    // are written, and that is a success.
    Ok(match report.outcome {
        vmm::end::VmOutcome::Interrupted => ExitCode::SUCCESS,
        o => exit_code(o.exit_code()),
    })
}

/// Record inside the L1 sandbox into a raw file, copy it back, write the
/// outputs here.
fn record_in_sandbox(
    args: &RecordArgs,
    given: &GivenArgs,
    backend: Backend,
) -> Result<ExitCode, CliError> {
    let mut extra = vec!["--raw-out".to_string(), "/out/samples.raw".into()];
    // A private directory (0700, random name) that the sandbox creates the
    // collect directory in: nothing another local user made is written
    // through. Removed when this function returns.
    let private = sandbox::TempDir::new()?;
    let host_out = private.path().join("out");
    // The task layout is found here, where the kernel file is, and goes in
    // as the inner perfvisor's --guest-info.
    let facts = kernel_facts(args);
    let image_kallsyms = write_image_kallsyms(&facts, private.path())?;
    let layout = facts.layout;
    let info = private.path().join("guest-info.txt");
    if let Some(layout) = layout {
        std::fs::write(&info, layout.to_text()).map_err(io(&info))?;
        extra.extend(["--guest-info".into(), "/perfvisor/guest-info.txt".into()]);
    }
    let orc_file = args
        .call_graph
        .is_some()
        .then(|| ship_guest_orc(facts.orc.as_deref(), private.path(), &mut extra))
        .transpose()?;
    let mut job = sandbox_job(
        &args.run,
        "record",
        given,
        RECORD_HOST_ONLY,
        &extra,
        private.path(),
    )?
    .collect("/out", &host_out);
    if layout.is_some() {
        job = job.file(&info, "/perfvisor/guest-info.txt");
    }
    if let Some((file, in_l1)) = &orc_file {
        job = job.file(file, in_l1);
    }
    // Ctrl-C (or SIGTERM) stops the recording inside the L1 the way it
    // stops a direct one; the outputs are still written. A second one kills
    // the L1.
    let stops = vmm::end::interrupt_counter()
        .map_err(|e| CliError::Record(format!("installing the SIGINT handler: {e}")))?;
    job = job.stoppable(stops);
    // The outputs and their symbol sources are checked before the guest
    // boots: a bad path fails now, not after the samples are taken.
    let mut outputs = Outputs::new(
        args,
        &meta(args, u32::from(args.run.cpus), backend, image_kallsyms),
    )?;
    let outcome = sandbox_for(&args.run)?.run(&job, &mut |line: &str| {
        // The inner perfvisor's progress and summary are about the raw
        // half; keep its progress, drop its summary (ours follows).
        println!("{line}")
    })?;
    let raw_path = host_out.join("samples.raw");
    if outcome.status != 0 && !raw_path.exists() {
        // The inner perfvisor failed before recording; its one-line error
        // is above, and its status is ours.
        return Ok(exit_code(outcome.status));
    }
    let result = (|| -> Result<(), CliError> {
        let raw_err = |e: RawError| CliError::Record(format!("{}: {e}", raw_path.display()));
        let file = File::open(&raw_path).map_err(io(&raw_path))?;
        let mut r = RawReader::open(BufReader::new(file)).map_err(raw_err)?;
        let mut st = RawStats::default();
        while let Some(item) = r.next_item().map_err(raw_err)? {
            match item {
                RawItem::Sample(s) => outputs.add(&s.as_guest_sample())?,
                RawItem::Stats(s) => st = s,
            }
        }
        outputs.finish(args, backend, st.lost, Some((st.walks, st.walk_ns)))
    })();
    drop(private);
    result?;
    Ok(exit_code(outcome.status))
}
