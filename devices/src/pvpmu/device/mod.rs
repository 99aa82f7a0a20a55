//! The pvpmu device: MMIO registers and commands, page validation, and the
//! host-side sample and AUX writers the VMM's sampler calls.
//!
//! This file holds the device's state (configuration, counters, the
//! per-vCPU slots, the AUX table, the page owners) and its constructor;
//! each job on that state has its own file:
//!
//! - `mmio`: the register file and the bus device;
//! - `commands`: the CMD register's commands and the slot reset;
//! - `pages`: validation and ownership of the pages the guest hands over;
//! - `samples`: sample records, interrupts and flushes (vCPU threads);
//! - `aux`: the AUX buffer, its sessions, and the trace records.
//!
//! # Threads and locks
//!
//! - Commands run on the vCPU thread that wrote CMD (any vCPU may target any
//!   bank; the driver serialises its own command sequences).
//! - Samples and AUX bytes for vCPU `n` are written only by vCPU `n`'s thread
//!   while that vCPU is outside guest mode (in a kick or exit hook). So the
//!   guest driver, on that CPU, never observes a half-written batch, and
//!   clearing `active` or `aux_buf` on that CPU is a synchronous stop.
//! - `slots[n]` (one mutex per vCPU) serialises a command targeting vCPU `n`
//!   with vCPU `n`'s own writer. `aux` (the AUX buffer table) and `declared`
//!   (every page the guest handed to the device) are short global locks,
//!   always taken after a slot lock, never the other way round (`aux`
//!   before `declared` when both are held).
//! - The device is on the MMIO bus with no lock around it (it implements
//!   `BusDeviceSync`), so vCPUs are inside it at once: anything that must
//!   be one step (checking that pages are free and claiming them) holds
//!   the one lock that covers it for the whole step (`pages::Claim`).
//!
//! # Untrusted guest
//!
//! Every guest value (register argument, page list entry, state page field,
//! ring tail) is validated where it is used. Rejections set STATUS, bump a
//! counter, and log through a rate limiter; nothing panics and no write goes
//! outside the pages the guest declared.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::regs::{self, bank, cmd, feature, global, status};
use super::state::{self, flags, host, AuxView, EventView, StatePage};
use super::trace;
use crate::bus::BusDeviceSync;
use perf_ring::abi::{aux_flag, context, misc, sample};
use perf_ring::{
    GuestRing, GuestRingLayout, Producer, ProducerConfig, Sample, SampleFormat, SampleId,
};
use rate_limited::warn_rate_limited;
use rate_limited::RateLimiter;

mod aux;
mod commands;
mod mmio;
mod pages;
mod samples;

pub use mmio::PvpmuMmio;

/// The `PERF_SAMPLE_*` bits the host produces.
pub const SAMPLE_TYPES: u64 = sample::IP
    | sample::TID
    | sample::TIME
    | sample::ADDR
    | sample::ID
    | sample::CPU
    | sample::PERIOD
    | sample::STREAM_ID
    | sample::IDENTIFIER
    | sample::CALLCHAIN;

/// Interrupt at least this often while records wait in a ring.
const IRQ_INTERVAL: Duration = Duration::from_millis(5);
/// End an AUX session with data at least this often.
const AUX_SESSION_MAX: Duration = Duration::from_millis(100);
/// task_struct offsets beyond this are nonsense.
const MAX_TASK_FIELD_OFF: u32 = 64 << 10;
/// Longest callchain the host writes.
pub const MAX_CALLCHAIN: usize = 128;

/// Device configuration, fixed at creation.
#[derive(Debug, Clone)]
pub struct PvpmuConfig {
    /// vCPUs (banks).
    pub nr_vcpus: usize,
    /// Highest sampling rate the host produces (`--pmu-freq`).
    pub max_freq: u32,
    /// The interrupt line the guest sees.
    pub irq_line: u32,
    /// Samples come from the host-timer backend (else kicks).
    pub host_timer: bool,
    /// Events that ask for callchains get the host's frame-pointer walk
    /// (the sampler takes their samples with kicks, which give registers).
    pub callchains: bool,
}

/// Device counters (the global counter registers).
#[derive(Debug, Default)]
pub struct Counters {
    pub err_commands: AtomicU64,
    pub err_pages: AtomicU64,
    pub err_tails: AtomicU64,
    pub err_state: AtomicU64,
    pub samples: AtomicU64,
    pub lost: AtomicU64,
    pub aux_bytes: AtomicU64,
    pub interrupts: AtomicU64,
    /// AUX trace records dropped: no session posted, or the session had ended.
    pub aux_dropped: AtomicU64,
    /// AUX trace records written.
    pub aux_records: AtomicU64,
    /// EXIT records written, by trace::ExitReason (index = reason - 1).
    pub aux_exits: [AtomicU64; 6],
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub err_commands: u64,
    pub err_pages: u64,
    pub err_tails: u64,
    pub err_state: u64,
    pub samples: u64,
    pub lost: u64,
    pub aux_bytes: u64,
    pub interrupts: u64,
    pub aux_dropped: u64,
    pub aux_records: u64,
    /// EXIT records written, by trace::ExitReason (index = reason - 1).
    pub aux_exits: [u64; 6],
    /// Guest pages the device holds now (state pages, rings and AUX
    /// buffers of every bank): those it may still write. A guest driver
    /// that released everything leaves 0.
    pub declared_pages: u64,
}

/// One host sample, as the sampler took it.
#[derive(Debug, Clone, Copy)]
pub struct HostSample<'a> {
    /// Guest RIP.
    pub ip: u64,
    /// Guest was in user mode (CPL 3).
    pub user: bool,
    /// kvm-clock at the sample, ns (the VM's `KVM_GET_CLOCK` time base).
    pub kvmclock_ns: u64,
    /// Host monotonic ns, for periods.
    pub host_ns: u64,
    /// Callchain entries after the IP (return addresses), innermost first.
    pub callers: &'a [u64],
    /// Index in `callers` of the first user-space entry (the user IP at the
    /// guest kernel's entry), for a sample taken in the kernel.
    pub user_start: Option<usize>,
    /// Time the vCPU spent halted, which the host timer cannot tick in:
    /// the guest's idle task (pid 0) ran. Only system-wide events take it.
    pub idle: bool,
    /// The guest task (pid, tid) when the sampler knows it (from the
    /// guest's switch log, [`Pvpmu::tick_tasks`]); else the task running
    /// on the vCPU now.
    pub task: Option<(u32, u32)>,
}

/// One VM exit for the AUX trace.
#[derive(Debug, Clone, Copy)]
pub struct TraceExit {
    pub reason: trace::ExitReason,
    pub rip: u64,
    pub addr: u64,
    pub size: u32,
    pub handling_ns: u64,
    /// kvm-clock at the exit.
    pub kvmclock_ns: u64,
}

fn host_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What [`Pvpmu::record_sample`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleResult {
    /// Written.
    Written,
    /// Dropped for lack of room (counted lost; reported in PERF_RECORD_LOST).
    Lost,
    /// The event excludes this mode, or the state page says no event is active.
    Filtered,
    /// The ring is not running.
    Idle,
    /// The state page held nonsense (counted in ERR_STATE).
    BadState,
}

#[derive(Default)]
struct Bank {
    args: [u64; 3],
    status: u32,
    ret0: u64,
}

/// Host view of the guest's current AUX session on one vCPU.
#[derive(Default, Clone, Copy)]
struct AuxSession {
    /// The `aux_seq` of the session in progress (or last ended).
    seq: u64,
    /// Session in progress: writing allowed.
    open: bool,
    buf: u64,
    head: u64,
    room: u64,
    wakeup: u64,
    written: u64,
    flags: u64,
    started: Option<Instant>,
}

struct Slot<M: GuestMemoryBackend> {
    bank: Bank,
    state: Option<StatePage>,
    ring: Option<Producer<GuestRing<M>>>,
    ring_pages: Vec<u64>,
    running: bool,
    /// `gen` of the event the ring is formatted for.
    gen: Option<u32>,
    last_sample_ns: u64,
    last_irq: Option<Instant>,
    pending_irq: bool,
    aux: AuxSession,
    /// The AUX buffer whose trace stream has its HEADER (and, when
    /// `names_written`, its STATS_NAMES).
    trace_buf: u64,
    names_written: bool,
    log: RateLimiter,
    /// The guest's `switch_seq` at the last [`Pvpmu::tick_tasks`].
    switch_seen: u64,
}

impl<M: GuestMemoryBackend> Default for Slot<M> {
    fn default() -> Self {
        Self {
            bank: Bank::default(),
            state: None,
            ring: None,
            ring_pages: Vec::new(),
            running: false,
            gen: None,
            last_sample_ns: 0,
            last_irq: None,
            pending_irq: false,
            aux: AuxSession::default(),
            trace_buf: 0,
            names_written: false,
            log: RateLimiter::default(),
            switch_seen: 0,
        }
    }
}

struct AuxBuffer {
    pages: Vec<u64>,
}

impl AuxBuffer {
    fn size(&self) -> u64 {
        self.pages.len() as u64 * regs::PAGE_SIZE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    State(usize),
    Ring(usize),
    Aux(u64),
}

struct Inner<M: GuestMemoryBackend> {
    mem: Arc<M>,
    cfg: PvpmuConfig,
    irq: EventFd,
    counters: Counters,
    slots: Vec<Mutex<Slot<M>>>,
    /// Per vCPU: the guest asked for a FLUSH (read by the vCPU's hook
    /// after the exit, without the slot lock).
    flush: Vec<AtomicBool>,
    aux: Mutex<AuxTable>,
    declared: Mutex<BTreeMap<u64, Owner>>,
    log: Mutex<RateLimiter>,
}

#[derive(Default)]
struct AuxTable {
    next_id: u64,
    bufs: HashMap<u64, AuxBuffer>,
}

/// The device. Cheap to clone: all clones share one device.
pub struct Pvpmu<M: GuestMemoryBackend> {
    inner: Arc<Inner<M>>,
}

impl<M: GuestMemoryBackend> Clone for Pvpmu<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a command failed: (STATUS code, which counter, message).
struct Reject(u32, Counter, String);

#[derive(Clone, Copy)]
enum Counter {
    Commands,
    Pages,
}

type CmdResult = Result<u64, Reject>;

fn einval(msg: impl Into<String>) -> Reject {
    Reject(status::EINVAL, Counter::Commands, msg.into())
}

fn efault(msg: impl Into<String>) -> Reject {
    Reject(status::EFAULT, Counter::Pages, msg.into())
}

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
    /// A device over `mem` that raises `irq` (an irqfd) to interrupt the guest.
    pub fn new(mem: Arc<M>, cfg: PvpmuConfig, irq: EventFd) -> Self {
        let nr = cfg.nr_vcpus.min(regs::MAX_BANKS);
        let slots = (0..nr).map(|_| Mutex::new(Slot::default())).collect();
        let flush = (0..nr).map(|_| AtomicBool::new(false)).collect();
        Self {
            inner: Arc::new(Inner {
                mem,
                cfg: PvpmuConfig {
                    nr_vcpus: nr,
                    ..cfg
                },
                irq,
                counters: Counters::default(),
                slots,
                flush,
                aux: Mutex::new(AuxTable {
                    next_id: 1,
                    bufs: HashMap::new(),
                }),
                declared: Mutex::new(BTreeMap::new()),
                log: Mutex::new(RateLimiter::default()),
            }),
        }
    }

    /// The device's configuration.
    pub fn config(&self) -> &PvpmuConfig {
        &self.inner.cfg
    }

    /// The guest memory the device writes (for the sampler's walks).
    pub fn memory(&self) -> &M {
        &self.inner.mem
    }

    /// Counter snapshot.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            err_commands: l(&c.err_commands),
            err_pages: l(&c.err_pages),
            err_tails: l(&c.err_tails),
            err_state: l(&c.err_state),
            samples: l(&c.samples),
            lost: l(&c.lost),
            aux_bytes: l(&c.aux_bytes),
            interrupts: l(&c.interrupts),
            aux_dropped: l(&c.aux_dropped),
            aux_records: l(&c.aux_records),
            aux_exits: std::array::from_fn(|i| l(&c.aux_exits[i])),
            declared_pages: lock(&self.inner.declared).len() as u64,
        }
    }

    /// The MMIO bus device.
    pub fn mmio(&self) -> PvpmuMmio<M> {
        PvpmuMmio(self.clone())
    }

    fn warn(&self, msg: &str) {
        let mut l = lock(&self.inner.log);
        warn_rate_limited!(l, "pvpmu: {msg}");
    }

    fn count(&self, c: Counter) {
        let ctr = match c {
            Counter::Commands => &self.inner.counters.err_commands,
            Counter::Pages => &self.inner.counters.err_pages,
        };
        ctr.fetch_add(1, Ordering::Relaxed);
    }

    /// A state-page value vCPU `slot`'s writer cannot use: counted in
    /// ERR_STATE and logged through the slot's rate limiter.
    fn reject_state(&self, slot: &mut Slot<M>, msg: std::fmt::Arguments<'_>) {
        self.inner
            .counters
            .err_state
            .fetch_add(1, Ordering::Relaxed);
        warn_rate_limited!(slot.log, "pvpmu: {msg}");
    }
}

#[allow(dead_code)]
fn _assert_state_offsets() {
    // The host half starts where the guest half ends.
    const { assert!(state::host::IRQ_SEQ == 0x800) };
}
