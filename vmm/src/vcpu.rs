//! vCPU threads: the KVM_RUN loop, exit dispatch to the buses, and the kick.
//!
//! # The kick
//!
//! Another thread kicks a vCPU out of KVM_RUN with [`VcpuHandle::kick`]: it
//! bumps the vCPU's request counter and sends [`kick_signal`] to the vCPU
//! thread. The signal handler runs on the vCPU thread and sets
//! `kvm_run.immediate_exit`, so the kick is never lost:
//!
//! - in KVM_RUN: the pending signal makes KVM return `EINTR`;
//! - between two KVM_RUN calls: the next KVM_RUN sees `immediate_exit` and
//!   returns `EINTR` at once, before entering the guest.
//!
//! On that `EINTR` exit the vCPU thread clears `immediate_exit`, runs its
//! [`VcpuHook::on_kick`] (the sampler reads registers there), and publishes
//! the request count it served so [`VcpuHandle::kick_and_wait`] can see it.

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuFd};
use thiserror::Error;

use devices::bus::Bus;

use crate::dispatch::{dispatch, Dispatch};
use crate::end::{VmEnd, VmOutcome};
use crate::exit_counts::ExitCounts;

/// Errors a vCPU thread reports. Each names the vCPU and the guest RIP.
#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("vCPU {vcpu}: KVM_RUN failed: {source} (guest RIP 0x{rip:x})")]
    Run {
        vcpu: u8,
        rip: u64,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: unhandled KVM exit {exit} at guest RIP 0x{rip:x}")]
    UnhandledExit { vcpu: u8, exit: String, rip: u64 },
    #[error("vCPU {vcpu}: KVM could not emulate the instruction at guest RIP 0x{rip:x} (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}{bytes}); this host's KVM cannot run this guest code")]
    Emulation {
        vcpu: u8,
        rip: u64,
        suberror: u32,
        bytes: String,
    },
    #[error("vCPU {vcpu}: KVM_EXIT_FAIL_ENTRY, hardware reason 0x{reason:x} on host CPU {cpu} (guest RIP 0x{rip:x})")]
    FailEntry {
        vcpu: u8,
        reason: u64,
        cpu: u32,
        rip: u64,
    },
    #[error("cannot register the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start the thread for vCPU {vcpu}: {source}")]
    Spawn { vcpu: u8, source: std::io::Error },
    #[error("vCPU {vcpu} did not acknowledge a kick within {waited:?}")]
    KickTimeout { vcpu: u8, waited: Duration },
    #[error("vCPU {vcpu} has no running thread to kick")]
    NotRunning { vcpu: u8 },
}

/// The real-time signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    // The current thread's kvm_run mapping, set while its vCPU loop runs.
    // Const-initialised without a destructor, so reading it from a signal
    // handler is a plain TLS load.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` points at this thread's own kvm_run mapping, which
        // stays mapped while the vCPU loop that published it runs (it clears
        // the pointer before the VcpuFd is dropped). A byte store is
        // async-signal-safe; KVM reads it on the next KVM_RUN entry.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

static HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();

/// Install the kick signal handler once per process.
pub fn register_kick_handler() -> Result<(), VcpuError> {
    HANDLER
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
                .map_err(|e| e.errno())
        })
        .map_err(|e| VcpuError::Signal(vmm_sys_util::errno::Error::new(e)))
}

/// Information about one VM exit that reached the VMM, for [`VcpuHook::on_exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// What kind of exit.
    pub kind: ExitKind,
    /// Guest RIP at the exit, when the vCPU has sync regs (else 0).
    pub rip: u64,
    /// Port or guest-physical address for I/O and MMIO exits.
    pub addr: u64,
    /// Access width in bytes for I/O and MMIO exits.
    pub size: u32,
    /// Time the VMM spent handling it.
    pub handling: Duration,
}

/// Exit kinds a hook sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// The EINTR exit of a kick.
    Kick,
    Other,
}

/// Register access for a hook running on the vCPU thread.
pub struct VcpuContext<'a> {
    index: u8,
    fd: &'a mut VcpuFd,
    sync_regs: bool,
    returned: Instant,
}

impl VcpuContext<'_> {
    /// This vCPU's index (its APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Time since KVM_RUN returned with this exit: how long the guest has
    /// been stopped at its current RIP, as far as the VMM can tell.
    pub fn since_exit(&self) -> Duration {
        self.returned.elapsed()
    }

    /// General registers: from kvm_run's sync area when KVM offers it (no
    /// ioctl), else KVM_GET_REGS.
    pub fn regs(&mut self) -> Result<kvm_regs, kvm_ioctls::Error> {
        if self.sync_regs {
            Ok(self.fd.sync_regs().regs)
        } else {
            self.fd.get_regs()
        }
    }

    /// Special registers (CR3, segment state for the CPL).
    pub fn sregs(&mut self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        if self.sync_regs {
            Ok(self.fd.sync_regs().sregs)
        } else {
            self.fd.get_sregs()
        }
    }

    /// The vCPU fd, for anything else (KVM_GET_STATS_FD, MSRs).
    pub fn fd(&mut self) -> &mut VcpuFd {
        self.fd
    }
}

/// Code that runs on a vCPU thread. The sampler installs one.
pub trait VcpuHook: Send {
    /// Runs once for every served kick, on the kicked vCPU's thread.
    fn on_kick(&mut self, vcpu: &mut VcpuContext<'_>);
    /// Runs after every exit the VMM handled. Keep it cheap.
    fn on_exit(&mut self, _vcpu: &mut VcpuContext<'_>, _exit: &ExitInfo) {}
}

/// The other threads' view of a vCPU: kick it, wait for it.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    /// The vCPU thread while it runs; cleared by the thread itself just
    /// before it exits, under the lock, so a signal is never sent to a
    /// thread id that may have been reused.
    thread: Mutex<Option<libc::pthread_t>>,
    requested: AtomicU64,
    served: AtomicU64,
}

impl VcpuHandle {
    fn new(index: u8) -> Self {
        Self {
            index,
            thread: Mutex::new(None),
            requested: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }

    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// True while the vCPU thread runs its loop (kicks can reach it).
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// How many kicks the vCPU thread has served (hook runs).
    pub fn kicks_served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    /// Is a kick sent and not yet served? A kick sent now would coalesce
    /// with it: the hook runs once for both.
    pub fn kick_pending(&self) -> bool {
        self.requested.load(Ordering::Acquire) > self.served.load(Ordering::Acquire)
    }

    fn signal(&self) -> Result<(), VcpuError> {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        let tid = thread.ok_or(VcpuError::NotRunning { vcpu: self.index })?;
        // SAFETY: `tid` is the pthread id of this vCPU's thread, which is
        // alive: it clears `thread` under this lock before it exits, and we
        // hold the lock. The signal's handler only stores one byte.
        let r = unsafe { libc::pthread_kill(tid, kick_signal()) };
        if r != 0 {
            return Err(VcpuError::NotRunning { vcpu: self.index });
        }
        Ok(())
    }

    /// Kick the vCPU out of KVM_RUN; its hook runs once for this request
    /// (kicks that arrive before the vCPU serves them coalesce). Returns the
    /// request's sequence number.
    pub fn kick(&self) -> Result<u64, VcpuError> {
        let seq = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.signal()?;
        Ok(seq)
    }

    /// Kick and wait until the vCPU thread has served the kick, re-sending
    /// the signal every millisecond in case the thread was between checks.
    pub fn kick_and_wait(&self, timeout: Duration) -> Result<(), VcpuError> {
        let seq = self.kick()?;
        self.wait_served(seq, timeout)
    }

    /// Wait until kick `seq` was served.
    pub fn wait_served(&self, seq: u64, timeout: Duration) -> Result<(), VcpuError> {
        let start = Instant::now();
        let mut last_signal = start;
        while self.served.load(Ordering::Acquire) < seq {
            if start.elapsed() > timeout {
                return Err(VcpuError::KickTimeout {
                    vcpu: self.index,
                    waited: start.elapsed(),
                });
            }
            if last_signal.elapsed() >= Duration::from_millis(1) {
                self.signal()?;
                last_signal = Instant::now();
            }
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// A vCPU ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Bus,
    mmio: Bus,
    end: Arc<VmEnd>,
    handle: Arc<VcpuHandle>,
    hook: Option<Box<dyn VcpuHook>>,
    sync_regs: bool,
    /// Exits handled, by kind and port/address (logged at the end with -v),
    /// bounded against guest-chosen addresses.
    exit_counts: ExitCounts,
}

impl Vcpu {
    /// Wrap a configured vCPU fd. `sync_regs` enables kvm_run's register
    /// sync area (KVM_CAP_SYNC_REGS), so hooks read registers without ioctls.
    pub fn new(
        index: u8,
        mut fd: VcpuFd,
        pio: Bus,
        mmio: Bus,
        end: Arc<VmEnd>,
        sync_regs: bool,
    ) -> Self {
        if sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        Self {
            index,
            fd,
            pio,
            mmio,
            end,
            handle: Arc::new(VcpuHandle::new(index)),
            hook: None,
            sync_regs,
            exit_counts: ExitCounts::default(),
        }
    }

    /// The handle other threads use to kick this vCPU.
    pub fn handle(&self) -> Arc<VcpuHandle> {
        self.handle.clone()
    }

    /// Install the hook that runs on kicks and exits.
    pub fn set_hook(&mut self, hook: Box<dyn VcpuHook>) {
        self.hook = Some(hook);
    }

    /// Start the vCPU's thread.
    pub fn spawn(self) -> Result<std::thread::JoinHandle<()>, VcpuError> {
        register_kick_handler()?;
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(crate::THREAD_STACK)
            .spawn(move || self.thread_main())
            .map_err(|source| VcpuError::Spawn {
                vcpu: index,
                source,
            })
    }

    fn rip(&mut self) -> u64 {
        if self.sync_regs {
            self.fd.sync_regs().regs.rip
        } else {
            self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
        }
    }

    fn thread_main(mut self) {
        // SAFETY: pthread_self has no preconditions.
        let tid = unsafe { libc::pthread_self() };
        *self.handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(tid);
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        if let Err(e) = self.run_loop() {
            self.end.request(VmOutcome::Error(e.to_string()));
        }
        if log::log_enabled!(log::Level::Info) {
            log::info!(
                "vCPU {}: {} exits to the VMM; most frequent: {}",
                self.index,
                self.exit_counts.total(),
                self.exit_counts.summary(8)
            );
        }
        KVM_RUN.with(|r| r.set(null_mut()));
        *self.handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn serve_kick(&mut self, returned: Instant) {
        self.fd.set_kvm_immediate_exit(0);
        // Everything requested up to now is served by this one hook run.
        let seq = self.handle.requested.load(Ordering::Acquire);
        if let Some(hook) = self.hook.as_mut() {
            let mut ctx = VcpuContext {
                index: self.index,
                fd: &mut self.fd,
                sync_regs: self.sync_regs,
                returned,
            };
            hook.on_kick(&mut ctx);
        }
        self.handle.served.fetch_max(seq, Ordering::AcqRel);
    }

    fn run_loop(&mut self) -> Result<(), VcpuError> {
        while !self.end.stopping() {
            let run = self.fd.run();
            // Handling time counts from here: KVM_RUN has returned (the
            // bus access in `dispatch` is part of it).
            let returned = Instant::now();
            let d = dispatch(run, &self.pio, &self.mmio, self.index);
            let (kind, addr, size) = match d {
                Dispatch::Handled { kind, addr, size } => (kind, addr, size),
                Dispatch::Kick => {
                    self.serve_kick(returned);
                    (ExitKind::Kick, 0, 0)
                }
                Dispatch::End(outcome) => {
                    self.end.request(outcome);
                    return Ok(());
                }
                Dispatch::TripleFault => {
                    let rip = self.rip();
                    self.end.request(VmOutcome::TripleFault {
                        vcpu: self.index,
                        rip,
                    });
                    return Ok(());
                }
                Dispatch::InternalError => return Err(self.internal_error()),
                Dispatch::FailEntry { reason, cpu } => {
                    let rip = self.rip();
                    return Err(VcpuError::FailEntry {
                        vcpu: self.index,
                        reason,
                        cpu,
                        rip,
                    });
                }
                Dispatch::Unhandled(exit) => {
                    let rip = self.rip();
                    return Err(VcpuError::UnhandledExit {
                        vcpu: self.index,
                        exit,
                        rip,
                    });
                }
                Dispatch::RunFailed(source) => {
                    let rip = self.rip();
                    return Err(VcpuError::Run {
                        vcpu: self.index,
                        rip,
                        source,
                    });
                }
            };
            self.exit_counts.add(kind, addr);
            if let Some(hook) = self.hook.as_mut() {
                let rip = if self.sync_regs {
                    self.fd.sync_regs().regs.rip
                } else {
                    0
                };
                let info = ExitInfo {
                    kind,
                    rip,
                    addr,
                    size,
                    handling: returned.elapsed(),
                };
                let mut ctx = VcpuContext {
                    index: self.index,
                    fd: &mut self.fd,
                    sync_regs: self.sync_regs,
                    returned,
                };
                hook.on_exit(&mut ctx, &info);
            }
        }
        Ok(())
    }

    fn internal_error(&mut self) -> VcpuError {
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
        // the active member of the exit union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let rip = self.rip();
        let ndata = (internal.ndata as usize).min(internal.data.len());
        // For emulation failures with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
        // data[0] is the flags word and data[1..] holds insn_size then the bytes.
        let bytes = if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
            && ndata >= 2
            && internal.data[0] & 1 != 0
        {
            let raw: Vec<u8> = internal.data[1..ndata]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            let len = usize::from(raw[0]).min(15).min(raw.len() - 1);
            let hex: Vec<String> = raw[1..=len].iter().map(|b| format!("{b:02x}")).collect();
            format!(", instruction bytes {}", hex.join(" "))
        } else if ndata > 0 {
            format!(", data {:x?}", &internal.data[..ndata])
        } else {
            String::new()
        };
        VcpuError::Emulation {
            vcpu: self.index,
            rip,
            suberror: internal.suberror,
            bytes,
        }
    }
}
