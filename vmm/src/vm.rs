//! Building and running a VM: KVM setup, guest memory, devices, vCPUs, and
//! the event loop that waits for the VM to end.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

use devices::bus::{Bus, BusError};
use devices::legacy::{
    Cmos, DebugExit, GuestEvents, SerialDevice, CMOS_PORT, COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT,
    GUEST_EVENTS_PORT, I8042, I8042_PORT,
};

use crate::arch::{cpuid, layout, mptable, regs};
use crate::boot::{self, BootError, BootInfo, InitrdFile};
use crate::console::{self, ConsoleInput, Serial};
use crate::console_queue::DrainHandle;
use crate::end::{VmEnd, VmOutcome};
use crate::memory::GuestRam;
use crate::recorder::{self, RecordConfig, Recording};
use crate::sampler::{Backend, GuestClock, SampleHook, Sampler, Schedule};
use crate::vcpu::{Vcpu, VcpuError, VcpuHandle};
use devices::pvpmu::{self, Pvpmu, PvpmuConfig};

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Files appended to the initramfs (the guest command, for one).
    pub initrd_files: Vec<InitrdFile>,
    /// Newc archives appended after those files (`--include`'s); with no
    /// initrd they are the whole initramfs.
    pub initrd_archives: Vec<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Forward the user's terminal to the guest console (only when stdin is a tty).
    pub console_input: bool,
    /// The pvpmu device and its host sampler; None leaves the device out.
    pub pmu: Option<PmuOptions>,
}

/// How a VM run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Why the VM ended.
    pub outcome: VmOutcome,
    /// pvpmu's counters at the end, when the device was present.
    pub pvpmu: Option<devices::pvpmu::CounterSnapshot>,
    /// pvpmu samples the host refused because the VM had used up its
    /// budget (`PmuOptions::budget`).
    pub budget_skipped: u64,
    /// Bad writes the guest-event port refused (each also logged,
    /// rate-limited): a guest kernel or module writing what no notifier
    /// sends.
    pub guest_events_rejected: u64,
}

/// pvpmu settings.
#[derive(Debug, Clone)]
pub struct PmuOptions {
    /// Highest sampling rate, Hz.
    pub freq: u32,
    /// Sampling mechanism.
    pub backend: Backend,
    /// Events that ask for callchains get the host's frame-pointer walk
    /// (with the host timer, their samples are taken with kicks). Off, a
    /// host-timer callchain is the sampled IP alone.
    pub callchains: bool,
    /// Most samples per second across the whole VM, whatever the guest
    /// asks (see [`crate::budget::SampleBudget`]).
    pub budget: u32,
    /// The guest kernel's ORC tables: its kernel callchains are unwound
    /// with them (a kernel built without frame pointers); None walks frame
    /// pointers.
    pub orc: Option<Arc<crate::orc::OrcTable>>,
}

/// How long the end of a run waits for queued console output.
const CONSOLE_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The interrupt line pvpmu raises (an ISA line the MP table routes).
pub const PVPMU_IRQ: u32 = 11;

/// A running pvpmu: the device, the guest clock, the backend.
struct PmuState {
    dev: Pvpmu<GuestMemoryMmap>,
    clock: Arc<GuestClock>,
    backend: Backend,
    budget: Arc<crate::budget::SampleBudget>,
    orc: Option<Arc<crate::orc::OrcTable>>,
}

/// What takes samples in this VM. One value, so the sampler, the vCPU
/// hooks and the device on the bus cannot disagree.
enum Sampling {
    /// No pvpmu device and no recording.
    Off,
    /// The pvpmu device, sampling what the guest's perf asks for.
    Pvpmu(PmuState),
    /// `perfvisor record`: the host samples every vCPU at `interval`. A
    /// pvpmu device configured for the VM stays on the bus and its
    /// command line (a guest with the driver boots as usual) and keeps
    /// counting, but its sampler and vCPU hooks are the recorder's.
    Record {
        interval: Duration,
        backend: Backend,
        device: Option<PmuState>,
    },
}

impl Sampling {
    /// The pvpmu device's state, whoever samples.
    fn device(&self) -> Option<&PmuState> {
        match self {
            Sampling::Off => None,
            Sampling::Pvpmu(p) => Some(p),
            Sampling::Record { device, .. } => device.as_ref(),
        }
    }
}

/// How long stopping waits for vCPU threads to leave KVM_RUN.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Smallest guest RAM perfvisor accepts.
pub const MIN_MEM_SIZE: u64 = 16 << 20;
/// Largest guest RAM perfvisor accepts (1 TiB).
pub const MAX_MEM_SIZE: u64 = 1 << 40;

/// Errors building or running a VM.
#[derive(Debug, Error)]
pub enum VmError {
    #[error("no /dev/kvm on this host: load the kvm_intel or kvm_amd module, or use a machine with KVM (perfvisor run --kvm auto falls back to the QEMU L1 sandbox)")]
    NoKvm,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the 'kvm' group")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0}, which perfvisor needs")]
    MissingCap(&'static str),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(
        "guest memory size {0} bytes is out of range: use 16M to 1T (for example --memory 256M)"
    )]
    MemorySize(u64),
    #[error("--cpus {cpus} is out of range: this host's KVM supports 1 to {max}")]
    Cpus { cpus: u8, max: usize },
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Memory {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("device setup: {0}")]
    Bus(#[from] BusError),
    #[error("vCPU(s) {0:?} did not stop within 5 s of the VM ending")]
    StuckVcpus(Vec<u8>),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, VmError>;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Insert `params` into a kernel command line before the ` -- ` that starts
/// init's arguments, if any.
fn with_kernel_params(cmdline: &str, params: &str) -> String {
    match cmdline.find(" -- ") {
        Some(i) => format!("{} {params}{}", &cmdline[..i], &cmdline[i..]),
        None if cmdline.starts_with("-- ") => format!("{params} {cmdline}"),
        None => format!("{cmdline} {params}"),
    }
}

/// Open /dev/kvm (or `$PERFVISOR_KVM_DEVICE`, for tests) with errors a user
/// can act on.
pub fn open_kvm() -> Result<Kvm> {
    let opened = match std::env::var("PERFVISOR_KVM_DEVICE") {
        Ok(path) => std::ffi::CString::new(path)
            .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
            .and_then(|p| Kvm::new_with_path(&p)),
        Err(_) => Kvm::new(),
    };
    opened.map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}

const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (Cap::Pit2, "the in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (
        Cap::ImmediateExit,
        "immediate_exit (KVM_CAP_IMMEDIATE_EXIT), used to kick vCPUs",
    ),
];

/// Create a VM fd with memory, irqchip and PIT; shared by the boot path and
/// the probe.
pub(crate) fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd> {
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("set identity map address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::MissingCap("a host mapping"))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives
        // the VM fd in every caller (both are fields of the same owner,
        // dropped after the vCPU threads are joined).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("set user memory region"))?;
    }
    Ok(vm)
}

/// A VM ready to run.
pub struct Vm {
    config: VmConfig,
    // Field order matters for drop: vCPUs (in `vcpus`) go before the VM fd
    // and the memory they map.
    vcpus: Vec<Vcpu>,
    handles: Vec<Arc<VcpuHandle>>,
    end: Arc<VmEnd>,
    serial: Arc<Mutex<Serial>>,
    guest_events: Arc<Mutex<GuestEvents>>,
    serial_space: EventFd,
    /// Waits for the guest console's queued output (end of run).
    console_drain: DrainHandle,
    reset_evt: EventFd,
    interrupt: EventFd,
    sampling: Sampling,
    vm: Arc<VmFd>,
    ram: GuestRam,
}

impl Vm {
    /// Create the VM, load the guest and configure every vCPU. Console
    /// output goes to `console`.
    pub fn new(config: VmConfig, console: Box<dyn Write + Send>) -> Result<Vm> {
        let kvm = open_kvm()?;
        check_cpus(&kvm, config.cpus)?;
        let guest_ram = GuestRam::new(config.mem_size)?;
        let mem = guest_ram.memory().clone();
        let vm = Arc::new(create_vm(&kvm, &mem)?);
        let boot = load_guest(&config, &mem)?;
        write_cpu_tables(&mem, config.cpus)?;

        let end = Arc::new(VmEnd::new().map_err(io_err("eventfd"))?);
        let buses = Buses {
            pio: Bus::new(),
            mmio: Bus::new(),
        };
        let (serial, serial_space, console_drain) = add_serial(&vm, &buses.pio, console, &end)?;
        let reset_evt = add_i8042(&buses.pio)?;
        add_cmos(&buses.pio)?;
        add_debug_exit(&buses.pio, &end)?;
        let guest_events = add_guest_events(&buses.pio, &end)?;
        let pmu = config
            .pmu
            .as_ref()
            .map(|opts| add_pvpmu(&vm, &mem, &buses.mmio, config.cpus, opts))
            .transpose()?;

        let vcpus = create_vcpus(&kvm, &vm, &config, boot.entry, &buses, &end, pmu.as_ref())?;
        let handles = vcpus.iter().map(Vcpu::handle).collect();
        log_ready(&config, &boot);
        Ok(Vm {
            config,
            vcpus,
            handles,
            end,
            serial,
            guest_events,
            serial_space,
            console_drain,
            reset_evt,
            interrupt: EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?,
            sampling: pmu.map_or(Sampling::Off, Sampling::Pvpmu),
            vm,
            ram: guest_ram,
        })
    }

    /// Stop the VM cleanly when the process gets SIGINT or SIGTERM (the
    /// outcome is [`VmOutcome::Interrupted`]): the terminal is restored and
    /// the outputs (`perfvisor record`'s) are written.
    pub fn stop_on_signals(&self) -> Result<()> {
        let fd = self.interrupt.try_clone().map_err(io_err("eventfd"))?;
        crate::end::install_interrupt_handler(fd).map_err(io_err("installing the SIGINT handler"))
    }

    /// Sample every vCPU from the host for the whole run (`perfvisor
    /// record`), replacing the pvpmu sampler if any. Samples arrive on the
    /// returned channel while [`Vm::run`] runs.
    pub fn record(&mut self, cfg: RecordConfig) -> Recording {
        let (freq, backend) = (cfg.freq, cfg.backend);
        let (hooks, recording) = recorder::hooks(self.vcpus.len(), cfg, self.ram.memory().clone());
        for (v, h) in self.vcpus.iter_mut().zip(hooks) {
            v.set_hook(Box::new(h));
        }
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(freq.max(1)));
        let device = match std::mem::replace(&mut self.sampling, Sampling::Off) {
            Sampling::Off => None,
            Sampling::Pvpmu(p) => Some(p),
            Sampling::Record { device, .. } => device,
        };
        self.sampling = Sampling::Record {
            interval,
            backend,
            device,
        };
        recording
    }

    /// Guest memory, for devices that share pages with the guest.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// Run the guest until it ends; returns how it ended and, with pvpmu,
    /// the device's final counters.
    pub fn run(mut self) -> Result<RunReport> {
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| VmError::EventLoop(e.to_string()))?;
        let mut timer = TimerFd::new().map_err(|e| VmError::EventLoop(format!("timerfd: {e}")))?;
        if let Some(t) = self.config.timeout {
            timer
                .reset(t, None)
                .map_err(|e| VmError::EventLoop(format!("timerfd: {e}")))?;
        }
        let watcher = Arc::new(Mutex::new(EndWatcher {
            end: self.end.clone(),
            end_evt: self.end.event().try_clone().map_err(io_err("eventfd"))?,
            reset_evt: self.reset_evt.try_clone().map_err(io_err("eventfd"))?,
            interrupt: self.interrupt.try_clone().map_err(io_err("eventfd"))?,
            timer,
            timeout: self.config.timeout.unwrap_or_default(),
        }));
        em.add_subscriber(watcher);

        let stdin = io::stdin();
        let interactive = self.config.console_input && stdin.is_terminal();
        let _raw = if interactive {
            em.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                self.serial.clone(),
                self.serial_space.try_clone().map_err(io_err("eventfd"))?,
                self.end.clone(),
            ))));
            RawTerminal::enter()
        } else {
            None
        };

        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            match vcpu.spawn() {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.end.request(VmOutcome::Error(e.to_string()));
                    break;
                }
            }
        }

        // The schedule, backend, guest clock and (pvpmu only) VM budget.
        let schedule = match &self.sampling {
            Sampling::Off => None,
            Sampling::Pvpmu(p) => Some((
                Schedule::Device(p.dev.clone()),
                p.backend,
                p.clock.clone(),
                Some(p.budget.clone()),
            )),
            Sampling::Record {
                interval, backend, ..
            } => Some((
                Schedule::Fixed(*interval),
                *backend,
                Arc::new(GuestClock::default()),
                None,
            )),
        };
        let sampler = match schedule {
            Some((schedule, backend, clock, budget)) => match Sampler::start(
                schedule,
                self.handles.clone(),
                backend,
                clock,
                self.vm.clone(),
                self.end.clone(),
                budget,
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.end.request(VmOutcome::Error(format!(
                        "cannot start the pvpmu sampler: {e}"
                    )));
                    None
                }
            },
            None => None,
        };

        while !self.end.stopping() {
            if let Err(e) = em.run_with_timeout(250) {
                self.end
                    .request(VmOutcome::Error(format!("event loop: {e}")));
            }
        }

        drop(sampler);
        // Kick every vCPU before waiting on any, then re-kick stragglers,
        // for at most STOP_LIMIT: a vCPU thread that never comes back is
        // reported, not waited for (the process exits without it).
        for h in &self.handles {
            let _ = h.kick();
        }
        let deadline = std::time::Instant::now() + STOP_LIMIT;
        let mut stuck = Vec::new();
        for (h, t) in self.handles.iter().zip(threads) {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                let _ = h.kick();
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stuck.push(h.index());
            }
        }
        if !stuck.is_empty() {
            return Err(VmError::StuckVcpus(stuck));
        }
        let _ = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writer_mut()
            .flush();
        // The guest's last lines reach the terminal, unless it stopped
        // reading: then perfvisor still ends.
        if !self.console_drain.drain(CONSOLE_DRAIN_LIMIT) {
            log::warn!(
                "the terminal did not take the guest's last console output within {CONSOLE_DRAIN_LIMIT:?}; dropped it"
            );
        }
        let outcome = self
            .end
            .outcome()
            .unwrap_or(VmOutcome::Error("VM stopped without a reason".into()));
        let pvpmu = self.sampling.device().map(|p| p.dev.counters());
        let budget_skipped = self.sampling.device().map_or(0, |p| p.budget.skipped());
        // A poisoned lock (a panic elsewhere) leaves the count unknown: 0.
        let guest_events_rejected = self.guest_events.lock().map_or(0, |g| g.rejected());
        Ok(RunReport {
            outcome,
            pvpmu,
            budget_skipped,
            guest_events_rejected,
        })
    }
}

// The boot steps of `Vm::new`, in the order it runs them.

/// Refuse a vCPU count this host's KVM or the MP table cannot hold, before allocating anything.
fn check_cpus(kvm: &Kvm, cpus: u8) -> Result<()> {
    let max = kvm.get_max_vcpus().min(usize::from(mptable::MAX_CPUS));
    if cpus == 0 || usize::from(cpus) > max {
        return Err(VmError::Cpus { cpus, max });
    }
    Ok(())
}

/// The kernel command line, plus pvpmu's MMIO base and IRQ (if configured) for the guest driver.
fn kernel_cmdline(config: &VmConfig) -> String {
    match config.pmu {
        Some(_) => with_kernel_params(
            &config.cmdline,
            &format!(
                "pvpmu.base=0x{:x} pvpmu.irq={PVPMU_IRQ}",
                layout::MMIO_DEVICES_START
            ),
        ),
        None => config.cmdline.clone(),
    }
}

/// What follows the initrd: the archive of `initrd_files`, then each of
/// `initrd_archives`. A guest command needs an initrd whose /init runs it.
fn initrd_extra(config: &VmConfig) -> Result<Vec<u8>> {
    if !config.initrd_files.is_empty() && config.initrd.is_none() {
        return Err(BootError::NoInitrd.into());
    }
    let mut extra = if config.initrd_files.is_empty() {
        Vec::new()
    } else {
        boot::initrd_archive(&config.initrd_files).map_err(io_err("building the initrd archive"))?
    };
    for path in &config.initrd_archives {
        let open_err = |source| BootError::InitrdOpen {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(open_err)?.len();
        // More than the guest's RAM cannot load; say so before reading it.
        if size > config.mem_size {
            return Err(BootError::InitrdTooLarge {
                path: path.clone(),
                size,
                kernel_end: 0,
                limit: config.mem_size,
            }
            .into());
        }
        let start = extra.len().next_multiple_of(4);
        extra.resize(start, 0);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(path).map_err(open_err)?, size),
            &mut extra,
        )
        .map_err(open_err)?;
    }
    Ok(extra)
}

/// Load kernel, initrd and command line into guest memory and write the zero page (e820 map).
fn load_guest(config: &VmConfig, mem: &GuestMemoryMmap) -> Result<BootInfo> {
    let ram = layout::ram_ranges(config.mem_size);
    let cmdline = kernel_cmdline(config);
    let extra = initrd_extra(config)?;
    Ok(boot::load(
        mem,
        &ram,
        &config.kernel,
        config.initrd.as_deref(),
        &extra,
        &cmdline,
    )?)
}

/// Write the GDT/IDT/page tables for entering long mode and the MP table listing the vCPUs.
fn write_cpu_tables(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    regs::write_boot_tables(mem)?;
    mptable::setup(mem, cpus)?;
    Ok(())
}

/// The buses vCPU exits are dispatched to: port I/O and MMIO.
struct Buses {
    pio: Bus,
    mmio: Bus,
}

/// Put COM1 (the guest console, out to `console`) on the port-I/O bus, with its room-for-input fd.
fn add_serial(
    vm: &VmFd,
    pio: &Bus,
    console: Box<dyn Write + Send>,
    end: &Arc<VmEnd>,
) -> Result<(Arc<Mutex<Serial>>, EventFd, DrainHandle)> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let serial_space = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    let (sink, drain) = console::sink(console, end.clone()).map_err(io_err("console thread"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        serial_space.try_clone().map_err(io_err("eventfd"))?,
        sink,
    )));
    pio.insert(serial.clone(), COM1_PORT, 8)?;
    Ok((serial, serial_space, drain))
}

/// Put the i8042 on the port-I/O bus so the guest can reboot; returns its reset eventfd.
fn add_i8042(pio: &Bus) -> Result<EventFd> {
    let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        reset_evt.try_clone().map_err(io_err("eventfd"))?,
    )));
    pio.insert(i8042, I8042_PORT, 5)?;
    Ok(reset_evt)
}

/// Put the CMOS/RTC on the port-I/O bus, for the guest kernel's RTC and CMOS reads.
fn add_cmos(pio: &Bus) -> Result<()> {
    pio.insert(Arc::new(Mutex::new(Cmos::new())), CMOS_PORT, 2)?;
    Ok(())
}

/// Put the debug-exit port on the port-I/O bus, so a guest write ends the VM with a status.
fn add_debug_exit(pio: &Bus, end: &Arc<VmEnd>) -> Result<()> {
    let end_for_port = end.clone();
    let debug_exit = DebugExit::new(Box::new(move |status| {
        end_for_port.request(VmOutcome::Status(status))
    }));
    pio.insert(Arc::new(Mutex::new(debug_exit)), DEBUG_EXIT_PORT, 1)?;
    Ok(())
}

/// Put the guest-event port on the port-I/O bus: the guest kernel's panic,
/// power-off, halt and restart notifiers report through it (`crate::end`).
/// Returns the device, for its counter at the end of the run.
fn add_guest_events(pio: &Bus, end: &Arc<VmEnd>) -> Result<Arc<Mutex<GuestEvents>>> {
    let end = end.clone();
    let dev = Arc::new(Mutex::new(GuestEvents::new(Box::new(move |event| {
        end.guest_event(event)
    }))));
    pio.insert(dev.clone(), GUEST_EVENTS_PORT, 1)?;
    Ok(dev)
}

/// Create pvpmu with its irqfd and map it on the MMIO bus at the base the cmdline names.
fn add_pvpmu(
    vm: &VmFd,
    mem: &Arc<GuestMemoryMmap>,
    mmio: &Bus,
    cpus: u8,
    opts: &PmuOptions,
) -> Result<PmuState> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("eventfd"))?;
    vm.register_irqfd(&irq, PVPMU_IRQ)
        .map_err(kvm_err("register pvpmu irqfd"))?;
    let dev = Pvpmu::new(
        mem.clone(),
        PvpmuConfig {
            nr_vcpus: usize::from(cpus),
            max_freq: opts.freq,
            irq_line: PVPMU_IRQ,
            host_timer: opts.backend == Backend::HostTimer,
            callchains: opts.callchains || opts.backend == Backend::Kick,
        },
        irq,
    );
    mmio.insert(
        Arc::new(dev.mmio()),
        layout::MMIO_DEVICES_START,
        pvpmu::regs::MMIO_SIZE,
    )?;
    Ok(PmuState {
        dev,
        clock: Arc::new(GuestClock::default()),
        backend: opts.backend,
        budget: Arc::new(crate::budget::SampleBudget::new(opts.budget)),
        orc: opts.orc.clone(),
    })
}

/// Create and configure every vCPU on the buses, with pvpmu's sampling hook when present.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    entry: GuestAddress,
    buses: &Buses,
    end: &Arc<VmEnd>,
    pmu: Option<&PmuState>,
) -> Result<Vec<Vcpu>> {
    let base_cpuid = cpuid::supported(kvm)?;
    let sync_regs = kvm.check_extension(Cap::SyncRegs);
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for index in 0..config.cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create vCPU"))?;
        configure_vcpu(&fd, &base_cpuid, index, config.cpus, entry)?;
        let mut vcpu = Vcpu::new(
            index,
            fd,
            buses.pio.clone(),
            buses.mmio.clone(),
            end.clone(),
            sync_regs,
        );
        if let (Some(p), Some(opts)) = (pmu, &config.pmu) {
            vcpu.set_hook(Box::new(pvpmu_hook(p, index, opts.freq)));
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Set a vCPU's CPUID, MSRs, FPU and LAPIC, and on vCPU 0 long-mode registers at `entry`.
fn configure_vcpu(
    fd: &VcpuFd,
    base_cpuid: &CpuId,
    index: u8,
    cpus: u8,
    entry: GuestAddress,
) -> Result<()> {
    cpuid::setup(fd, base_cpuid, index, cpus)?;
    regs::setup_msrs(fd)?;
    regs::setup_fpu(fd)?;
    regs::setup_lapic(fd)?;
    if index == 0 {
        regs::setup_sregs(fd)?;
        regs::setup_regs(fd, entry)?;
    }
    Ok(())
}

/// The hook through which vCPU `index` takes the guest's pvpmu samples, within the budget.
fn pvpmu_hook(p: &PmuState, index: u8, freq: u32) -> SampleHook {
    SampleHook::new(
        p.dev.clone(),
        usize::from(index),
        p.clock.clone(),
        p.backend,
        freq,
    )
    .with_budget(p.budget.clone())
    .with_orc(p.orc.clone())
}

/// Log what was built, once the VM is ready to run.
fn log_ready(config: &VmConfig, boot: &BootInfo) {
    log::info!(
        "VM ready: {} vCPU(s), {} MiB, kernel {:?} ({:?})",
        config.cpus,
        config.mem_size >> 20,
        config.kernel,
        boot.format
    );
}

/// Watches the exit eventfd, the i8042 reset, the interrupt and the timeout.
struct EndWatcher {
    end: Arc<VmEnd>,
    end_evt: EventFd,
    reset_evt: EventFd,
    interrupt: EventFd,
    timer: TimerFd,
    timeout: Duration,
}

impl MutEventSubscriber for EndWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.end_evt.as_raw_fd(),
            self.reset_evt.as_raw_fd(),
            self.interrupt.as_raw_fd(),
            self.timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.end
                    .request(VmOutcome::Error(format!("event loop: {e}")));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.end.request(VmOutcome::Reboot);
        } else if fd == self.interrupt.as_raw_fd() {
            let _ = self.interrupt.read();
            self.end.request(VmOutcome::Interrupted);
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.end.request(VmOutcome::Timeout(self.timeout));
        } else {
            let _ = self.end_evt.read();
        }
    }
}

/// Puts the terminal in raw mode while the guest owns it.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        io::stdin().lock().set_raw_mode().ok().map(|_| RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = io::stdin().lock().set_canon_mode();
    }
}

use std::io::IsTerminal;
