//! What every subcommand that boots a guest shares: the run options, the
//! boot spec they resolve to (kernel, initramfs, command line; the
//! default guest image by the artefact search order), the one `VmConfig`
//! built from them, and where the guest runs (this host's KVM or the L1
//! sandbox, with the job that forwards the user's own options).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use vmm::orc::OrcTable;
use vmm::probe::probe;
use vmm::sampler::Backend;
use vmm::vm::PmuOptions;
use vmm::VmConfig;

use crate::error::CliError;
use crate::forward::GivenArgs;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum KvmChoice {
    /// Use /dev/kvm when the probe passes, else the L1 sandbox.
    Auto,
    /// Always use this host's /dev/kvm.
    Host,
    /// Always run inside the L1 sandbox (QEMU TCG with nested kvm-amd).
    Sandbox,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum PmuBackend {
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
    pub(crate) fn resolve(self, need_registers: bool) -> Backend {
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
pub(crate) struct RunArgs {
    /// Kernel image: ELF vmlinux or bzImage [default: the default guest image's vmlinux].
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs [default: the default guest image's, when --kernel is not given].
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default one.
    #[arg(long)]
    pub(crate) cmdline: Option<String>,
    /// Extra kernel command-line arguments, appended to the default or --cmdline.
    #[arg(long)]
    pub(crate) append: Option<String>,
    /// Guest RAM, e.g. 256M or 1G (a bare number is MiB).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub(crate) memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub(crate) cpus: u8,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    pub(crate) timeout: Option<u64>,
    /// Which KVM runs the guest.
    #[arg(long, value_enum, default_value_t = KvmChoice::Auto)]
    pub(crate) kvm: KvmChoice,
    /// Highest host sampling rate of the pvpmu device per vCPU, Hz; 0 leaves
    /// the device out. The guest decides how much of it to use: each sample
    /// costs host CPU (a vCPU exit with the kick backend, a host perf tick
    /// with the host timer), up to this rate on every vCPU, within
    /// --pmu-budget.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) pmu_freq: u32,
    /// Most pvpmu samples per second across the whole VM, whatever the guest
    /// asks; samples over it are skipped and counted (budget_skipped).
    /// Default: 8000 or --pmu-freq, whichever is higher. The sampler thread
    /// also keeps itself within half a CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) pmu_budget: Option<u32>,
    /// How the host takes pvpmu samples: kick the vCPU and read its registers,
    /// or a host cpu-clock perf event with exclude_host on each vCPU thread.
    #[arg(long, value_enum, default_value_t = PmuBackend::Auto)]
    pub(crate) pmu_backend: PmuBackend,
    /// A host file or directory to put in the guest's root filesystem, at
    /// GUEST_PATH (default: /NAME); repeatable. Modes and symbolic links are
    /// kept; an executable brings its shared libraries and loader. Appended
    /// to the initramfs (the default image's or --initrd's; alone, it is the
    /// initramfs).
    #[arg(long = "include", value_name = "HOST_PATH[:GUEST_PATH]", value_parser = crate::include::parse_include)]
    pub(crate) include: Vec<crate::include::IncludeSpec>,
    /// Internal: the archive of the includes (the inner half of a sandboxed run).
    #[arg(long, hide = true)]
    pub(crate) include_archive: Option<PathBuf>,
    /// Internal: the guest kernel's ORC tables (perfvisor's own file), for
    /// kernel callchains; the outer half of a sandboxed run reads them from
    /// the kernel image.
    #[arg(long, hide = true)]
    pub(crate) guest_orc: Option<PathBuf>,
    /// Command for the guest's /init to run (default image); its exit status becomes perfvisor's.
    #[arg(last = true)]
    pub(crate) guest_command: Vec<String>,
}

impl RunArgs {
    /// The VM-wide sample budget in force (see `--pmu-budget`).
    pub(crate) fn pmu_budget(&self) -> u32 {
        self.pmu_budget
            .unwrap_or(DEFAULT_PMU_BUDGET.max(self.pmu_freq))
    }
}

/// `--pmu-budget` when not given (or `--pmu-freq`, if higher): 1 kHz on
/// eight busy vCPUs.
pub(crate) const DEFAULT_PMU_BUDGET: u32 = 8000;

/// Where the guest image's /init finds the command to run.
pub(crate) const GUEST_COMMAND_PATH: &str = "perfvisor/command";

/// Default kernel command line: serial console, reboot through the i8042,
/// reboot at once on panic, quiet boot.
pub(crate) const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
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

/// The default guest image directory, by the artefact search order
/// (`$PERFVISOR_GUEST_IMAGE`, the installed data directory, the build
/// tree; docs/install.md).
pub(crate) fn default_image_dir() -> Result<PathBuf, artefacts::Error> {
    artefacts::find(artefacts::Kind::GuestImage).map(|f| f.dir)
}

pub(crate) fn check_readable(
    path: &Path,
    missing: fn(PathBuf) -> CliError,
) -> Result<(), CliError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing(path.to_path_buf())),
        Err(source) => Err(CliError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What to boot: kernel, initramfs and command line.
#[derive(Debug, Clone)]
pub(crate) struct BootSpec {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: Option<PathBuf>,
    pub(crate) cmdline: String,
    /// The archive of the `--include`s, appended to the initramfs.
    pub(crate) includes: Option<PathBuf>,
}

/// Resolve kernel, initrd and command line from the arguments.
pub(crate) fn resolve(args: &RunArgs) -> Result<BootSpec, CliError> {
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => {
            let dir = default_image_dir()?;
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
    crate::include::check(&args.include)?;
    let initrd = match initrd {
        Some(i) => Some(i),
        None => image_for_kernel(&kernel, !args.guest_command.is_empty())?,
    };
    if let Some(i) = &initrd {
        check_readable(i, CliError::InitrdMissing)?;
    }
    let mut cmdline = args
        .cmdline
        .clone()
        .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    Ok(BootSpec {
        kernel,
        initrd,
        cmdline,
        includes: args.include_archive.clone(),
    })
}

/// `boot` with the archive of `args`' `--include`s, written into `dir`
/// (which must outlive the boot); says on stderr what went in.
pub(crate) fn with_includes(
    args: &RunArgs,
    mut boot: BootSpec,
    dir: &Path,
) -> Result<BootSpec, CliError> {
    if args.include.is_empty() {
        return Ok(boot);
    }
    let path = dir.join("include.cpio");
    let s = crate::include::write_archive(&args.include, &path, args.memory)?;
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    eprintln!(
        "perfvisor: --include: {} files, {} directories, {} symbolic links, {} shared libraries ({:.1} MiB) for the guest",
        s.files,
        s.dirs,
        s.symlinks,
        s.libraries,
        size as f64 / f64::from(1u32 << 20)
    );
    boot.includes = Some(path);
    Ok(boot)
}

/// The initramfs built for `kernel`'s release by `scripts/build-guest-image.sh
/// --for-kernel` (`<guest image>/kernels/<release>/initramfs.cpio`), for a
/// `--kernel` given without `--initrd`. None when there is none and no guest
/// command needs one; an error naming the command that builds it when one
/// does. Checked here, before any boot (and before the sandbox's).
fn image_for_kernel(kernel: &Path, needed: bool) -> Result<Option<PathBuf>, CliError> {
    let release = vmm::kernel_image::kernel_release(kernel);
    let dir = default_image_dir().ok();
    if let (Some(release), Some(dir)) = (&release, &dir) {
        // The default image's own kernel, or one built for another.
        let own = std::fs::read_to_string(dir.join("manifest.txt")).is_ok_and(|m| {
            m.lines()
                .any(|l| l.strip_prefix("kernel_release=") == Some(release.as_str()))
        });
        let cpio = if own {
            dir.join("initramfs.cpio")
        } else {
            dir.join("kernels").join(release).join("initramfs.cpio")
        };
        if cpio.is_file() {
            eprintln!(
                "perfvisor: Linux {release}: using its guest image {}",
                cpio.display()
            );
            return Ok(Some(cpio));
        }
    }
    if !needed {
        return Ok(None);
    }
    Err(match release {
        Some(release) => CliError::NoImageForKernel(release),
        None => CliError::NoInitrd(kernel.to_path_buf()),
    })
}

/// The guest command as a file appended to the initramfs: any shell text
/// survives (the kernel command line would split and unquote it).
pub(crate) fn guest_command_files(args: &RunArgs) -> Vec<vmm::boot::InitrdFile> {
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

/// The one `VmConfig` for `args`: `run` and `record` differ only in the
/// backend, whether the console reads stdin, and whether the pvpmu
/// device walks callchains itself.
pub(crate) fn vm_config(
    args: &RunArgs,
    boot: BootSpec,
    backend: Backend,
    console_input: bool,
    callchains: bool,
    orc: Option<Arc<OrcTable>>,
) -> VmConfig {
    VmConfig {
        kernel: boot.kernel,
        initrd: boot.initrd,
        // The command travels as a file appended to the initramfs, so any
        // shell text survives (the kernel command line would split and
        // unquote it).
        initrd_files: guest_command_files(args),
        initrd_archives: boot.includes.into_iter().collect(),
        cmdline: boot.cmdline,
        mem_size: args.memory,
        cpus: args.cpus,
        timeout: args.timeout.map(Duration::from_secs),
        console_input,
        pmu: (args.pmu_freq > 0).then_some(PmuOptions {
            freq: args.pmu_freq,
            backend,
            callchains,
            budget: args.pmu_budget(),
            orc,
        }),
    }
}

/// Does this run go to the L1 sandbox (`--kvm`, or the probe says this
/// host's KVM cannot run guest user space)?
pub(crate) fn use_sandbox(args: &RunArgs) -> Result<bool, CliError> {
    Ok(match args.kvm {
        KvmChoice::Host => false,
        KvmChoice::Sandbox => true,
        KvmChoice::Auto => {
            let p = match probe(Duration::from_secs(5)) {
                Ok(p) => p,
                // No KVM this process can use at all (the common CI
                // container): the sandbox is QEMU TCG and needs none.
                Err(e) => match no_kvm_reason(&e) {
                    Some(why) => {
                        eprintln!(
                            "perfvisor: {why}; running the guest inside the L1 sandbox (QEMU TCG with nested kvm-amd)"
                        );
                        return Ok(true);
                    }
                    None => return Err(e.into()),
                },
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

/// When `e` says this process has no usable KVM at all, why, without the
/// advice of the error itself (which is for `--kvm host`); `None` for
/// every other error.
pub(crate) fn no_kvm_reason(e: &vmm::VmError) -> Option<String> {
    Some(match e {
        vmm::VmError::NoKvm => "no /dev/kvm on this host".into(),
        vmm::VmError::KvmPermission => "no permission to open /dev/kvm".into(),
        vmm::VmError::KvmOpen(err) => format!("cannot open /dev/kvm ({err})"),
        vmm::VmError::MissingCap(cap) => format!("this host's KVM lacks {cap}"),
        _ => return None,
    })
}

/// The L1 sandbox sized for `args`' guest.
pub(crate) fn sandbox_for(args: &RunArgs) -> Result<sandbox::Sandbox, CliError> {
    let l1_mib = u32::try_from(args.memory >> 20)
        .unwrap_or(u32::MAX)
        .saturating_add(1024);
    Ok(sandbox::Sandbox::locate()?
        .memory_mib(l1_mib)
        .cpus(u32::from(args.cpus).max(2)))
}

/// Options of `run` (and so of `record`) that the sandbox job rewrites:
/// where the guest runs, and the host files it ships.
pub(crate) const RUN_HOST_ONLY: &[&str] = &[
    "kernel",
    "initrd",
    "kvm",
    "guest_orc",
    "include",
    "include_archive",
];

/// The guest kernel's ORC tables, for kernel callchains of a kernel built
/// without frame pointers (Debian's: `CONFIG_UNWINDER_ORC`): from
/// `--guest-orc` (the inner half of a sandboxed run), else from a
/// `--kernel` image that has them, saying so in one line on stderr (`who`
/// names the subcommand). None for a kernel with none (perfvisor's own,
/// which has frame pointers): frame pointers are walked.
pub(crate) fn guest_orc(args: &RunArgs, who: &str) -> Option<Arc<OrcTable>> {
    if let Some(p) = &args.guest_orc {
        let table = match std::fs::read(p) {
            Ok(b) if b == NO_ORC => return None,
            Ok(b) => OrcTable::from_bytes(&b).map_err(str::to_string),
            Err(e) => Err(e.to_string()),
        };
        return match table {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                eprintln!("perfvisor {who}: {}: {e}", p.display());
                None
            }
        };
    }
    let kernel = args.kernel.as_ref()?;
    let start = std::time::Instant::now();
    let image = vmm::kernel_image::Vmlinux::open(kernel).ok()?;
    let table = OrcTable::from_image(&image).ok()?;
    eprintln!(
        "perfvisor {who}: guest kernel callchains unwound with {}'s ORC tables ({} entries, {:?} format, {:.2} s)",
        kernel.display(),
        table.len(),
        table.format(),
        start.elapsed().as_secs_f64()
    );
    Some(Arc::new(table))
}

/// A `--guest-orc` file saying that the kernel has no ORC tables (walk
/// frame pointers), so that the inner half of a sandboxed run does not
/// read the kernel image again, under TCG.
const NO_ORC: &[u8] = b"none\n";

/// The guest kernel's ORC tables (or [`NO_ORC`]) as a file in `dir` for
/// the inner half of a sandboxed run or record: adds the option that names
/// it to `extra`, and returns the job file to ship.
pub(crate) fn ship_guest_orc(
    orc: Option<&OrcTable>,
    dir: &Path,
    extra: &mut Vec<String>,
) -> Result<(PathBuf, &'static str), CliError> {
    const IN_L1: &str = "/perfvisor/guest-orc.bin";
    let file = dir.join("guest-orc.bin");
    let bytes = orc.map_or_else(|| NO_ORC.to_vec(), OrcTable::to_bytes);
    std::fs::write(&file, bytes).map_err(|source| CliError::Unreadable {
        path: file.clone(),
        source,
    })?;
    extra.extend(["--guest-orc".into(), IN_L1.into()]);
    Ok((file, IN_L1))
}

/// The command line with `nokaslr`, so that symbols and unwind tables read
/// from the kernel image (link-time addresses) match the samples: a
/// distribution kernel randomizes its base otherwise
/// (CONFIG_RANDOMIZE_BASE). A command line that already says `kaslr` or
/// `nokaslr` is the user's choice and stays.
pub(crate) fn without_kaslr(cmdline: String) -> String {
    if cmdline
        .split_ascii_whitespace()
        .any(|w| w == "kaslr" || w == "nokaslr")
    {
        cmdline
    } else {
        format!("{cmdline} nokaslr")
    }
}

/// A sandbox job running `perfvisor SUB --kvm host` with `args`' kernel,
/// initrd and includes shipped in (the archive of the includes written in
/// `dir`, which must outlive the job), `extra` options of SUB, and every
/// option the user gave (`given`) except [`RUN_HOST_ONLY`] and `host_only`
/// (SUB's own host-side options): a new option reaches the inner perfvisor
/// by itself.
pub(crate) fn sandbox_job(
    args: &RunArgs,
    sub: &str,
    given: &GivenArgs,
    host_only: &[&str],
    extra: &[String],
    dir: &Path,
) -> Result<sandbox::Job, CliError> {
    let BootSpec {
        kernel,
        initrd,
        includes,
        ..
    } = with_includes(args, resolve(args)?, dir)?;
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
    if includes.is_some() {
        argv.extend(["--include-archive".into(), "/perfvisor/include.cpio".into()]);
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
    if let Some(i) = &includes {
        job = job.file(i, "/perfvisor/include.cpio");
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaslr_is_turned_off_unless_the_user_chose() {
        assert_eq!(without_kaslr("quiet".into()), "quiet nokaslr");
        assert_eq!(without_kaslr("quiet kaslr".into()), "quiet kaslr");
        assert_eq!(without_kaslr("nokaslr quiet".into()), "nokaslr quiet");
        // A longer word is not the option.
        assert_eq!(without_kaslr("x.nokaslrx".into()), "x.nokaslrx nokaslr");
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
