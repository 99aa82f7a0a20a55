//! How a VM ends: the first reason reported wins, every vCPU and the event
//! loop are told to stop.
//!
//! Words kept apart in perfvisor: the VM's *end* ([`VmEnd`], its
//! [`VmOutcome`]) and perfvisor's process *exit status* for it
//! ([`VmOutcome::exit_code`]) are this module; a *KVM exit* (one return
//! from `KVM_RUN`) is `crate::vcpu::ExitKind` and `crate::dispatch`; a
//! trace *EXIT record* (pvpmu's report of a KVM exit to the guest) is
//! `pvpmu_abi::trace::Exit`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use devices::legacy::GuestEvent;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest wrote this status to the debug-exit port.
    Status(u8),
    /// The guest rebooted (i8042 reset, KVM reset event, or a triple fault
    /// right after the kernel announced a restart).
    Reboot,
    /// The guest powered off.
    PowerOff,
    /// The guest halted the machine.
    Halt,
    /// The guest kernel panicked; the first panic line.
    Panic(String),
    /// A triple fault nobody announced.
    TripleFault { vcpu: u8, rip: u64 },
    /// `--timeout` expired.
    Timeout(Duration),
    /// The user typed the console escape (Ctrl-A x).
    UserQuit,
    /// SIGINT or SIGTERM with [`crate::vm::Vm::stop_on_signals`]: the
    /// guest stopped, outputs flushed, exit status 128 + the signal.
    Interrupted,
    /// A VMM error (unhandled exit, KVM failure).
    Error(String),
}

impl VmOutcome {
    /// perfvisor's exit status for this outcome (see README "Exit status").
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::Status(s) => i32::from(*s),
            VmOutcome::Reboot | VmOutcome::PowerOff | VmOutcome::Halt => 0,
            VmOutcome::Panic(_) => GUEST_PANIC_EXIT,
            VmOutcome::TripleFault { .. } => GUEST_FAULT_EXIT,
            VmOutcome::Timeout(_) => TIMEOUT_EXIT,
            VmOutcome::UserQuit => 130,
            // As if the signal had ended the process: 130 or 143.
            VmOutcome::Interrupted => interrupt_exit_status(),
            VmOutcome::Error(_) => 1,
        }
    }

    /// A one-line description for the user, or None for a clean, quiet end.
    pub fn describe(&self) -> Option<String> {
        match self {
            VmOutcome::Status(_) | VmOutcome::Reboot | VmOutcome::PowerOff | VmOutcome::Halt => {
                None
            }
            VmOutcome::Panic(line) => Some(format!("guest kernel panic: {line}")),
            VmOutcome::TripleFault { vcpu, rip } => Some(format!(
                "guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at RIP 0x{rip:x}"
            )),
            VmOutcome::Timeout(d) => Some(format!(
                "guest still running after --timeout {}s; stopped it",
                d.as_secs()
            )),
            VmOutcome::UserQuit => Some("stopped by the console escape (Ctrl-A x)".into()),
            VmOutcome::Interrupted => Some("interrupted; stopped the guest".into()),
            VmOutcome::Error(e) => Some(e.clone()),
        }
    }
}

/// Exit status when the guest kernel panicked.
pub const GUEST_PANIC_EXIT: i32 = 125;
/// Exit status for an unannounced triple fault.
pub const GUEST_FAULT_EXIT: i32 = 126;
/// Exit status when `--timeout` expired (as timeout(1)).
pub const TIMEOUT_EXIT: i32 = 124;

/// How long a guest kernel that announced a panic or a halt gets to print
/// the rest of its report before perfvisor stops it (a kernel booted
/// without `panic=` never reboots by itself, and a halted one never says
/// more).
pub const END_GRACE: Duration = Duration::from_secs(3);

/// Shared end-of-VM state.
///
/// Once the guest kernel's `pv_events` notifiers are attached (the
/// guest-event port, `devices::legacy::GuestEvents`), only device events
/// decide how the VM ends: console text, which guest user space can print
/// too, only names a panic that a device event reported, and only hastens
/// an end the kernel already announced. A guest without that module (a
/// kernel or initramfs perfvisor did not build) falls back to reading the
/// kernel's console lines, and a panic decided that way says so.
pub struct VmEnd {
    stopping: AtomicBool,
    outcome: Mutex<Option<VmOutcome>>,
    /// Device mode: the guest's `pv_events` notifiers are attached.
    attached: AtomicBool,
    /// Device mode: the panic notifier ran.
    panicked: AtomicBool,
    /// Device mode: the reboot notifier announced a halt.
    halting: AtomicBool,
    /// The console's panic line: in device mode the last one seen (it only
    /// names the panic), else the first (it decides).
    panic_line: Mutex<Option<String>>,
    restart_announced: AtomicBool,
    evt: EventFd,
}

impl VmEnd {
    /// Fresh state; `evt` becomes readable once an outcome is set.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            attached: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            halting: AtomicBool::new(false),
            panic_line: Mutex::new(None),
            restart_announced: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd the event loop watches.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// True once the VM is ending.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// True once the guest's `pv_events` notifiers decide the outcome.
    pub fn device_events(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// The panic the guest reported, if it did: the console's panic line,
    /// or a stand-in when none arrived.
    fn reported_panic(&self) -> Option<String> {
        let line = self
            .panic_line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.device_events() {
            self.panicked.load(Ordering::Acquire).then(|| {
                line.unwrap_or_else(|| {
                    "the guest's panic notifier reported a panic (no panic line reached the console)"
                        .into()
                })
            })
        } else {
            line.map(|l| format!("{l} (read from the console: the guest has no pv_events module)"))
        }
    }

    /// Report how the VM ends. The first report wins. A reboot, halt,
    /// power-off or triple fault after a reported kernel panic is the panic.
    pub fn request(&self, outcome: VmOutcome) {
        let outcome = match outcome {
            VmOutcome::Reboot
            | VmOutcome::TripleFault { .. }
            | VmOutcome::Halt
            | VmOutcome::PowerOff => match self.reported_panic() {
                Some(line) => VmOutcome::Panic(line),
                None => match outcome {
                    VmOutcome::TripleFault { .. }
                        if self.restart_announced.load(Ordering::Acquire) =>
                    {
                        VmOutcome::Reboot
                    }
                    o => o,
                },
            },
            o => o,
        };
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        drop(slot);
        self.stopping.store(true, Ordering::Release);
        let _ = self.evt.write(1);
    }

    /// Report `outcome` after `delay`, from a detached timer thread (a
    /// no-op if the VM ended before).
    pub fn request_after(self: &Arc<Self>, delay: Duration, outcome: VmOutcome) {
        let end = self.clone();
        let spawned = std::thread::Builder::new()
            .name("end-grace".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || {
                std::thread::sleep(delay);
                end.request(outcome);
            });
        if let Err(e) = spawned {
            // Without the timer the guest's own reset or --timeout ends it.
            log::warn!("could not start the end-grace timer: {e}");
        }
    }

    /// The outcome, once set.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One event from the guest-event port. Ends the VM for a power-off,
    /// and after [`END_GRACE`] for a panic or a halt (the kernel's own
    /// reset or end-of-report line may end it sooner).
    pub fn guest_event(self: &Arc<Self>, event: GuestEvent) {
        match event {
            GuestEvent::Attached => {
                if !self.attached.swap(true, Ordering::AcqRel) {
                    log::debug!(
                        "guest-event port: pv_events attached; console text decides nothing now"
                    );
                }
            }
            GuestEvent::Panic if self.device_events() => {
                if !self.panicked.swap(true, Ordering::AcqRel) {
                    self.request_after(END_GRACE, VmOutcome::Halt);
                }
            }
            GuestEvent::Halt if self.device_events() => {
                if !self.halting.swap(true, Ordering::AcqRel) {
                    self.request_after(END_GRACE, VmOutcome::Halt);
                }
            }
            GuestEvent::PowerOff if self.device_events() => self.request(VmOutcome::PowerOff),
            GuestEvent::Restart if self.device_events() => {
                self.restart_announced.store(true, Ordering::Release)
            }
            // An event before ATTACHED is not from the module's notifiers.
            other => log::debug!("guest-event port: {other:?} before ATTACHED, ignored"),
        }
    }

    /// Look at one line of guest console output. In device mode it only
    /// names a reported panic or hastens an announced end; without
    /// `pv_events` the kernel's messages decide the outcome. Returns true
    /// when the caller should end the VM after [`END_GRACE`] (a panicking
    /// kernel without `panic=` never reboots by itself).
    pub fn observe_console_line(&self, line: &str) -> bool {
        let device = self.device_events();
        // The end-of-report line holds the panic text too: look at it first.
        if line.contains("---[ end Kernel panic") {
            if self.reported_panic().is_some() {
                self.request(VmOutcome::Halt); // mapped to the reported panic
            }
        } else if let Some(pos) = line.find("Kernel panic - not syncing") {
            let text = line[pos..].trim_end();
            // Bounded: one line of the console's line tap.
            let mut p = self.panic_line.lock().unwrap_or_else(|e| e.into_inner());
            if device {
                *p = Some(text.to_string());
            } else if p.is_none() {
                *p = Some(text.to_string());
                return true;
            }
        } else if line.contains("reboot: System halted") {
            if !device || self.halting.load(Ordering::Acquire) {
                self.request(VmOutcome::Halt);
            }
        } else if device {
            // Power-off and restart come from the device.
        } else if line.contains("reboot: Power down") {
            self.request(VmOutcome::PowerOff);
        } else if line.contains("reboot: Restarting system") {
            self.restart_announced.store(true, Ordering::Release);
        }
        false
    }
}

/// The eventfd a signal handler writes to (-1: none).
static INTERRUPT_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// SIGINT and SIGTERM received since [`interrupt_counter`] was first called.
static INTERRUPTS: OnceLock<Arc<AtomicU32>> = OnceLock::new();

/// The last of SIGINT and SIGTERM received (0: none).
static LAST_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The shell's exit status for a process ended by the last SIGINT or
/// SIGTERM received: 128 + its number (130, 143); 130 when none came.
pub fn interrupt_exit_status() -> i32 {
    128 + match LAST_SIGNAL.load(Ordering::Acquire) {
        0 => libc::SIGINT,
        s => s,
    }
}

extern "C" fn on_interrupt(sig: libc::c_int) {
    // An atomic store, OnceLock::get (an atomic load) and a lock-free
    // fetch_add: all async-signal-safe.
    LAST_SIGNAL.store(sig, Ordering::Release);
    if let Some(n) = INTERRUPTS.get() {
        n.fetch_add(1, Ordering::AcqRel);
    }
    let fd = INTERRUPT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; it writes 8 bytes from a
        // local into an eventfd this process owns for its whole life.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Handle SIGINT and SIGTERM with [`on_interrupt`] instead of dying.
fn route_interrupt_signals() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches atomics and calls
        // write(2); the sigaction struct is zero-initialised and filled
        // before the call.
        let r = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_interrupt as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Route SIGINT and SIGTERM to `evt` (kept open for the process's life).
pub(crate) fn install_interrupt_handler(evt: EventFd) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    INTERRUPT_FD.store(evt.into_raw_fd(), Ordering::Relaxed);
    route_interrupt_signals()
}

/// Count SIGINT and SIGTERM, instead of dying of them, in the returned
/// counter (the same one on every call), e.g. to stop work that runs
/// elsewhere (`sandbox::Job::stoppable`).
pub fn interrupt_counter() -> std::io::Result<Arc<AtomicU32>> {
    let n = INTERRUPTS
        .get_or_init(|| Arc::new(AtomicU32::new(0)))
        .clone();
    route_interrupt_signals()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_wins() {
        let s = VmEnd::new().unwrap();
        assert!(!s.stopping());
        s.request(VmOutcome::Status(3));
        s.request(VmOutcome::Reboot);
        assert!(s.stopping());
        assert_eq!(s.outcome(), Some(VmOutcome::Status(3)));
        assert_eq!(s.event().read().unwrap(), 2);
    }

    #[test]
    fn without_pv_events_the_console_decides() {
        let s = VmEnd::new().unwrap();
        assert!(
            s.observe_console_line("[    1.0] Kernel panic - not syncing: Attempted to kill init!")
        );
        assert!(!s.observe_console_line("[    1.0] Kernel panic - not syncing: again"));
        s.request(VmOutcome::Reboot);
        assert_eq!(
            s.outcome(),
            Some(VmOutcome::Panic(
                "Kernel panic - not syncing: Attempted to kill init! (read from the console: \
                 the guest has no pv_events module)"
                    .into()
            ))
        );
        assert_eq!(s.outcome().unwrap().exit_code(), GUEST_PANIC_EXIT);

        let s = VmEnd::new().unwrap();
        s.observe_console_line("[    2.0] reboot: Restarting system");
        s.request(VmOutcome::TripleFault { vcpu: 0, rip: 1 });
        assert_eq!(s.outcome(), Some(VmOutcome::Reboot));
        let s = VmEnd::new().unwrap();
        s.request(VmOutcome::TripleFault { vcpu: 1, rip: 0x10 });
        assert_eq!(s.outcome().unwrap().exit_code(), GUEST_FAULT_EXIT);
        let s = VmEnd::new().unwrap();
        s.observe_console_line("reboot: Power down");
        assert_eq!(s.outcome(), Some(VmOutcome::PowerOff));
        assert_eq!(s.outcome().unwrap().exit_code(), 0);
    }

    fn attached() -> Arc<VmEnd> {
        let s = Arc::new(VmEnd::new().unwrap());
        s.guest_event(GuestEvent::Attached);
        assert!(s.device_events());
        s
    }

    #[test]
    fn with_pv_events_console_text_decides_nothing() {
        let s = attached();
        for line in [
            "Kernel panic - not syncing: forged by user space",
            "---[ end Kernel panic - not syncing: forged ]---",
            "reboot: Power down",
            "reboot: System halted",
            "reboot: Restarting system",
        ] {
            assert!(!s.observe_console_line(line), "{line}");
        }
        assert!(!s.stopping());
        // Not a panic, not an announced restart: what really happened.
        s.request(VmOutcome::TripleFault { vcpu: 0, rip: 1 });
        assert_eq!(s.outcome().unwrap().exit_code(), GUEST_FAULT_EXIT);
        // Events written before ATTACHED are not the notifiers'.
        let s = Arc::new(VmEnd::new().unwrap());
        s.guest_event(GuestEvent::PowerOff);
        assert!(!s.stopping());
    }

    #[test]
    fn with_pv_events_the_devices_decide() {
        let s = attached();
        s.guest_event(GuestEvent::PowerOff);
        assert_eq!(s.outcome(), Some(VmOutcome::PowerOff));

        // A panic: named by the console's last panic line, ended by the
        // kernel's reset (panic=-1) as a panic.
        let s = attached();
        s.observe_console_line("Kernel panic - not syncing: forged earlier");
        s.observe_console_line("[    3.0] Kernel panic - not syncing: sysrq triggered crash");
        s.guest_event(GuestEvent::Panic);
        assert!(!s.stopping(), "the report may still be printing");
        s.request(VmOutcome::Reboot);
        assert_eq!(
            s.outcome(),
            Some(VmOutcome::Panic(
                "Kernel panic - not syncing: sysrq triggered crash".into()
            ))
        );

        // A panic with no line, ended by the end-of-report line.
        let s = attached();
        s.guest_event(GuestEvent::Panic);
        s.observe_console_line("---[ end Kernel panic - not syncing: x ]---");
        assert_eq!(s.outcome().unwrap().exit_code(), GUEST_PANIC_EXIT);

        // A restart announced by the reboot notifier makes the reset's
        // triple fault a reboot.
        let s = attached();
        s.guest_event(GuestEvent::Restart);
        s.request(VmOutcome::TripleFault {
            vcpu: 0,
            rip: 0xfff0,
        });
        assert_eq!(s.outcome(), Some(VmOutcome::Reboot));

        // A halt ends after the grace, or at the kernel's last line.
        let s = attached();
        s.guest_event(GuestEvent::Halt);
        assert!(!s.stopping());
        s.observe_console_line("reboot: System halted");
        assert_eq!(s.outcome(), Some(VmOutcome::Halt));
    }

    #[test]
    fn an_announced_panic_ends_after_the_grace() {
        let s = attached();
        s.guest_event(GuestEvent::Panic);
        let t = std::time::Instant::now();
        while !s.stopping() && t.elapsed() < END_GRACE * 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(t.elapsed() >= END_GRACE / 2, "not before the grace");
        assert_eq!(s.outcome().unwrap().exit_code(), GUEST_PANIC_EXIT);
    }
}
