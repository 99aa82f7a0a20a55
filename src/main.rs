//! The `perfvisor` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use thiserror::Error;

use vmm::probe::probe;
use vmm::sampler::Backend;
use vmm::vm::PmuOptions;
use vmm::{Vm, VmConfig};

mod forward;
mod record_cmd;

use forward::GivenArgs;

#[derive(Parser)]
#[command(
    name = "perfvisor",
    version,
    about = "A small KVM VMM that gives Linux guests a host-produced sampling PMU"
)]
struct Cli {
    /// More log output (-v info, -vv debug); PERFVISOR_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest. With no --kernel, boots the project's default guest image.
    Run(RunArgs),
    /// Profile a guest from the host for its whole run (no guest driver
    /// needed): perf.data, folded stacks, a flame graph.
    Record(Box<record_cmd::RecordArgs>),
    /// Check whether this host's /dev/kvm can run guest user space.
    Probe,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum KvmChoice {
    /// Use /dev/kvm when the probe passes, else the L1 sandbox.
    Auto,
    /// Always use this host's /dev/kvm.
    Host,
    /// Always run inside the L1 sandbox (QEMU TCG with nested kvm-amd).
    Sandbox,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum PmuBackend {
    /// The host timer when this host allows a cpu-clock event with
    /// exclude_host (it samples without exits to user space), else kicks.
    Auto,
    /// Kick the vCPU out of KVM_RUN at each sample and read its registers.
    Kick,
    /// A host cpu-clock event with exclude_host; kicks only to deliver.
    HostTimer,
}

impl PmuBackend {
    /// The backend to use; `need_registers` (callchains) rules the host
    /// timer out, which only gives an IP.
    fn resolve(self, need_registers: bool) -> Backend {
        match self {
            PmuBackend::Kick => Backend::Kick,
            PmuBackend::HostTimer => Backend::HostTimer,
            PmuBackend::Auto if need_registers => Backend::Kick,
            PmuBackend::Auto => match vmm::host_timer::HostTimer::open_for_current_thread(1000) {
                Ok(_) => Backend::HostTimer,
                Err(e) => {
                    log::info!("host cpu-clock event unavailable ({e}); sampling with kicks");
                    Backend::Kick
                }
            },
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Kernel image: ELF vmlinux or bzImage [default: the default guest image's vmlinux].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs [default: the default guest image's, when --kernel is not given].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default one.
    #[arg(long)]
    cmdline: Option<String>,
    /// Extra kernel command-line arguments, appended to the default or --cmdline.
    #[arg(long)]
    append: Option<String>,
    /// Guest RAM, e.g. 256M or 1G (a bare number is MiB).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    timeout: Option<u64>,
    /// Which KVM runs the guest.
    #[arg(long, value_enum, default_value_t = KvmChoice::Auto)]
    kvm: KvmChoice,
    /// Highest host sampling rate of the pvpmu device per vCPU, Hz; 0 leaves
    /// the device out. The guest decides how much of it to use: each sample
    /// costs host CPU (a vCPU exit with the kick backend, a host perf tick
    /// with the host timer), up to this rate on every vCPU, within
    /// --pmu-budget.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pmu_freq: u32,
    /// Most pvpmu samples per second across the whole VM, whatever the guest
    /// asks; samples over it are skipped and counted (budget_skipped).
    /// Default: 8000 or --pmu-freq, whichever is higher. The sampler thread
    /// also keeps itself within half a CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pmu_budget: Option<u32>,
    /// How the host takes pvpmu samples: kick the vCPU and read its registers,
    /// or a host cpu-clock perf event with exclude_host on each vCPU thread.
    #[arg(long, value_enum, default_value_t = PmuBackend::Auto)]
    pmu_backend: PmuBackend,
    /// Command for the guest's /init to run (default image); its exit status becomes perfvisor's.
    #[arg(last = true)]
    guest_command: Vec<String>,
}

impl RunArgs {
    /// The VM-wide sample budget in force (see `--pmu-budget`).
    fn pmu_budget(&self) -> u32 {
        self.pmu_budget
            .unwrap_or(DEFAULT_PMU_BUDGET.max(self.pmu_freq))
    }
}

/// `--pmu-budget` when not given (or `--pmu-freq`, if higher): 1 kHz on
/// eight busy vCPUs.
const DEFAULT_PMU_BUDGET: u32 = 8000;

/// Where the guest image's /init finds the command to run.
const GUEST_COMMAND_PATH: &str = "perfvisor/command";

/// Default kernel command line: serial console, reboot through the i8042,
/// reboot at once on panic, quiet boot.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

#[derive(Debug, Error)]
enum CliError {
    #[error("kernel image {0} not found: pass --kernel PATH, or build the default guest image with scripts/build-guest-image.sh")]
    KernelMissing(PathBuf),
    #[error("initrd {0} not found")]
    InitrdMissing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("a guest command needs an initramfs whose /init runs it: with --kernel, pass --initrd too (the default guest image's is {0})")]
    NoInitrd(PathBuf),
    #[error(transparent)]
    Vm(#[from] vmm::VmError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    #[error("recording: {0}")]
    Record(String),
}

fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {s:?}: use a number with an optional K, M, G or T suffix, e.g. 256M")
    };
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64 << 20),
        Some((i, _)) => {
            let mult = match t[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "K" => 1u64 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(bytes)
}

/// The default guest image directory: $PERFVISOR_GUEST_IMAGE, else build/guest-image in the source tree.
fn default_image_dir() -> PathBuf {
    std::env::var_os("PERFVISOR_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("build/guest-image"))
}

fn check_readable(path: &Path, missing: fn(PathBuf) -> CliError) -> Result<(), CliError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing(path.to_path_buf())),
        Err(source) => Err(CliError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Resolve kernel, initrd and command line from the arguments.
fn resolve(args: &RunArgs) -> Result<(PathBuf, Option<PathBuf>, String), CliError> {
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let dir = default_image_dir();
            (
                dir.join("vmlinux"),
                Some(
                    args.initrd
                        .clone()
                        .unwrap_or_else(|| dir.join("initramfs.cpio")),
                ),
            )
        }
    };
    check_readable(&kernel, CliError::KernelMissing)?;
    match &initrd {
        Some(i) => check_readable(i, CliError::InitrdMissing)?,
        // Checked here, before any boot (and before the sandbox's).
        None if !args.guest_command.is_empty() => {
            return Err(CliError::NoInitrd(
                default_image_dir().join("initramfs.cpio"),
            ))
        }
        None => {}
    }
    let mut cmdline = args
        .cmdline
        .clone()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    Ok((kernel, initrd, cmdline))
}

fn run_host(args: &RunArgs) -> Result<ExitCode, CliError> {
    let (kernel, initrd, cmdline) = resolve(args)?;
    // The command travels as a file appended to the initramfs, so any shell
    // text survives (the kernel command line would split and unquote it).
    let initrd_files = guest_command_files(args);
    let backend = args.pmu_backend.resolve(false);
    let config = VmConfig {
        kernel,
        initrd,
        initrd_files,
        cmdline,
        mem_size: args.memory,
        cpus: args.cpus,
        timeout: args.timeout.map(Duration::from_secs),
        console_input: true,
        pmu: (args.pmu_freq > 0).then_some(PmuOptions {
            freq: args.pmu_freq,
            backend,
            // A forced host timer gives IPs only; auto and kick sample
            // callchain events with kicks.
            callchains: args.pmu_backend != PmuBackend::HostTimer,
            budget: args.pmu_budget(),
        }),
    };
    let vm = Vm::new(config, Box::new(std::io::stdout()))?;
    let report = vm.run()?;
    let outcome = report.outcome;
    if let Some(c) = report.pvpmu {
        let errors = c.err_commands + c.err_pages + c.err_tails + c.err_state;
        if c.samples + c.lost + c.aux_bytes + errors > 0 {
            eprintln!(
                "perfvisor: pvpmu: backend={} {} budget={} budget_skipped={}",
                backend,
                pvpmu_summary(&c),
                args.pmu_budget(),
                report.budget_skipped
            );
        }
    }
    if let Some(msg) = outcome.describe() {
        eprintln!("perfvisor: {msg}");
    }
    Ok(exit_code(outcome.exit_code()))
}

/// The device counters as `key=value` pairs (tests parse this line).
fn pvpmu_summary(c: &devices::pvpmu::CounterSnapshot) -> String {
    let exits: Vec<String> = devices::pvpmu::trace::ExitReason::ALL
        .iter()
        .zip(c.aux_exits)
        .map(|(r, n)| format!("exits_{}={n}", r.name()))
        .collect();
    format!(
        "samples={} lost={} interrupts={} aux_bytes={} aux_records={} aux_dropped={} exits_total={} {} err_commands={} err_pages={} err_tails={} err_state={}",
        c.samples,
        c.lost,
        c.interrupts,
        c.aux_bytes,
        c.aux_records,
        c.aux_dropped,
        c.aux_exits.iter().sum::<u64>(),
        exits.join(" "),
        c.err_commands,
        c.err_pages,
        c.err_tails,
        c.err_state
    )
}

/// The guest command as a file appended to the initramfs: any shell text
/// survives (the kernel command line would split and unquote it).
fn guest_command_files(args: &RunArgs) -> Vec<vmm::boot::InitrdFile> {
    if args.guest_command.is_empty() {
        return Vec::new();
    }
    let mut data = args.guest_command.join(" ").into_bytes();
    data.push(b'\n');
    vec![vmm::boot::InitrdFile {
        path: GUEST_COMMAND_PATH.into(),
        data,
    }]
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(args: RunArgs, given: &GivenArgs) -> Result<ExitCode, CliError> {
    if args.cpus == 0 {
        return Err(CliError::NoCpus);
    }
    if use_sandbox(&args)? {
        let job = sandbox_job(&args, "run", given, &[], &[])?;
        let outcome = sandbox_for(&args)?.run(&job, &mut |line: &str| println!("{line}"))?;
        Ok(exit_code(outcome.status))
    } else {
        run_host(&args)
    }
}

/// Does this run go to the L1 sandbox (`--kvm`, or the probe says this
/// host's KVM cannot run guest user space)?
fn use_sandbox(args: &RunArgs) -> Result<bool, CliError> {
    Ok(match args.kvm {
        KvmChoice::Host => false,
        KvmChoice::Sandbox => true,
        KvmChoice::Auto => {
            let p = match probe(Duration::from_secs(5)) {
                Ok(p) => p,
                // No KVM this process can use at all (the common CI
                // container): the sandbox is QEMU TCG and needs none.
                Err(
                    e @ (vmm::VmError::NoKvm
                    | vmm::VmError::KvmPermission
                    | vmm::VmError::KvmOpen(_)
                    | vmm::VmError::MissingCap(_)),
                ) => {
                    eprintln!(
                        "perfvisor: {}; running the guest inside the L1 sandbox (QEMU TCG with nested kvm-amd)",
                        no_kvm_reason(&e)
                    );
                    return Ok(true);
                }
                Err(e) => return Err(e.into()),
            };
            if !p.capable {
                eprintln!(
                    "perfvisor: this host's /dev/kvm cannot run guest user space ({}); running the guest inside the L1 sandbox (QEMU TCG with nested kvm-amd)",
                    p.detail
                );
            }
            !p.capable
        }
    })
}

/// Why this host's KVM is unusable, without the advice of the error itself
/// (which is for `--kvm host`).
fn no_kvm_reason(e: &vmm::VmError) -> String {
    match e {
        vmm::VmError::NoKvm => "no /dev/kvm on this host".into(),
        vmm::VmError::KvmPermission => "no permission to open /dev/kvm".into(),
        vmm::VmError::KvmOpen(err) => format!("cannot open /dev/kvm ({err})"),
        vmm::VmError::MissingCap(cap) => format!("this host's KVM lacks {cap}"),
        other => other.to_string(),
    }
}

/// The L1 sandbox sized for `args`' guest.
fn sandbox_for(args: &RunArgs) -> Result<sandbox::Sandbox, CliError> {
    let l1_mib = u32::try_from(args.memory >> 20)
        .unwrap_or(u32::MAX)
        .saturating_add(1024);
    Ok(sandbox::Sandbox::locate()?
        .memory_mib(l1_mib)
        .cpus(u32::from(args.cpus).max(2)))
}

/// Options of `run` (and so of `record`) that the sandbox job rewrites:
/// where the guest runs, and the host files it ships.
const RUN_HOST_ONLY: &[&str] = &["kernel", "initrd", "kvm"];

/// A sandbox job running `perfvisor SUB --kvm host` with `args`' kernel and
/// initrd shipped in, `extra` options of SUB, and every option the user
/// gave (`given`) except [`RUN_HOST_ONLY`] and `host_only` (SUB's own
/// host-side options): a new option reaches the inner perfvisor by itself.
fn sandbox_job(
    args: &RunArgs,
    sub: &str,
    given: &GivenArgs,
    host_only: &[&str],
    extra: &[String],
) -> Result<sandbox::Job, CliError> {
    let (kernel, initrd, _) = resolve(args)?;
    let exe = std::env::current_exe().map_err(|source| CliError::Unreadable {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut argv: Vec<String> = [
        "/perfvisor/perfvisor",
        sub,
        "--kvm",
        "host",
        "--kernel",
        "/perfvisor/kernel",
    ]
    .map(String::from)
    .to_vec();
    if initrd.is_some() {
        argv.extend(["--initrd".into(), "/perfvisor/initrd".into()]);
    }
    argv.extend(extra.iter().cloned());
    let skip: Vec<&str> = RUN_HOST_ONLY.iter().chain(host_only).copied().collect();
    argv.extend(given.argv_without(&skip));
    // The inner perfvisor logs at the level this one does.
    let level = log::max_level().to_string().to_lowercase();
    let mut job = sandbox::Job::new(argv)
        .env(
            "PERFVISOR_LOG",
            &std::env::var("PERFVISOR_LOG").unwrap_or(level),
        )
        .binary(&exe, "/perfvisor/perfvisor")
        .file(&kernel, "/perfvisor/kernel");
    if let Some(i) = &initrd {
        job = job.file(i, "/perfvisor/initrd");
    }
    Ok(job)
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    // One line: clap's first line, without its own "error: " prefix.
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    eprintln!(
                        "perfvisor: {} (see perfvisor --help)",
                        first.trim_start_matches("error: ")
                    );
                    ExitCode::from(2)
                }
            };
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("PERFVISOR_LOG", level))
        .format_timestamp(None)
        .format_target(false)
        .init();
    // What the user gave, for a perfvisor the run is forwarded to.
    let given = matches
        .subcommand()
        .map(|(name, m)| GivenArgs::from_matches(&Cli::command(), name, m))
        .unwrap_or_default();
    let result = match cli.command {
        Command::Run(args) => run(args, &given),
        Command::Record(args) => record_cmd::record(*args, &given),
        Command::Probe => match probe(Duration::from_secs(5)) {
            Ok(p) => {
                println!(
                    "{}: {} ({} ms)",
                    if p.capable { "capable" } else { "not capable" },
                    p.detail,
                    p.elapsed.as_millis()
                );
                Ok(ExitCode::from(if p.capable { 0 } else { 1 }))
            }
            // No KVM at all is a verdict too (the sandbox needs none).
            Err(
                e @ (vmm::VmError::NoKvm
                | vmm::VmError::KvmPermission
                | vmm::VmError::KvmOpen(_)
                | vmm::VmError::MissingCap(_)),
            ) => {
                println!("not capable: {} (0 ms)", no_kvm_reason(&e));
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perfvisor: error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options the user gave, as the sandboxed perfvisor gets them.
    fn forwarded(line: &[&str], host_only: &[&str]) -> (GivenArgs, Vec<String>) {
        let cmd = Cli::command();
        let m = cmd
            .clone()
            .try_get_matches_from(line)
            .expect("the test line parses");
        let (name, sub) = m.subcommand().expect("a subcommand");
        let given = GivenArgs::from_matches(&cmd, name, sub);
        let skip: Vec<&str> = RUN_HOST_ONLY.iter().chain(host_only).copied().collect();
        let argv = given.argv_without(&skip);
        (given, argv)
    }

    /// Every option of `sub` is in `line` (so a new option must be added
    /// to the round-trip test, and to a host-only list if the sandbox job
    /// must rewrite it).
    fn covers_every_option(sub: &str, given: &GivenArgs) {
        let cmd = Cli::command();
        let sub = cmd.find_subcommand(sub).expect("subcommand");
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                ["help", "version", "verbose"].contains(&id) || given.ids().contains(&id),
                "option {id} is not in the forwarding test: add it, and to RUN_HOST_ONLY or \
                 RECORD_HOST_ONLY if the sandbox job must not pass it on as given"
            );
        }
    }

    const RUN_LINE: &[&str] = &[
        "perfvisor",
        "run",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
        "--cmdline",
        "console=ttyS0 x",
        "--append=-weird=1",
        "--memory",
        "512M",
        "--cpus",
        "3",
        "--timeout",
        "9",
        "--kvm",
        "sandbox",
        "--pmu-freq",
        "500",
        "--pmu-budget",
        "900",
        "--pmu-backend",
        "host-timer",
        "--",
        "echo",
        "hi -x",
        "--not-an-option",
    ];

    #[test]
    fn run_options_reach_the_sandboxed_perfvisor() {
        let (given, argv) = forwarded(RUN_LINE, &[]);
        covers_every_option("run", &given);
        let inner = ["perfvisor", "run"]
            .iter()
            .map(|s| s.to_string())
            .chain(argv.clone());
        let Command::Run(mut got) = Cli::try_parse_from(inner)
            .expect("inner line parses")
            .command
        else {
            panic!("not run: {argv:?}");
        };
        let Command::Run(mut want) = Cli::try_parse_from(RUN_LINE).expect("parses").command else {
            panic!("not run");
        };
        for a in [&mut got, &mut want] {
            (a.kernel, a.initrd, a.kvm) = (None, None, KvmChoice::Auto);
        }
        assert_eq!(
            format!("{got:?}"),
            format!("{want:?}"),
            "inner line {argv:?}"
        );
        for host in ["--kernel", "--initrd", "--kvm"] {
            assert!(
                !argv.iter().any(|a| a.starts_with(host)),
                "{host} forwarded: {argv:?}"
            );
        }
    }

    #[test]
    fn record_options_reach_the_sandboxed_perfvisor() {
        let mut line = vec!["perfvisor", "record"];
        line.extend(&RUN_LINE[2..RUN_LINE.len() - 4]);
        line.extend([
            "-F",
            "250",
            "--call-graph",
            "fp",
            "-o",
            "/out.data",
            "--flamegraph",
            "/f.svg",
            "--folded",
            "/f.folded",
            "--guest-system-map",
            "/m",
            "--guest-binary",
            "/b1",
            "--guest-binary",
            "/b2",
            "--raw-out",
            "/r",
            "--guest-info",
            "/g",
            "--guest-orc",
            "/o",
            "--",
            "true",
        ]);
        let (given, argv) = forwarded(&line, record_cmd::RECORD_HOST_ONLY);
        covers_every_option("record", &given);
        let inner = ["perfvisor", "record"]
            .iter()
            .map(|s| s.to_string())
            .chain(argv.clone());
        let Command::Record(got) = Cli::try_parse_from(inner)
            .expect("inner line parses")
            .command
        else {
            panic!("not record: {argv:?}");
        };
        let Command::Record(want) = Cli::try_parse_from(&line).expect("parses").command else {
            panic!("not record");
        };
        assert_eq!((got.freq, &got.call_graph), (want.freq, &want.call_graph));
        assert_eq!(got.run.pmu_budget, want.run.pmu_budget);
        assert_eq!(got.run.guest_command, want.run.guest_command);
        assert!(
            got.guest_binaries.is_empty() && got.raw_out.is_none() && got.guest_orc.is_none(),
            "{argv:?}"
        );
        assert_eq!(
            got.output,
            PathBuf::from("perf.data"),
            "the outer perfvisor writes -o"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2048k"), Ok(2 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
