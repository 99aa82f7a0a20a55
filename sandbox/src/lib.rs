//! The L1 sandbox: a QEMU TCG virtual machine (`-cpu EPYC,+svm`) running Debian's
//! 6.1 kernel with `kvm-amd` loaded, which gives a capable, nested `/dev/kvm` on
//! machines whose own `/dev/kvm` cannot run Linux user space (see
//! docs/sandbox.md and shared/platform-notes.md).
//!
//! ```no_run
//! use sandbox::{Job, Sandbox};
//! let sb = Sandbox::locate()?;
//! let job = Job::shell("echo hello; exit 3");
//! let out = sb.run(&job, &mut |line| println!("{line}"))?;
//! assert_eq!(out.status, 3);
//! # Ok::<(), sandbox::Error>(())
//! ```
//!
//! [`Sandbox::run`] packs busybox, the kvm modules, the job's files and an `/init`
//! into an uncompressed cpio in a temporary directory, boots QEMU on it, streams the
//! console, and returns the job's exit status parsed from a marker line.

mod collect;
mod console;
mod job_console;

pub use collect::{TempDir, MAX_COLLECT_BYTES, MAX_COLLECT_ENTRIES};

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use collect::{random_hex, unpack_collected};
use console::{read_lines, KeptText};
use initramfs::Packer;
use job_console::{JobConsole, Markers, Phase};

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox artefacts missing in {dir}: {what}; run scripts/fetch-sandbox.sh (on a fresh machine first scripts/setup.sh as root), or point PERFVISOR_SANDBOX_DIR at a directory it produced")]
    ArtefactsMissing { dir: PathBuf, what: String },
    #[error(transparent)]
    NoArtefacts(#[from] artefacts::Error),
    #[error("{qemu} not found: run scripts/setup.sh as root (or apt-get install --no-install-recommends qemu-system-x86), or set PERFVISOR_QEMU to a qemu-system-x86_64 binary")]
    QemuMissing { qemu: String },
    #[error("invalid sandbox job: {0}")]
    InvalidJob(String),
    #[error("refusing to collect the L1's files into {path}: {source}; it must be a new path (perfvisor creates it itself, so an existing file, directory or symlink there is refused)")]
    CollectDir { path: PathBuf, source: io::Error },
    #[error("refused the files the L1 sandbox sent back: {0}")]
    CollectRefused(String),
    #[error("the L1 sandbox wrote more than {limit} bytes to its collect port (QEMU killed); collect less (a shorter recording or a lower --freq)")]
    CollectTooLarge { limit: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("building the L1 initramfs: {0}")]
    Initramfs(#[from] initramfs::Error),
    #[error("no /dev/kvm inside the L1 sandbox after loading the kvm modules (QEMU must run with -cpu EPYC,+svm); console tail:\n{tail}")]
    NoKvm { tail: String },
    #[error("stopped: the L1 sandbox was killed on request before the job ended")]
    Stopped,
    #[error("sandbox job timed out after {timeout:?} (QEMU killed); console tail:\n{tail}")]
    Timeout { timeout: Duration, tail: String },
    #[error("the L1 sandbox hung: its console was silent for {silence:?} after it had booted (QEMU killed). Nested kvm-amd under QEMU TCG does that now and then (docs/platform.md); run it again. Console tail:\n{tail}")]
    Silent { silence: Duration, tail: String },
    #[error("the L1 sandbox died: QEMU exited ({status}) before the job reported its exit status. Nested kvm-amd under QEMU TCG does that now and then (docs/platform.md); run it again. Console tail:\n{tail}{stderr}")]
    NoExitMarker {
        status: String,
        tail: String,
        stderr: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The result of a job that ran to completion (whatever its exit status).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job's exit status (0-255, as the L1 shell saw it).
    pub status: i32,
    /// The job's console output (stdout and stderr interleaved), one line per `\n`.
    pub output: String,
    /// From starting QEMU to the job starting (L1 boot + module loading).
    pub l1_boot: Duration,
    /// From starting QEMU to QEMU exiting.
    pub total: Duration,
    /// The whole console, L1 kernel messages included.
    pub console: String,
}

/// What to run in the sandbox, and what to copy in first.
#[derive(Debug, Clone)]
pub struct Job {
    argv: Vec<String>,
    files: Vec<(PathBuf, String)>,
    binaries: Vec<(PathBuf, String)>,
    dirs: Vec<(PathBuf, String)>,
    env: Vec<(String, String)>,
    workdir: String,
    /// (L1 directory, host directory): copied back after the job.
    collect: Option<(String, PathBuf)>,
    /// Stop requests from the caller (see [`Job::stoppable`]).
    stop: Option<Arc<AtomicU32>>,
}

impl Job {
    /// Runs `argv` (argv[0] looked up in PATH: /usr/local/bin, /usr/bin, /bin, ...).
    pub fn new<I, S>(argv: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Job {
            argv: argv.into_iter().map(Into::into).collect(),
            files: Vec::new(),
            binaries: Vec::new(),
            dirs: Vec::new(),
            env: Vec::new(),
            workdir: "/".into(),
            collect: None,
            stop: None,
        }
    }

    /// Runs `sh -c script` (busybox sh).
    pub fn shell(script: &str) -> Job {
        Job::new(["sh", "-c", script])
    }

    /// Copies host file `host` (symlinks followed, mode kept) to `guest` (absolute).
    pub fn file(mut self, host: impl Into<PathBuf>, guest: &str) -> Job {
        self.files.push((host.into(), guest.into()));
        self
    }

    /// Copies each of `names` from the host directory `host_dir` to the L1
    /// directory `guest_dir` under the same name, e.g. a guest image's
    /// `vmlinux` and `initramfs.cpio`.
    pub fn files_in(mut self, host_dir: &Path, names: &[&str], guest_dir: &str) -> Job {
        for name in names {
            let guest = format!("{}/{name}", guest_dir.trim_end_matches('/'));
            self.files.push((host_dir.join(name), guest));
        }
        self
    }

    /// Copies executable `host` to `guest` and its shared libraries (as the dynamic
    /// loader finds them, loader included) to their host paths.
    pub fn binary(mut self, host: impl Into<PathBuf>, guest: &str) -> Job {
        self.binaries.push((host.into(), guest.into()));
        self
    }

    /// Copies directory `host` recursively to `guest` (symlinks kept as symlinks),
    /// e.g. `/usr/share/qemu`.
    pub fn dir(mut self, host: impl Into<PathBuf>, guest: &str) -> Job {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    /// Exports `key=value` to the job.
    pub fn env(mut self, key: &str, value: &str) -> Job {
        self.env.push((key.into(), value.into()));
        self
    }

    /// After the job, copy the L1 directory `guest` (created empty before the
    /// job) back to the host directory `host`. The files travel as a tar
    /// stream over a second serial port (ttyS1) into a host file, so keep
    /// them to a few MiB.
    pub fn collect(mut self, guest: &str, host: impl Into<PathBuf>) -> Job {
        self.collect = Some((guest.into(), host.into()));
        self
    }

    /// Let the caller stop the job: when `stop` becomes 1 (e.g. on the
    /// caller's first Ctrl-C) the job gets SIGTERM inside the L1 and the run
    /// goes on until it has exited, so it can write its results (collected
    /// as usual); at 2 or more QEMU is killed at once. QEMU runs in its own
    /// process group then, so a Ctrl-C at the terminal reaches only the
    /// caller, which must handle SIGINT and bump `stop`.
    pub fn stoppable(mut self, stop: Arc<AtomicU32>) -> Job {
        self.stop = Some(stop);
        self
    }

    /// The job's working directory (created if missing; default `/`).
    pub fn workdir(mut self, dir: &str) -> Job {
        self.workdir = dir.into();
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidJob(m));
        if self.argv.is_empty() {
            return bad("empty argv".into());
        }
        for (_, g) in self.files.iter().chain(&self.binaries).chain(&self.dirs) {
            if !g.starts_with('/') || g.split('/').any(|c| c == "..") {
                return bad(format!("guest path {g:?} must be absolute, without '..'"));
            }
            let reserved = g.trim_end_matches('/') == "/init"
                || g.trim_end_matches('/') == JOB_DIR
                || g.starts_with(&format!("{JOB_DIR}/"));
            if reserved {
                return bad(format!(
                    "guest path {g:?} is the sandbox's own (/init, {JOB_DIR}/); put the file elsewhere"
                ));
            }
        }
        if !self.workdir.starts_with('/') {
            return bad(format!("workdir {:?} must be absolute", self.workdir));
        }
        for (k, _) in &self.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return bad(format!("environment variable name {k:?}"));
            }
            if k.starts_with("SANDBOX_") {
                return bad(format!(
                    "environment variable {k:?}: SANDBOX_* names are the sandbox's own"
                ));
            }
        }
        Ok(())
    }
}

/// A located sandbox: artefacts directory, QEMU binary and VM settings.
#[derive(Debug, Clone)]
pub struct Sandbox {
    dir: PathBuf,
    kernel: PathBuf,
    qemu: PathBuf,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    silence_limit: Option<Duration>,
    kernel_args: String,
}

/// Kernel command line of the L1 (console and speed options; see docs/sandbox.md).
/// `loglevel=3` keeps the L1 kernel's own error messages (such as nested
/// KVM's "Unhandled WRMSR" for the guest's PMU probe) out of the job's
/// console; emergencies still print.
/// `softlockup_panic=1 watchdog_thresh=30` turns an L1 CPU stuck in the
/// kernel for 60 s into an L1 panic (QEMU then exits, [`Error::NoExitMarker`])
/// instead of a job that hangs until its timeout: nested kvm-amd under TCG
/// has left perfvisor's thread spinning in the L1 kernel for minutes after
/// the guest had ended (docs/platform.md).
const BASE_CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off nokaslr \
     tsc=reliable no_timer_check i8042.noaux i8042.nokbd i8042.nopnp audit=0 \
     random.trust_cpu=on cryptomgr.notests softlockup_panic=1 watchdog_thresh=30";

/// How long a stopped job may take to exit and hand back its results.
const STOP_GRACE: Duration = Duration::from_secs(120);

/// How often a stoppable job's run checks for stop requests.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Console lines queued between the reader threads and the run loop.
const CHANNEL_LINES: usize = 256;
/// Most console text (and job output) an [`Outcome`] keeps: the last this
/// many bytes, whole lines.
pub const MAX_KEPT: usize = 16 << 20;
/// Most QEMU stderr text kept for an error.
const MAX_KEPT_STDERR: usize = 1 << 20;
/// How often the collect port's size is checked while the job runs.
const COLLECT_CHECK: Duration = Duration::from_secs(1);
/// How long QEMU may take to power off after the job's exit marker before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Sandbox {
    /// Finds the artefacts by the artefact search order (the
    /// `perfvisor-artefacts` crate: `$PERFVISOR_SANDBOX_DIR`, the installed
    /// data directory, the build tree) and QEMU (`$PERFVISOR_QEMU`, else
    /// `qemu-system-x86_64` in PATH).
    pub fn locate() -> Result<Sandbox, Error> {
        let dir = artefacts::find(artefacts::Kind::Sandbox)?.dir;
        let dir = dir.canonicalize().unwrap_or(dir);
        let qemu = match std::env::var_os("PERFVISOR_QEMU") {
            Some(q) => Some(PathBuf::from(q)).filter(|p| p.is_file()),
            None => find_in_path("qemu-system-x86_64"),
        }
        .ok_or_else(|| Error::QemuMissing {
            qemu: std::env::var("PERFVISOR_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
        })?;
        Sandbox::with_paths(dir, qemu)
    }

    /// A sandbox over an explicit artefacts directory and QEMU binary.
    pub fn with_paths(dir: PathBuf, qemu: PathBuf) -> Result<Sandbox, Error> {
        let missing = |what: &str| Error::ArtefactsMissing {
            dir: dir.clone(),
            what: what.into(),
        };
        if !dir.is_dir() {
            return Err(missing("no such directory"));
        }
        // The ELF vmlinux boots through its PVH note with no in-guest decompression
        // (slow under TCG; docs/sandbox.md); the bzImage is the fallback.
        let kernel = ["vmlinux", "vmlinuz"]
            .iter()
            .map(|k| dir.join(k))
            .find(|p| p.is_file())
            .ok_or_else(|| missing("no vmlinux or vmlinuz"))?;
        for f in ["busybox", "modules/order"] {
            if !dir.join(f).is_file() {
                return Err(missing(&format!("no {f}")));
            }
        }
        for m in read_order(&dir)? {
            if !dir.join("modules").join(&m).is_file() {
                return Err(missing(&format!("modules/order lists {m}, not present")));
            }
        }
        if !qemu.is_file() {
            return Err(Error::QemuMissing {
                qemu: qemu.display().to_string(),
            });
        }
        Ok(Sandbox {
            dir,
            kernel,
            qemu,
            memory_mib: 2048,
            cpus: 2,
            timeout: Duration::from_secs(600),
            silence_limit: None,
            kernel_args: String::new(),
        })
    }

    /// L1 memory (default 2048 MiB). The initramfs (job files included) lives in it.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// L1 vCPUs (default 2).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// Wall-clock limit for one run, boot included (default 600 s); QEMU is killed then.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Kill the L1 when its console has been silent this long after boot
    /// ([`Error::Silent`]): for jobs that print at known intervals, so that
    /// a frozen L1 is caught long before [`Sandbox::timeout`]. Off by
    /// default.
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = Some(limit);
        self
    }

    /// Extra L1 kernel command-line arguments (e.g. `kvm-amd.npt=0`, `loglevel=7`).
    pub fn kernel_args(mut self, args: &str) -> Self {
        self.kernel_args = args.into();
        self
    }

    /// The artefacts directory in use.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The QEMU binary in use.
    pub fn qemu(&self) -> &Path {
        &self.qemu
    }

    /// Boots the L1, runs `job` in it, and returns its exit status and output. Every
    /// console line of the job (and the sandbox's own `sandbox:` messages) is passed to
    /// `console` as it arrives; L1 kernel messages before the job goes to `log::debug`.
    pub fn run(&self, job: &Job, console: &mut dyn FnMut(&str)) -> Result<Outcome, Error> {
        job.validate()?;
        let tmp = TempDir::new()?;
        // One set of markers, from the OS random source: the L1's init
        // script prints them and the job console looks for them.
        let markers = Markers::new(&random_hex()?);
        let cpio_path = tmp.path().join("l1-initramfs.cpio");
        self.write_initramfs(job, &markers, &cpio_path)?;

        let mut cmd = Command::new(&self.qemu);
        let collect_file = tmp.path().join("collect.tar");
        cmd.args(self.qemu_args(
            &cpio_path,
            job.collect.as_ref().map(|_| collect_file.as_path()),
        ));
        if job.stop.is_some() {
            use std::os::unix::process::CommandExt;
            // Its own process group: the terminal's Ctrl-C is the caller's.
            cmd.process_group(0);
            cmd.stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        log::debug!("sandbox: {cmd:?}");
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", self.qemu.display())))?;
        let mut child = KillOnDrop(child);
        let mut stdin = child.0.stdin.take();
        let mut stop_sent = false;
        // Bounded: a console that outruns this loop blocks QEMU's writes
        // instead of growing a queue.
        let (tx, rx) = mpsc::sync_channel::<Event>(CHANNEL_LINES);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        let out_thread =
            thread::spawn(move || read_lines(stdout, |l| tx.send(Event::Out(l)).is_ok()));
        let err_thread =
            thread::spawn(move || read_lines(stderr, |l| tx2.send(Event::Err(l)).is_ok()));

        let mut deadline = start + self.timeout;
        let stop_line = markers.stop.clone();
        let mut job_console = JobConsole::new(markers, MAX_KEPT, 40);
        let mut stderr_text = KeptText::new(MAX_KEPT_STDERR);
        let mut next_collect_check = start;
        let mut last_line = Instant::now();
        let cut = loop {
            let now = Instant::now();
            if now >= deadline {
                // After the exit marker this is only the shutdown grace period.
                break (!job_console.finished()).then_some(Cut::Timeout);
            }
            // Only once the L1 has booted and while the job runs.
            let silence_deadline = self
                .silence_limit
                .filter(|_| job_console.running())
                .map(|limit| last_line + limit);
            if silence_deadline.is_some_and(|d| now >= d) {
                break Some(Cut::Silent);
            }
            let requests = job.stop.as_ref().map_or(0, |s| s.load(Ordering::Acquire));
            if requests >= 2 && !job_console.finished() {
                console("sandbox: stopped again; killing the L1");
                break Some(Cut::Stopped);
            }
            if requests >= 1 && !stop_sent {
                stop_sent = true;
                console(
                    "sandbox: stopping the job (SIGTERM inside the L1); stop again to kill the L1",
                );
                // The L1's /init reads this line from its console.
                if let Some(w) = stdin.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(w, "{stop_line}");
                    let _ = w.flush();
                }
                deadline = deadline.min(Instant::now() + STOP_GRACE);
            }
            // The collect port is a host file QEMU writes for the L1: its
            // size is checked here, while the job runs.
            if job.collect.is_some() && now >= next_collect_check {
                next_collect_check = now + COLLECT_CHECK;
                if fs::metadata(&collect_file).is_ok_and(|m| m.len() > MAX_COLLECT_BYTES) {
                    break Some(Cut::CollectTooLarge);
                }
            }
            let wait = (deadline.min(silence_deadline.unwrap_or(deadline)) - now)
                .min(if job.stop.is_some() {
                    STOP_POLL
                } else {
                    Duration::MAX
                })
                .min(if job.collect.is_some() {
                    COLLECT_CHECK
                } else {
                    Duration::MAX
                });
            match rx.recv_timeout(wait) {
                Ok(Event::Out(raw)) => {
                    last_line = Instant::now();
                    if job_console.line(&raw, start.elapsed(), console) {
                        deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
                    }
                }
                Ok(Event::Err(line)) => {
                    // TCG lacks some EPYC features and says so at every
                    // start; that is expected, not worth a warning.
                    if line.contains("TCG doesn't support requested feature") {
                        log::debug!("qemu: {line}");
                    } else {
                        log::warn!("qemu: {line}");
                    }
                    stderr_text.push_line(&line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let exit = if cut.is_some() {
            child.kill();
            None
        } else {
            Some(
                child.wait(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_secs(1)),
                ),
            )
        };
        let total = start.elapsed();
        drop(child);
        let _ = out_thread.join();
        let _ = err_thread.join();
        let tail_text = || job_console.tail.text();
        match (cut, job_console.phase(), exit) {
            (Some(Cut::CollectTooLarge), _, _) => Err(Error::CollectTooLarge {
                limit: MAX_COLLECT_BYTES,
            }),
            (_, Phase::NoKvm, _) => Err(Error::NoKvm { tail: tail_text() }),
            (_, Phase::Ended(status), _) => {
                if let Some((_, host)) = &job.collect {
                    unpack_collected(&collect_file, host)?;
                }
                Ok(Outcome {
                    status,
                    l1_boot: job_console.l1_boot().unwrap_or(total),
                    total,
                    output: job_console.output.into_string(),
                    console: job_console.all.into_string(),
                })
            }
            (Some(Cut::Stopped), _, _) => Err(Error::Stopped),
            (Some(Cut::Silent), _, _) => Err(Error::Silent {
                silence: self.silence_limit.unwrap_or_default(),
                tail: tail_text(),
            }),
            (Some(Cut::Timeout), _, _) => Err(Error::Timeout {
                timeout: self.timeout,
                tail: tail_text(),
            }),
            (None, _, exit) => Err(Error::NoExitMarker {
                status: exit
                    .flatten()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "did not exit, killed".into()),
                tail: tail_text(),
                stderr: {
                    let text = stderr_text.into_string();
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!("\nQEMU stderr:\n{text}")
                    }
                },
            }),
        }
    }

    fn qemu_args(&self, cpio: &Path, collect: Option<&Path>) -> Vec<OsString> {
        let mut append = BASE_CMDLINE.to_string();
        if !self.kernel_args.is_empty() {
            append.push(' ');
            append.push_str(&self.kernel_args);
        }
        let mut a: Vec<OsString> = [
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "EPYC,+svm",
            "-machine",
            "pc",
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.memory_mib.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
            "-no-reboot",
            "-append",
            &append,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        if let Some(file) = collect {
            let mut dev = OsString::from("file,id=collect,path=");
            dev.push(file);
            a.extend([
                "-chardev".into(),
                dev,
                "-serial".into(),
                "chardev:collect".into(),
            ]);
        }
        a.push("-kernel".into());
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(cpio.into());
        a
    }

    /// Writes the L1 initramfs for `job` to `path` and returns the QEMU command that
    /// boots it (stdin/stdout not set up). For debugging and boot-time measurements;
    /// [`Sandbox::run`] does this in a temporary directory.
    pub fn prepare(&self, job: &Job, path: &Path) -> Result<Command, Error> {
        job.validate()?;
        self.write_initramfs(job, &Markers::new(&random_hex()?), path)?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.qemu_args(path, None));
        Ok(cmd)
    }

    fn write_initramfs(&self, job: &Job, markers: &Markers, path: &Path) -> Result<(), Error> {
        let f = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
        // The L1's RAM bounds what its initramfs may hold.
        let limit = u64::from(self.memory_mib) << 20;
        let mut packer = Packer::new(BufWriter::with_capacity(1 << 20, f), limit);
        let w = packer.writer();
        let ctx = |what: &str| io_err(format!("writing the L1 initramfs ({what})"));
        w.char_dev("dev/console", 0o600, 5, 1)
            .map_err(ctx("dev/console"))?;
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "root", "etc", "run",
        ] {
            w.dir(d, 0o755).map_err(ctx(d))?;
        }
        w.dir("tmp", 0o1777).map_err(ctx("tmp"))?;
        w.file_from("bin/busybox", Some(0o755), &self.dir.join("busybox"))
            .map_err(ctx("busybox"))?;
        let modules = read_order(&self.dir)?;
        for m in &modules {
            w.file_from(
                &format!("lib/modules/sandbox/{m}"),
                Some(0o644),
                &self.dir.join("modules").join(m),
            )
            .map_err(ctx(m))?;
        }
        for (host, guest) in &job.files {
            w.file_from(guest, None, host)
                .map_err(io_err(format!("packing {} as {guest}", host.display())))?;
        }
        // Binaries bring their libraries and loader; trees come as they are.
        for (host, guest) in &job.binaries {
            packer.add(host, guest, true)?;
        }
        for (host, guest) in &job.dirs {
            packer.add(host, guest, false)?;
        }
        let w = packer.writer();
        let files = job_files(job, &modules, markers);
        w.dir(&JOB_DIR[1..], 0o755).map_err(ctx(JOB_DIR))?;
        for (name, text) in [
            ("job.env", &files.env),
            ("job.sh", &files.sh),
            ("modules", &files.modules),
        ] {
            w.file_bytes(&format!("{}/{name}", &JOB_DIR[1..]), 0o644, text.as_bytes())
                .map_err(ctx(name))?;
        }
        w.file_bytes("init", 0o755, INIT_SH.as_bytes())
            .map_err(ctx("init"))?;
        packer.finish()?;
        Ok(())
    }
}

fn read_order(dir: &Path) -> Result<Vec<String>, Error> {
    let p = dir.join("modules/order");
    let text = fs::read_to_string(&p).map_err(|_| Error::ArtefactsMissing {
        dir: dir.to_path_buf(),
        what: "no readable modules/order".into(),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Single-quotes `s` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The L1's /init: a fixed script, the job's parameters beside it.
const INIT_SH: &str = include_str!("init.sh");

/// Where /init finds what [`JobFiles`] holds; job files may not go there.
const JOB_DIR: &str = "/sandbox";

/// The per-job files [`INIT_SH`] reads (all values sh-quoted).
struct JobFiles {
    /// `/sandbox/job.env`: the SANDBOX_* settings.
    env: String,
    /// `/sandbox/job.sh`: the job's exports and `set --` argv.
    sh: String,
    /// `/sandbox/modules`: module file names, one a line.
    modules: String,
}

fn job_files(job: &Job, modules: &[String], m: &Markers) -> JobFiles {
    let var = |k: &str, v: &str| format!("SANDBOX_{k}={}\n", shell_quote(v));
    let env = [
        var("START", &m.start),
        var("EXIT", &m.exit_prefix),
        var("NO_KVM", &m.no_kvm),
        var("STOP", &m.stop),
        var("STOPPABLE", if job.stop.is_some() { "1" } else { "" }),
        var("WORKDIR", &job.workdir),
        var(
            "COLLECT",
            job.collect.as_ref().map_or("", |(dir, _)| dir.as_str()),
        ),
    ]
    .concat();
    let exports: String = job
        .env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect();
    let argv: Vec<String> = job.argv.iter().map(|a| shell_quote(a)).collect();
    JobFiles {
        env,
        sh: format!("{exports}set -- {}\n", argv.join(" ")),
        modules: modules.iter().map(|m| format!("{m}\n")).collect(),
    }
}

/// Why the loop cut the L1 short (QEMU is killed), rather than wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `timeout` passed before the job ended.
    Timeout,
    /// No console line for the silence limit while the job ran.
    Silent,
    /// Stopped a second time.
    Stopped,
    /// The collect file outgrew its limit.
    CollectTooLarge,
}

enum Event {
    Out(String),
    Err(String),
}

/// Kills and reaps QEMU if `run` returns early.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits up to `limit` for QEMU to exit by itself, then kills it.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME; rm"), "'$HOME; rm'");
    }

    #[test]
    fn the_job_reaches_init_quoted() {
        let job = Job::new(["/bin/t", "a b", "c'd"])
            .env("RUST_LOG", "debug x")
            .workdir("/work dir");
        let f = job_files(
            &job,
            &["kvm.ko".into(), "kvm-amd.ko".into()],
            &Markers::new("n"),
        );
        assert_eq!(
            f.sh,
            "export RUST_LOG='debug x'\nset -- '/bin/t' 'a b' 'c'\\''d'\n"
        );
        assert!(f.env.contains("SANDBOX_WORKDIR='/work dir'\n"), "{}", f.env);
        assert!(f.env.contains("SANDBOX_EXIT='@@sandbox-n-exit='\n"));
        assert!(f.env.contains("SANDBOX_STOPPABLE=''\n"));
        assert!(f.env.contains("SANDBOX_COLLECT=''\n"));
        assert_eq!(f.modules, "kvm.ko\nkvm-amd.ko\n");
        // The fixed script uses every setting it is given, and nothing else.
        for line in f.env.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                INIT_SH.contains(&format!("${name}")) || INIT_SH.contains(&format!("${{{name}}}")),
                "{name} unused"
            );
        }
        let stoppable = job
            .stoppable(Arc::new(AtomicU32::new(0)))
            .collect("/out", "/h");
        let f = job_files(&stoppable, &[], &Markers::new("n"));
        assert!(f.env.contains("SANDBOX_STOPPABLE='1'\n"));
        assert!(f.env.contains("SANDBOX_COLLECT='/out'\n"));
    }

    /// The script itself is valid sh (busybox's is the one that runs it;
    /// the host's `sh -n` catches a syntax error before any L1 boots).
    #[test]
    fn init_script_parses() {
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/src/init.sh"))
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn files_in_keeps_the_names_under_the_guest_directory() {
        let job = Job::shell("true").files_in(Path::new("/img"), &["vmlinux", "a.cpio"], "/g/");
        assert_eq!(
            job.files,
            [
                (PathBuf::from("/img/vmlinux"), "/g/vmlinux".to_string()),
                (PathBuf::from("/img/a.cpio"), "/g/a.cpio".to_string()),
            ]
        );
    }

    #[test]
    fn jobs_are_validated() {
        assert!(Job::new(Vec::<String>::new()).validate().is_err());
        assert!(Job::shell("true")
            .file("/etc/hostname", "relative")
            .validate()
            .is_err());
        assert!(Job::shell("true")
            .file("/etc/hostname", "/a/../b")
            .validate()
            .is_err());
        assert!(Job::shell("true").env("1X", "v").validate().is_err());
        assert!(Job::shell("true").env("A-B", "v").validate().is_err());
        for reserved in ["/init", "/sandbox", "/sandbox/job.sh", "/sandbox/x/"] {
            let e = Job::shell("true").file("/x", reserved).validate();
            assert!(e.is_err(), "{reserved}");
        }
        assert!(Job::shell("true")
            .dir("/tmp", "/sandboxes/a")
            .validate()
            .is_ok());
        assert!(Job::shell("true")
            .env("SANDBOX_EXIT", "x")
            .validate()
            .is_err());
        assert!(Job::shell("true")
            .env("RUST_BACKTRACE", "1")
            .file("/x", "/y")
            .validate()
            .is_ok());
    }

    #[test]
    fn missing_artefacts_say_what_to_run() {
        let e = Sandbox::with_paths("/nonexistent/sandbox".into(), "/bin/true".into()).unwrap_err();
        assert!(e.to_string().contains("scripts/fetch-sandbox.sh"), "{e}");
    }
}

/// Entry points for the fuzz targets under `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    use crate::console::read_lines;
    use crate::job_console::{JobConsole, Markers, Phase};

    /// Reads `stream` as the L1's console arrives (bounded lines) through
    /// the job console for `nonce`, keeping `cap` bytes of text. Returns
    /// the job's status if its exit marker came, and the lengths of the
    /// whole kept console and of the kept job output.
    pub fn console_stream(stream: &[u8], nonce: &str, cap: usize) -> (Option<i32>, usize, usize) {
        let mut c = JobConsole::new(Markers::new(nonce), cap, 40);
        read_lines(stream, |l| {
            c.line(&l, Duration::ZERO, &mut |_| {});
            true
        });
        let status = match c.phase() {
            Phase::Ended(s) => Some(s),
            _ => None,
        };
        let tail = c.tail.text().len();
        assert!(tail <= 40 * (crate::console::MAX_LINE + 64) + 40);
        (
            status,
            c.all.into_string().len(),
            c.output.into_string().len(),
        )
    }
}
