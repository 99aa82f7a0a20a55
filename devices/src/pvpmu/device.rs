//! The pvpmu device: MMIO registers and commands, page validation, and the
//! host-side sample and AUX writers the VMM's sampler calls.
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
//!   always taken after a slot lock, never the other way round.
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
use crate::bus::BusDevice;
use perf_ring::abi::{aux_flag, context, misc, sample};
use perf_ring::{
    GuestRing, GuestRingLayout, Producer, ProducerConfig, Sample, SampleFormat, SampleId,
};
use rate_limited::warn_rate_limited;
use rate_limited::RateLimiter;

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

    // ----- registers -----

    fn read_global(&self, offset: u64) -> u64 {
        let c = &self.inner.counters;
        let cfg = &self.inner.cfg;
        match offset {
            global::MAGIC => u64::from(regs::MAGIC_VALUE),
            global::VERSION => u64::from(regs::VERSION_VALUE),
            global::FEATURES => {
                let mut f = feature::SAMPLING | feature::AUX | feature::FLUSH;
                if cfg.host_timer {
                    f |= feature::HOST_TIMER;
                }
                if cfg.callchains {
                    f |= feature::CALLCHAIN;
                }
                u64::from(f)
            }
            global::NR_VCPUS => cfg.nr_vcpus as u64,
            global::MAX_FREQ => u64::from(cfg.max_freq),
            global::IRQ => u64::from(cfg.irq_line),
            global::SAMPLE_TYPES => SAMPLE_TYPES,
            global::ERR_COMMANDS => c.err_commands.load(Ordering::Relaxed),
            global::ERR_PAGES => c.err_pages.load(Ordering::Relaxed),
            global::ERR_TAILS => c.err_tails.load(Ordering::Relaxed),
            global::ERR_STATE => c.err_state.load(Ordering::Relaxed),
            global::SAMPLES => c.samples.load(Ordering::Relaxed),
            global::LOST => c.lost.load(Ordering::Relaxed),
            global::AUX_BYTES => c.aux_bytes.load(Ordering::Relaxed),
            global::INTERRUPTS => c.interrupts.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    fn bank_of(&self, offset: u64) -> Option<(usize, u64)> {
        let rel = offset.checked_sub(regs::BANK_BASE)?;
        let n = (rel / regs::BANK_SIZE) as usize;
        (n < self.inner.slots.len()).then_some((n, rel % regs::BANK_SIZE))
    }

    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = if offset < regs::BANK_BASE {
            // 32-bit registers sit below SAMPLE_TYPES; the rest are 64-bit
            // and may also be read as two 32-bit halves.
            let wide = offset & !7 >= global::SAMPLE_TYPES;
            match (wide, data.len()) {
                (false, 4) => self.read_global(offset),
                (true, 8) if offset.is_multiple_of(8) => self.read_global(offset),
                (true, 4) => self.read_global(offset & !7) >> ((offset & 4) * 8),
                _ => 0,
            }
        } else if let Some((n, reg)) = self.bank_of(offset) {
            let slot = lock(&self.inner.slots[n]);
            match reg {
                bank::STATUS => u64::from(slot.bank.status),
                bank::ARG0 => slot.bank.args[0],
                bank::ARG1 => slot.bank.args[1],
                bank::ARG2 => slot.bank.args[2],
                bank::RET0 => slot.bank.ret0,
                _ => 0,
            }
        } else {
            0
        };
        match data.len() {
            4 | 8 => {
                let bytes = value.to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            _ => {}
        }
    }

    fn mmio_write(&self, offset: u64, data: &[u8]) {
        let Some((n, reg)) = self.bank_of(offset) else {
            return;
        };
        let value = match data.len() {
            4 => u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
            8 => u64::from_le_bytes(data.try_into().unwrap_or([0; 8])),
            _ => {
                if reg == bank::CMD {
                    self.count(Counter::Commands);
                    self.warn(&format!(
                        "bank {n}: CMD written with a {}-byte access; use 4 bytes",
                        data.len()
                    ));
                }
                return;
            }
        };
        match reg {
            bank::ARG0 | bank::ARG1 | bank::ARG2 if data.len() == 8 => {
                lock(&self.inner.slots[n]).bank.args[((reg - bank::ARG0) / 8) as usize] = value;
            }
            bank::CMD if data.len() == 4 => self.command(n, value as u32),
            _ => {
                if reg == bank::CMD {
                    self.count(Counter::Commands);
                }
            }
        }
    }

    // ----- commands -----

    fn command(&self, n: usize, command: u32) {
        let mut slot = lock(&self.inner.slots[n]);
        let args = slot.bank.args;
        let result = match command {
            cmd::SET_STATE => self.cmd_set_state(n, &mut slot, args[0]),
            cmd::SET_RING => self.cmd_set_ring(n, &mut slot, args[0], args[1]),
            cmd::START => {
                if slot.state.is_none() || slot.ring.is_none() {
                    Err(Reject(
                        status::ENOENT,
                        Counter::Commands,
                        "START before SET_STATE and SET_RING".into(),
                    ))
                } else {
                    slot.running = true;
                    Ok(0)
                }
            }
            cmd::STOP => {
                // The slot lock is held: the vCPU's writer is not inside a
                // write now and sees `running == false` from its next one.
                slot.running = false;
                Ok(0)
            }
            cmd::RESET => {
                self.reset_slot(n, &mut slot);
                Ok(0)
            }
            cmd::AUX_SET => self.cmd_aux_set(args[0], args[1], args[2]),
            cmd::AUX_CLEAR => self.cmd_aux_clear(args[0]),
            cmd::FLUSH => {
                // Done by vCPU n's hook right after this exit (before the
                // guest runs again when n is the writer's own vCPU, which
                // is how the driver uses it).
                self.inner.flush[n].store(true, Ordering::Release);
                Ok(0)
            }
            other => Err(Reject(
                status::ENOSYS,
                Counter::Commands,
                format!("unknown command {other}"),
            )),
        };
        match result {
            Ok(ret) => {
                slot.bank.status = status::OK;
                slot.bank.ret0 = ret;
            }
            Err(Reject(code, counter, msg)) => {
                slot.bank.status = code;
                slot.bank.ret0 = 0;
                self.count(counter);
                self.warn(&format!("bank {n}: command {command} rejected: {msg}"));
            }
        }
    }

    fn reset_slot(&self, n: usize, slot: &mut Slot<M>) {
        slot.running = false;
        slot.state = None;
        slot.ring = None;
        slot.ring_pages.clear();
        slot.gen = None;
        slot.aux = AuxSession::default();
        lock(&self.inner.declared).retain(|_, o| *o != Owner::State(n) && *o != Owner::Ring(n));
    }

    /// A page the guest hands over: aligned, in RAM, not already declared
    /// by anything except `replacing`.
    fn check_page(&self, gpa: u64, what: &str, replacing: Owner) -> Result<(), Reject> {
        if !gpa.is_multiple_of(regs::PAGE_SIZE) {
            return Err(efault(format!("{what} 0x{gpa:x} is not 4 KiB aligned")));
        }
        if !self
            .inner
            .mem
            .check_range(GuestAddress(gpa), regs::PAGE_SIZE as usize)
        {
            return Err(efault(format!("{what} 0x{gpa:x} is not guest RAM")));
        }
        match lock(&self.inner.declared).get(&gpa) {
            Some(o) if *o != replacing => Err(efault(format!(
                "{what} 0x{gpa:x} is already declared ({o:?})"
            ))),
            _ => Ok(()),
        }
    }

    /// Read a page list of `count` u64 GPAs at `list`, checked.
    fn read_list(&self, list: u64, count: u64, what: &str) -> Result<Vec<u64>, Reject> {
        let len = (count * 8) as usize;
        let mut raw = vec![0u8; len];
        self.inner
            .mem
            .read_slice(&mut raw, GuestAddress(list))
            .map_err(|_| {
                efault(format!(
                    "{what} page list at 0x{list:x} ({count} entries) is not in guest RAM"
                ))
            })?;
        let pages: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let mut sorted = pages.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(efault(format!("{what} page list names a page twice")));
        }
        Ok(pages)
    }

    fn declare(&self, pages: &[u64], owner: Owner) {
        let mut d = lock(&self.inner.declared);
        d.retain(|_, o| *o != owner);
        for p in pages {
            d.insert(*p, owner);
        }
    }

    fn cmd_set_state(&self, n: usize, slot: &mut Slot<M>, gpa: u64) -> CmdResult {
        if slot.running {
            return Err(Reject(
                status::EBUSY,
                Counter::Commands,
                "SET_STATE while running; STOP first".into(),
            ));
        }
        self.check_page(gpa, "state page", Owner::State(n))?;
        self.declare(&[gpa], Owner::State(n));
        slot.state = Some(StatePage(GuestAddress(gpa)));
        slot.aux = AuxSession::default();
        Ok(0)
    }

    fn cmd_set_ring(&self, n: usize, slot: &mut Slot<M>, list: u64, nr_data: u64) -> CmdResult {
        if slot.running {
            return Err(Reject(
                status::EBUSY,
                Counter::Commands,
                "SET_RING while running; STOP first".into(),
            ));
        }
        if !nr_data.is_power_of_two() || nr_data > regs::MAX_RING_PAGES {
            return Err(einval(format!(
                "{nr_data} data pages: need a power of two up to {}",
                regs::MAX_RING_PAGES
            )));
        }
        let pages = self.read_list(list, nr_data + 1, "ring")?;
        for (i, p) in pages.iter().enumerate() {
            self.check_page(*p, &format!("ring page {i}"), Owner::Ring(n))?;
        }
        let layout = GuestRingLayout {
            page_size: regs::PAGE_SIZE as usize,
            control: GuestAddress(pages[0]),
            data: pages[1..].iter().map(|p| GuestAddress(*p)).collect(),
            aux: Vec::new(),
        };
        let ring =
            GuestRing::new(self.inner.mem.clone(), layout).map_err(|e| efault(e.to_string()))?;
        let cfg = ProducerConfig {
            format: SampleFormat::new(sample::IP, 0, false).map_err(|e| einval(e.to_string()))?,
            ..Default::default()
        };
        let producer = Producer::new(ring, cfg).map_err(|e| einval(e.to_string()))?;
        self.declare(&pages, Owner::Ring(n));
        slot.ring = Some(producer);
        slot.ring_pages = pages;
        slot.gen = None;
        Ok(0)
    }

    fn cmd_aux_set(&self, list: u64, nr: u64, _flags: u64) -> CmdResult {
        if !nr.is_power_of_two() || nr > regs::MAX_AUX_PAGES {
            return Err(einval(format!(
                "{nr} AUX pages: need a power of two up to {}",
                regs::MAX_AUX_PAGES
            )));
        }
        let pages = self.read_list(list, nr, "AUX")?;
        let mut table = lock(&self.inner.aux);
        let id = table.next_id;
        for (i, p) in pages.iter().enumerate() {
            self.check_page(*p, &format!("AUX page {i}"), Owner::Aux(id))?;
        }
        table.next_id += 1;
        self.declare(&pages, Owner::Aux(id));
        table.bufs.insert(id, AuxBuffer { pages });
        Ok(id)
    }

    fn cmd_aux_clear(&self, id: u64) -> CmdResult {
        // Writers hold `aux` while they write a buffer: once this returns
        // (the guest's MMIO write retires), nothing writes it any more.
        let mut table = lock(&self.inner.aux);
        if table.bufs.remove(&id).is_none() {
            return Err(Reject(
                status::ENOENT,
                Counter::Commands,
                format!("AUX_CLEAR of unknown buffer {id}"),
            ));
        }
        drop(table);
        lock(&self.inner.declared).retain(|_, o| *o != Owner::Aux(id));
        Ok(0)
    }

    // ----- sampling (vCPU thread) -----

    /// Is an event active on vCPU `n`, and how often does it want samples
    /// (ns)? Lock-free enough for a sampler thread's tick.
    pub fn wanted_interval(&self, n: usize) -> Option<u64> {
        let slot = lock(self.inner.slots.get(n)?);
        if !slot.running {
            return None;
        }
        let state = slot.state?;
        drop(slot);
        let mem = &*self.inner.mem;
        if !state.active(mem) {
            return None;
        }
        let ev = state.event(mem)?;
        (!ev.throttled).then(|| self.interval_ns(&ev))
    }

    /// Does the event active on vCPU `n` ask for callchains that the host
    /// walks (so its samples need the vCPU's registers)?
    pub fn wants_callchain(&self, n: usize) -> bool {
        if !self.inner.cfg.callchains {
            return false;
        }
        let Some(state) = self.inner.slots.get(n).and_then(|s| lock(s).state) else {
            return false;
        };
        let mem = &*self.inner.mem;
        state.active(mem)
            && state
                .event(mem)
                .is_some_and(|ev| ev.sample_type & sample::CALLCHAIN != 0)
    }

    /// The guest task that ran at each of `kvmclock` (host-timer ticks,
    /// oldest first), from the guest's context-switch log: the task of
    /// the first switch after the tick. `None` where no switch came after
    /// it (the task running now, which [`Pvpmu::record_sample`] reads), or
    /// where the log no longer reaches back to it. Bounded: one pass over
    /// the ticks and at most [`state::guest::SWITCH_LOG_LEN`] entries.
    pub fn tick_tasks(&self, n: usize, kvmclock: &[u64]) -> Vec<Option<(u32, u32)>> {
        let mut out = vec![None; kvmclock.len()];
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return out;
        };
        let mut slot = lock(slot_lock);
        let Some(state) = slot.state else {
            return out;
        };
        let mem = &*self.inner.mem;
        let Some(ev) = state.event(mem) else {
            return out;
        };
        let (seq, log, overrun) = state.switch_log(mem, slot.switch_seen);
        slot.switch_seen = seq;
        drop(slot);
        let oldest = log.first().map(|e| e.0);
        let mut next = 0;
        for (task, &k) in out.iter_mut().zip(kvmclock) {
            let t = k.wrapping_sub(ev.clock_offset);
            if overrun && oldest.is_some_and(|o| t < o) {
                continue;
            }
            while log.get(next).is_some_and(|e| e.0 <= t) {
                next += 1;
            }
            *task = log.get(next).map(|e| (e.1, e.2));
        }
        out
    }

    /// Did the guest ask vCPU `n` for a FLUSH since the last call? (The
    /// host-timer hook then moves its pending ticks before the guest runs.)
    pub fn take_flush(&self, n: usize) -> bool {
        self.inner
            .flush
            .get(n)
            .is_some_and(|f| f.swap(false, Ordering::AcqRel))
    }

    /// The highest sampling rate the host was configured for (Hz).
    pub fn max_freq(&self) -> u32 {
        self.inner.cfg.max_freq
    }

    fn min_interval_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.inner.cfg.max_freq.max(1))
    }

    fn interval_ns(&self, ev: &EventView) -> u64 {
        let wanted = if ev.flags & flags::FREQ != 0 {
            1_000_000_000 / ev.period.clamp(1, 1_000_000_000)
        } else {
            ev.period
        };
        wanted.max(self.min_interval_ns())
    }

    /// Read pid and tid of the task running on the vCPU from guest memory,
    /// as the state page says where to find them.
    fn task_ids(&self, ev: &EventView) -> Option<(u32, u32)> {
        let mem = &*self.inner.mem;
        if ev.task_pid_off > MAX_TASK_FIELD_OFF || ev.task_tgid_off > MAX_TASK_FIELD_OFF {
            return None;
        }
        let task: u64 = mem.read_obj(GuestAddress(ev.current_task_gpa)).ok()?;
        // CPU 0's idle task (init_task) lives in the kernel image mapping;
        // every other task_struct is in the direct map.
        let gpa = if ev.kimage_virt != 0 && task >= ev.kimage_virt {
            (task - ev.kimage_virt).checked_add(ev.kimage_phys)?
        } else {
            task.checked_sub(ev.page_offset)?
        };
        let pid: u32 = mem
            .read_obj(GuestAddress(gpa.checked_add(u64::from(ev.task_pid_off))?))
            .ok()?;
        let tgid: u32 = mem
            .read_obj(GuestAddress(gpa.checked_add(u64::from(ev.task_tgid_off))?))
            .ok()?;
        Some((tgid, pid))
    }

    /// Write one sample for vCPU `n` (call on vCPU `n`'s thread, vCPU out of
    /// guest mode). Raises the interrupt when the ring wants a wakeup or
    /// records have waited [`IRQ_INTERVAL`].
    pub fn record_sample(&self, n: usize, s: &HostSample<'_>) -> SampleResult {
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return SampleResult::Idle;
        };
        let mut slot = lock(slot_lock);
        let (true, Some(state)) = (slot.running, slot.state) else {
            return SampleResult::Idle;
        };
        let mem = &*self.inner.mem;
        if !state.active(mem) {
            return SampleResult::Filtered;
        }
        let Some(ev) = state.event(mem) else {
            return self.bad_state(&mut slot, "state page unreadable");
        };
        // A host-timer tick taken before the event's add belongs to
        // whatever ran before it (another task, or nothing).
        let guest_time = s.kvmclock_ns.wrapping_sub(ev.clock_offset);
        if ev.active_since != 0 && (guest_time as i64).wrapping_sub(ev.active_since as i64) < 0 {
            return SampleResult::Filtered;
        }
        if s.idle && ev.pid_filter != 0 {
            return SampleResult::Filtered;
        }
        // While the driver throttles the event no samples are due (they
        // are not lost either).
        if ev.throttled
            || (s.user && ev.flags & flags::EXCLUDE_USER != 0)
            || (!s.user && ev.flags & flags::EXCLUDE_KERNEL != 0)
        {
            return SampleResult::Filtered;
        }
        // read_format shapes nothing unless sample_type has READ, which the
        // host does not produce (it is outside SAMPLE_TYPES).
        if ev.sample_type & !SAMPLE_TYPES != 0 {
            return self.bad_state(
                &mut slot,
                &format!("unsupported sample_type 0x{:x}", ev.sample_type),
            );
        }
        if slot.ring.is_none() {
            return SampleResult::Idle;
        }
        if Some(ev.gen) != slot.gen {
            let format = match SampleFormat::new(ev.sample_type, 0, ev.sample_id_all) {
                Ok(f) => f,
                Err(e) => return self.bad_state(&mut slot, &e.to_string()),
            };
            let switched = slot.ring.as_mut().map(|r| r.set_format(format, ev.id));
            if let Some(Err(e)) = switched {
                return self.bad_state(&mut slot, &e.to_string());
            }
            slot.gen = Some(ev.gen);
            slot.last_sample_ns = 0;
        }
        let task = match (s.idle, s.task) {
            (true, _) => Some((0, 0)),
            (false, known) => known.or_else(|| self.task_ids(&ev)),
        };
        let (pid, tid) = task.unwrap_or_else(|| {
            self.inner
                .counters
                .err_state
                .fetch_add(1, Ordering::Relaxed);
            (0, 0)
        });
        let period = match slot.last_sample_ns {
            0 => self.interval_ns(&ev),
            last => s.host_ns.saturating_sub(last).max(1),
        };
        slot.last_sample_ns = s.host_ns;
        let mut chain = [0u64; MAX_CALLCHAIN + 3];
        let chain_len = if ev.sample_type & sample::CALLCHAIN != 0 {
            build_callchain(&mut chain, s)
        } else {
            0
        };
        let sample = Sample {
            misc: if s.user { misc::USER } else { misc::KERNEL },
            ip: s.ip,
            addr: 0,
            period,
            callchain: &chain[..chain_len],
            ..Default::default()
        };
        let ids = SampleId {
            pid,
            tid,
            time: guest_time,
            id: ev.id,
            stream_id: ev.stream_id,
            cpu: ev.cpu,
        };
        let Some(ring) = slot.ring.as_mut() else {
            return SampleResult::Idle;
        };
        let bad_tails_before = ring.stats().bad_data_tail;
        let out = match ring.write_sample(&sample, &ids) {
            Ok(o) => o,
            Err(e) => return self.bad_state(&mut slot, &e.to_string()),
        };
        let c = &self.inner.counters;
        // The producer counts (and logs) every nonsense data_tail it sees;
        // the device's ERR_TAILS register keeps the total across rings.
        c.err_tails.fetch_add(
            ring.stats().bad_data_tail - bad_tails_before,
            Ordering::Relaxed,
        );
        let result = if out.written {
            c.samples.fetch_add(1, Ordering::Relaxed);
            state.set(
                mem,
                host::SAMPLES,
                ring.stats().records_written,
                Ordering::Relaxed,
            );
            SampleResult::Written
        } else {
            c.lost.fetch_add(1, Ordering::Relaxed);
            state.set(
                mem,
                host::LOST,
                ring.stats().records_dropped,
                Ordering::Relaxed,
            );
            SampleResult::Lost
        };
        slot.pending_irq |= out.written || ring.pending_lost() > 0;
        let due = slot.last_irq.is_none_or(|t| t.elapsed() >= IRQ_INTERVAL);
        if out.needs_wakeup || (slot.pending_irq && due) || result == SampleResult::Lost {
            self.interrupt(&mut slot, state);
        }
        result
    }

    fn bad_state(&self, slot: &mut Slot<M>, msg: &str) -> SampleResult {
        self.inner
            .counters
            .err_state
            .fetch_add(1, Ordering::Relaxed);
        warn_rate_limited!(slot.log, "pvpmu: state page: {msg}; sample skipped");
        SampleResult::BadState
    }

    fn interrupt(&self, slot: &mut Slot<M>, state: StatePage) {
        state.bump_irq_seq(&*self.inner.mem);
        slot.pending_irq = false;
        slot.last_irq = Some(Instant::now());
        self.inner
            .counters
            .interrupts
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.inner.irq.write(1) {
            self.warn(&format!("cannot raise the interrupt: {e}"));
        }
    }

    /// Raise the interrupt for vCPU `n` if records have waited long enough
    /// (call on vCPU `n`'s thread from time to time).
    pub fn flush(&self, n: usize) {
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return;
        };
        let mut slot = lock(slot_lock);
        if let (true, Some(state)) = (slot.pending_irq, slot.state) {
            if slot.last_irq.is_none_or(|t| t.elapsed() >= IRQ_INTERVAL) {
                self.interrupt(&mut slot, state);
            }
        }
        self.aux_maybe_end(&mut slot, false);
    }

    // ----- AUX (vCPU thread) -----

    /// Is an AUX session open or posted on vCPU `n` (cheap check for hooks)?
    pub fn aux_wanted(&self, n: usize) -> bool {
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return false;
        };
        let slot = lock(slot_lock);
        match slot.state {
            Some(state) => slot.running && state.aux_buf(&*self.inner.mem) != 0,
            None => false,
        }
    }

    /// Append one trace record to vCPU `n`'s AUX session. Returns whether it
    /// was written.
    pub fn aux_append(&self, n: usize, record: &[u8]) -> bool {
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return false;
        };
        let mut slot = lock(slot_lock);
        let written = self.aux_append_locked(&mut slot, record);
        let c = &self.inner.counters;
        if written {
            c.aux_records.fetch_add(1, Ordering::Relaxed);
        } else {
            c.aux_dropped.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn aux_append_locked(&self, slot: &mut Slot<M>, record: &[u8]) -> bool {
        let (true, Some(state)) = (slot.running, slot.state) else {
            return false;
        };
        let mem = &*self.inner.mem;
        let Some(view) = state.aux(mem) else {
            return false;
        };
        if view.seq != slot.aux.seq {
            // A new session was posted.
            self.aux_open(slot, view);
        }
        // `aux_buf` is re-read on every write: the guest clears it in
        // pmu->stop on this CPU, and after that nothing may be written.
        if !slot.aux.open || state.aux_buf(mem) != slot.aux.buf {
            return false;
        }
        let len = record.len() as u64;
        if slot.aux.written + len > slot.aux.room {
            slot.aux.flags |= aux_flag::TRUNCATED;
            self.aux_end(slot);
            return false;
        }
        let table = lock(&self.inner.aux);
        let Some(buf) = table.bufs.get(&slot.aux.buf) else {
            drop(table);
            slot.aux.open = false;
            return false;
        };
        let size = buf.size();
        // The head is the guest's value: wrapping keeps it modulo 2^64,
        // which the power-of-two size divides.
        let mut off = slot.aux.head.wrapping_add(slot.aux.written) % size;
        let mut rest = record;
        while !rest.is_empty() {
            let page = (off / regs::PAGE_SIZE) as usize;
            let in_page = off % regs::PAGE_SIZE;
            let n = rest.len().min((regs::PAGE_SIZE - in_page) as usize);
            let Some(&gpa) = buf.pages.get(page) else {
                return false;
            };
            if mem
                .write_slice(&rest[..n], GuestAddress(gpa + in_page))
                .is_err()
            {
                // Declared pages were checked at AUX_SET; RAM does not shrink.
                return false;
            }
            rest = &rest[n..];
            off = (off + n as u64) % size;
        }
        drop(table);
        slot.aux.written += len;
        // Kept current after every write: pmu->stop on this CPU ends the
        // handle with it even when the host has not ended the session.
        state.set(mem, host::AUX_WRITTEN, slot.aux.written, Ordering::Relaxed);
        state.set(mem, host::AUX_FLAGS, slot.aux.flags, Ordering::Relaxed);
        // The tag says which session the totals belong to; the driver pairs
        // it with an acquire load in pmu->stop.
        state.set(mem, host::AUX_WRITTEN_SEQ, slot.aux.seq, Ordering::Release);
        self.inner
            .counters
            .aux_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.aux_maybe_end(slot, false);
        true
    }

    /// Room left in the open session (0 when none is open), after opening a
    /// newly posted one.
    fn aux_room_left(&self, slot: &mut Slot<M>) -> u64 {
        let (true, Some(state)) = (slot.running, slot.state) else {
            return 0;
        };
        let Some(view) = state.aux(&*self.inner.mem) else {
            return 0;
        };
        if view.seq != slot.aux.seq {
            self.aux_open(slot, view);
        }
        if slot.aux.open {
            slot.aux.room - slot.aux.written
        } else {
            0
        }
    }

    /// Make sure the open session's buffer stream starts with HEADER (and
    /// STATS_NAMES once `names` are known). False if that did not fit.
    fn trace_prologue(&self, n: usize, slot: &mut Slot<M>, names: Option<&[String]>) -> bool {
        let mut buf = [0u8; trace::HEADER_RECORD_LEN];
        if slot.trace_buf != slot.aux.buf {
            let Ok(len) = trace::encode_header(&mut buf, n as u32, host_ns()) else {
                return false;
            };
            if !self.aux_append_locked(slot, &buf[..len]) {
                return false;
            }
            slot.trace_buf = slot.aux.buf;
            slot.names_written = false;
        }
        if let (false, Some(names)) = (slot.names_written, names) {
            let mut rec = vec![0u8; trace::stats_names_len(names)];
            let Ok(len) = trace::encode_stats_names(&mut rec, n as u32, names) else {
                return false;
            };
            if !self.aux_append_locked(slot, &rec[..len]) {
                return false;
            }
            slot.names_written = true;
        }
        true
    }

    fn count_trace(&self, ok: bool, exit: Option<trace::ExitReason>) {
        let c = &self.inner.counters;
        if ok {
            c.aux_records.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = exit {
                c.aux_exits[(r.as_u32() as usize).clamp(1, 6) - 1].fetch_add(1, Ordering::Relaxed);
            }
        } else {
            c.aux_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run `write` on vCPU `n`'s slot when an AUX session with room is open,
    /// with the guest's clock offset (kvm-clock minus its perf clock); count
    /// the record as written or dropped.
    fn with_trace_session(
        &self,
        n: usize,
        exit: Option<trace::ExitReason>,
        write: impl FnOnce(&mut Slot<M>, u64) -> bool,
    ) -> bool {
        let Some(slot_lock) = self.inner.slots.get(n) else {
            return false;
        };
        let mut slot = lock(slot_lock);
        if self.aux_room_left(&mut slot) == 0 {
            return false;
        }
        let clock_offset = slot
            .state
            .map(|s| s.clock_offset(&*self.inner.mem))
            .unwrap_or(0);
        let ok = write(&mut slot, clock_offset);
        self.count_trace(ok, exit);
        ok
    }

    /// Append an EXIT record to vCPU `n`'s trace, if an AUX session is open.
    pub fn trace_exit(&self, n: usize, exit: &TraceExit) -> bool {
        self.with_trace_session(n, Some(exit.reason), |slot, clock_offset| {
            let rec = trace::Exit {
                guest_ns: exit.kvmclock_ns.wrapping_sub(clock_offset),
                rip: exit.rip,
                addr: exit.addr,
                reason: exit.reason,
                size: exit.size,
                host_ns: exit.handling_ns,
            };
            let mut buf = [0u8; trace::EXIT_RECORD_LEN];
            self.trace_prologue(n, slot, None)
                && trace::encode_exit(&mut buf, n as u32, &rec).is_ok()
                && self.aux_append_locked(slot, &buf)
        })
    }

    /// Append a STATS record (after STATS_NAMES for `names`, once per buffer).
    pub fn trace_stats(
        &self,
        n: usize,
        kvmclock_ns: u64,
        names: &[String],
        values: &[u64],
    ) -> bool {
        self.with_trace_session(n, None, |slot, clock_offset| {
            let count = values.len().min(names.len()).min(trace::MAX_STATS);
            let stats: Vec<trace::Stat> = values[..count]
                .iter()
                .enumerate()
                .map(|(i, v)| trace::Stat {
                    id: i as u64,
                    value: *v,
                })
                .collect();
            let mut buf = vec![0u8; trace::stats_len(count)];
            self.trace_prologue(n, slot, Some(&names[..count]))
                && trace::encode_stats(
                    &mut buf,
                    n as u32,
                    kvmclock_ns.wrapping_sub(clock_offset),
                    &stats,
                )
                .is_ok()
                && self.aux_append_locked(slot, &buf)
        })
    }

    fn aux_open(&self, slot: &mut Slot<M>, view: AuxView) {
        slot.aux = AuxSession {
            seq: view.seq,
            ..Default::default()
        };
        if view.buf == 0 {
            return;
        }
        let size = match lock(&self.inner.aux).bufs.get(&view.buf) {
            Some(b) => b.size(),
            None => {
                self.inner
                    .counters
                    .err_state
                    .fetch_add(1, Ordering::Relaxed);
                warn_rate_limited!(
                    slot.log,
                    "pvpmu: AUX session names unknown buffer {}",
                    view.buf
                );
                return;
            }
        };
        if view.room > size || view.wakeup > size {
            self.inner
                .counters
                .err_state
                .fetch_add(1, Ordering::Relaxed);
            warn_rate_limited!(
                slot.log,
                "pvpmu: AUX session room {} or wakeup {} exceeds the buffer ({size})",
                view.room,
                view.wakeup
            );
            return;
        }
        slot.aux = AuxSession {
            seq: view.seq,
            open: true,
            buf: view.buf,
            head: view.head,
            room: view.room,
            wakeup: view.wakeup,
            written: 0,
            flags: 0,
            started: Some(Instant::now()),
        };
    }

    fn aux_maybe_end(&self, slot: &mut Slot<M>, force: bool) {
        let a = slot.aux;
        if !a.open || a.written == 0 {
            return;
        }
        let wake = a.wakeup != 0 && a.written >= a.wakeup;
        let old = a.started.is_some_and(|t| t.elapsed() >= AUX_SESSION_MAX);
        if force || wake || old || a.written == a.room {
            self.aux_end(slot);
        }
    }

    /// End the session: result fields, then `aux_done_seq` with release,
    /// then an interrupt. The driver pairs `aux_done_seq` with an acquire.
    fn aux_end(&self, slot: &mut Slot<M>) {
        let Some(state) = slot.state else {
            return;
        };
        let mem = &*self.inner.mem;
        state.set(mem, host::AUX_WRITTEN, slot.aux.written, Ordering::Relaxed);
        state.set(mem, host::AUX_FLAGS, slot.aux.flags, Ordering::Relaxed);
        state.set(mem, host::AUX_WRITTEN_SEQ, slot.aux.seq, Ordering::Release);
        state.set(mem, host::AUX_DONE_SEQ, slot.aux.seq, Ordering::Release);
        slot.aux.open = false;
        self.interrupt(slot, state);
    }
}

/// The device on the MMIO bus.
pub struct PvpmuMmio<M: GuestMemoryBackend>(Pvpmu<M>);

impl<M: GuestMemoryBackend + Send + Sync + 'static> BusDevice for PvpmuMmio<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data);
    }
}

/// Lay out a sample's callchain as the perf core does: a context marker,
/// the IP, the kernel's return addresses, then (for a kernel sample that
/// came from user space) PERF_CONTEXT_USER, the user IP and user frames.
/// At most [`MAX_CALLCHAIN`] addresses; returns the number of entries.
fn build_callchain(chain: &mut [u64; MAX_CALLCHAIN + 3], s: &HostSample<'_>) -> usize {
    let callers = &s.callers[..s.callers.len().min(MAX_CALLCHAIN - 1)];
    let (kernel, user) = match s.user_start {
        Some(i) if !s.user && i <= callers.len() => callers.split_at(i),
        _ => (callers, &[][..]),
    };
    chain[0] = if s.user {
        context::USER
    } else {
        context::KERNEL
    };
    chain[1] = s.ip;
    let mut n = 2;
    chain[n..n + kernel.len()].copy_from_slice(kernel);
    n += kernel.len();
    if !user.is_empty() {
        chain[n] = context::USER;
        n += 1;
        chain[n..n + user.len()].copy_from_slice(user);
        n += user.len();
    }
    n
}

#[allow(dead_code)]
fn _assert_state_offsets() {
    // The host half starts where the guest half ends.
    const { assert!(state::host::IRQ_SEQ == 0x800) };
}
