//! Host-side sampling of guest vCPUs for the pvpmu device.
//!
//! Two backends produce the same samples:
//!
//! - **kick**: a sampler thread kicks each vCPU whose guest has a pvpmu
//!   event active, at the event's rate (capped by `--pmu-freq`). The vCPU
//!   thread's hook reads RIP and CS from kvm_run's sync registers and hands
//!   a [`HostSample`] to the device, which formats and writes the record.
//! - **host timer**: a software `cpu-clock` perf event with `exclude_host`
//!   on each vCPU thread makes the host kernel sample the guest's IP and
//!   mode with no exit to user space. A low-rate kick (every
//!   [`host_timer_flush`]) lets the vCPU thread move those samples from its
//!   host ring into the guest's ring.
//!
//! Either way the guest's ring is written only on the vCPU's own thread,
//! while the vCPU is outside guest mode (see devices::pvpmu).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::pvpmu::trace::ExitReason;
use devices::pvpmu::{HostSample, Pvpmu, TraceExit};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::budget::{CpuCap, SampleBudget};
use crate::end::VmEnd;
use crate::host_timer::{HostTimer, LazyHostTimer, Tick};
use crate::introspect::{is_user_address, walk_guest_stack, Callchain, GuestAddressSpace};
use crate::kvm_stats::VcpuStats;
use crate::orc::{OrcTable, StartRegs};
use crate::vcpu::{ExitInfo, ExitKind, VcpuContext, VcpuHandle, VcpuHook};

/// How often the host-timer backend moves samples into the guest, at most.
/// Each move is a kick, and a host tick that lands while the vCPU thread is
/// out of guest mode has no guest IP and is dropped, so fewer flushes
/// deliver more samples (docs/platform.md, "Host timer: where the ticks
/// land", has the numbers).
const HOST_TIMER_FLUSH_MAX: Duration = Duration::from_millis(20);

/// The host-timer backend's flush interval at `freq` Hz: at most
/// [`HOST_TIMER_FLUSH_MAX`], and short enough that the host ring is at most
/// a quarter full between flushes.
pub fn host_timer_flush(freq: u32) -> Duration {
    let quarter_ring =
        Duration::from_secs(u64::from(crate::host_timer::RING_SAMPLES / 4)) / freq.max(1);
    HOST_TIMER_FLUSH_MAX.min(quarter_ring)
}
/// How often the sampler re-reads the guest's kvm-clock offset.
const CLOCK_RESYNC: Duration = Duration::from_secs(1);
/// Ticks the sampler may fall behind before it drops them.
const MAX_CATCH_UP: u32 = 8;
/// How often the AUX trace gets a STATS record.
const STATS_INTERVAL: Duration = Duration::from_millis(100);
/// Poll period while no guest event is active.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// How long a vCPU keeps its cadence after its event went inactive (the
/// guest task was switched out, or the driver throttles): a task that comes
/// back within this time is sampled on the old cadence, without a fresh
/// interval's wait and the idle poll's delay.
const PAUSE_GRACE: Duration = Duration::from_millis(50);
/// Most of one CPU the sampler thread may use (it sleeps off the excess).
const SAMPLER_CPU_SHARE: f64 = 0.5;
/// Re-check period while a due kick waits for the previous one's hook.
const PENDING_POLL: Duration = Duration::from_micros(50);

/// Which mechanism takes samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Kick the vCPU out of KVM_RUN and read its registers.
    Kick,
    /// A host cpu-clock perf event with exclude_host on the vCPU thread.
    HostTimer,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kick => "kick",
            Backend::HostTimer => "host-timer",
        })
    }
}

/// Host monotonic-since-boot nanoseconds (CLOCK_BOOTTIME, the time base
/// kvm-clock follows).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// kvm-clock = CLOCK_BOOTTIME + offset, refreshed from KVM_GET_CLOCK.
#[derive(Debug, Default)]
pub struct GuestClock {
    offset: AtomicI64,
}

impl GuestClock {
    /// Re-read the VM's kvm-clock and store its offset from CLOCK_BOOTTIME.
    pub fn resync(&self, vm: &VmFd) {
        let before = boottime_ns();
        if let Ok(c) = vm.get_clock() {
            let after = boottime_ns();
            let host = before / 2 + after / 2;
            self.offset
                .store(c.clock as i64 - host as i64, Ordering::Relaxed);
        }
    }

    /// kvm-clock at host boottime `boot_ns`.
    pub fn kvmclock_at(&self, boot_ns: u64) -> u64 {
        (boot_ns as i64).wrapping_add(self.offset.load(Ordering::Relaxed)) as u64
    }
}

/// The per-vCPU hook: takes a sample on every kick (kick backend) or moves
/// the host timer's samples (host-timer backend), and keeps the device's
/// interrupt and AUX timers going.
pub struct SampleHook {
    dev: Pvpmu<GuestMemoryMmap>,
    index: usize,
    clock: Arc<GuestClock>,
    backend: Backend,
    freq: u32,
    timer: LazyHostTimer,
    exits: Option<ExitTrace>,
    stats: Option<VcpuStats>,
    stats_failed: bool,
    stats_values: Vec<u64>,
    last_stats: Option<Instant>,
    /// Host timer: recent exits to the VMM, to place ticks taken in them.
    windows: ExitWindows,
    /// The VM-wide sample budget (pvpmu runs; `perfvisor record` has none).
    budget: Option<Arc<SampleBudget>>,
    /// Host timer: keeps the guest event's rate when it asks for less than
    /// the host timer's.
    gate: RateGate,
    tick_counts: TickCounts,
    /// Host timer: halted time, which it cannot tick in.
    idle: IdleClock,
    /// The guest kernel's ORC tables, for kernel callchains of a kernel
    /// built without frame pointers; None walks frame pointers.
    orc: Option<Arc<OrcTable>>,
}

/// The host timer ticks only while the vCPU thread runs, so a halted vCPU
/// (the guest's idle task in HLT) gets no ticks at all, where a kick or a
/// real PMU would sample the idle loop. The thread's scheduler times
/// (/proc/thread-self/schedstat: ns on a CPU, ns waiting for one) tell how
/// long it was blocked between two drains, which is the time the guest was
/// halted (the VMM's own blocking is short). That time is given to the
/// idle task as ticks at the host rate, at the RIP where the vCPU was last
/// found halted, placed in the gaps the real ticks left.
#[derive(Default)]
struct IdleClock {
    /// (boottime, run ns, wait ns) at the last drain.
    last: Option<(u64, u64, u64)>,
    /// Where a kick last found the vCPU halted.
    halt_rip: Option<u64>,
    /// Halted ns not yet given out (less than a tick, or no gap for it).
    carry_ns: u64,
    synthesized: u64,
}

impl IdleClock {
    /// Halted ns since the last call (0 the first time, or without
    /// schedstat).
    fn halted_since_last(&mut self, now: u64) -> u64 {
        let Some((run, wait)) = thread_schedstat() else {
            return 0;
        };
        let Some((t0, run0, wait0)) = self.last.replace((now, run, wait)) else {
            return 0;
        };
        now.saturating_sub(t0)
            .saturating_sub(run.saturating_sub(run0))
            .saturating_sub(wait.saturating_sub(wait0))
    }

    /// Idle tick times for `halted` ns in the gaps of `ticks` (sorted host
    /// times) between `from` and `to`, `tick` apart, at most `max`.
    fn place(
        &mut self,
        halted: u64,
        ticks: &[u64],
        from: u64,
        to: u64,
        tick: u64,
        max: usize,
    ) -> Vec<u64> {
        let tick = tick.max(1);
        let mut want = halted.saturating_add(self.carry_ns) / tick;
        let mut out = Vec::new();
        let mut prev = from;
        for &t in ticks.iter().chain(std::iter::once(&to)) {
            let mut at = prev.saturating_add(tick);
            while want > 0 && out.len() < max && at.saturating_add(tick / 2) <= t {
                out.push(at);
                want -= 1;
                at = at.saturating_add(tick);
            }
            prev = prev.max(t);
        }
        // What found no gap is carried, but never more than a tick: the
        // halted time it stands for has passed.
        self.carry_ns = if want > 0 {
            tick.min(halted.saturating_add(self.carry_ns))
        } else {
            halted.saturating_add(self.carry_ns) % tick
        };
        self.synthesized += out.len() as u64;
        out
    }
}

/// The calling thread's (run ns, run-queue wait ns).
fn thread_schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Host timer ticks by where they landed (logged when the vCPU ends).
#[derive(Default, Debug)]
struct TickCounts {
    guest: u64,
    in_exits: u64,
    dropped: u64,
}

/// A stretch of time in which the guest was stopped at `rip` while the
/// VMM handled an exit (CLOCK_BOOTTIME ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExitWindow {
    start_ns: u64,
    end_ns: u64,
    rip: u64,
}

/// The last [`ExitWindows::CAPACITY`] exit windows, oldest first.
#[derive(Default)]
struct ExitWindows(std::collections::VecDeque<ExitWindow>);

impl ExitWindows {
    /// More than a flush interval's worth of exits for a guest that exits
    /// to the VMM every few tens of microseconds.
    const CAPACITY: usize = 512;

    fn push(&mut self, w: ExitWindow) {
        if self.0.len() == Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(w);
    }

    /// The guest RIP during an exit that contains `t`, looking in `current`
    /// (the exit being handled) too.
    fn find(&self, t: u64, current: Option<ExitWindow>) -> Option<u64> {
        if let Some(c) = current.filter(|c| c.start_ns <= t) {
            return Some(c.rip);
        }
        let i = self.0.partition_point(|w| w.start_ns <= t);
        let w = self.0.get(i.checked_sub(1)?)?;
        (t <= w.end_ns).then_some(w.rip)
    }
}

/// Thins host timer ticks to the guest event's own rate when that is lower
/// than the host timer's: a tick is taken when it is due on a cadence of
/// `interval`, within half a host tick (timer jitter), else dropped.
#[derive(Default, Debug)]
struct RateGate {
    next_ns: u64,
}

impl RateGate {
    fn admit(&mut self, t: u64, interval: u64, tick: u64) -> bool {
        if interval <= tick {
            self.next_ns = 0;
            return true;
        }
        if t.saturating_add(tick / 2) < self.next_ns {
            return false;
        }
        self.next_ns = self.next_ns.saturating_add(interval);
        if self.next_ns <= t {
            // First tick, or a gap of more than an interval: start over.
            self.next_ns = t.saturating_add(interval);
        }
        true
    }
}

/// Called on every exit with the device and vCPU index (the AUX exit trace).
pub type ExitTrace = Box<dyn FnMut(&Pvpmu<GuestMemoryMmap>, usize, &ExitInfo) + Send>;

impl SampleHook {
    /// A hook for vCPU `index`. With the host-timer backend the event is
    /// opened lazily on the first kick, because it must belong to the vCPU
    /// thread.
    pub fn new(
        dev: Pvpmu<GuestMemoryMmap>,
        index: usize,
        clock: Arc<GuestClock>,
        backend: Backend,
        freq: u32,
    ) -> Self {
        Self {
            dev,
            index,
            clock,
            backend,
            freq,
            timer: LazyHostTimer::new("pvpmu", index, freq),
            budget: None,
            exits: None,
            stats: None,
            stats_failed: false,
            stats_values: Vec::new(),
            last_stats: None,
            windows: ExitWindows::default(),
            gate: RateGate::default(),
            tick_counts: TickCounts::default(),
            idle: IdleClock::default(),
            orc: None,
        }
    }

    /// Kernel callchains unwound with the guest kernel's ORC tables.
    pub fn with_orc(mut self, orc: Option<Arc<OrcTable>>) -> Self {
        self.orc = orc;
        self
    }

    /// Host-timer ticks count against `budget` before they reach the
    /// guest (kicked samples are counted by the sampler thread).
    pub fn with_budget(mut self, budget: Arc<SampleBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Also run `f` on every exit.
    pub fn with_exit_trace(mut self, f: ExitTrace) -> Self {
        self.exits = Some(f);
        self
    }

    fn host_timer(&mut self) -> Option<&mut HostTimer> {
        if self.backend != Backend::HostTimer {
            return None;
        }
        self.timer.get_or_open()
    }
}

impl SampleHook {
    /// A STATS record from KVM's binary statistics (opened on first use).
    fn snapshot_stats(&mut self, vcpu: &mut VcpuContext<'_>, kvmclock_ns: u64) {
        if self.stats.is_none() && !self.stats_failed {
            match VcpuStats::open(vcpu.fd()) {
                Ok(s) => self.stats = Some(s),
                Err(e) => {
                    self.stats_failed = true;
                    log::warn!(
                        "pvpmu: vCPU {}: no KVM statistics for the trace ({e})",
                        self.index
                    );
                }
            }
        }
        if let Some(stats) = self.stats.as_mut() {
            if stats.read(&mut self.stats_values).is_ok() {
                self.dev
                    .trace_stats(self.index, kvmclock_ns, stats.names(), &self.stats_values);
            }
        }
    }
}

impl SampleHook {
    /// Move the host timer's ticks since the last drain into the guest's
    /// ring. `current` is the exit being handled now, if the ticks may
    /// reach into it.
    fn drain_host_timer(&mut self, current: Option<ExitWindow>) {
        let n = self.index;
        let interval = self.dev.wanted_interval(n).unwrap_or(0);
        let tick_ns = 1_000_000_000 / u64::from(self.freq.max(1));
        let now = boottime_ns();
        let from = self.idle.last.map_or(now, |l| l.0);
        let halted = self.idle.halted_since_last(now);
        let (windows, counts) = (&self.windows, &mut self.tick_counts);
        let Some(timer) = self.timer.get() else {
            return;
        };
        // (host time, ip, user, idle), oldest first.
        let mut batch: Vec<(u64, u64, bool, bool)> = Vec::new();
        timer.drain(|tick| match tick {
            Tick::Guest { ip, user, boot_ns } => {
                counts.guest += 1;
                batch.push((boot_ns, ip, user, false));
            }
            Tick::HostUser { boot_ns } => match windows.find(boot_ns, current) {
                Some(rip) => {
                    counts.in_exits += 1;
                    batch.push((boot_ns, rip, is_user_address(rip), false));
                }
                None => counts.dropped += 1,
            },
            Tick::HostKernel { .. } => counts.dropped += 1,
        });
        if let Some(rip) = self.idle.halt_rip.filter(|_| halted >= tick_ns) {
            let times: Vec<u64> = batch.iter().map(|b| b.0).collect();
            let max = crate::host_timer::RING_SAMPLES as usize;
            for t in self.idle.place(halted, &times, from, now, tick_ns, max) {
                batch.push((t, rip, false, true));
            }
            batch.sort_by_key(|b| b.0);
        }
        // The ticks waited in the host ring: the guest's switch log says
        // which task ran at each.
        let kvmclock: Vec<u64> = batch.iter().map(|b| self.clock.kvmclock_at(b.0)).collect();
        let tasks = self.dev.tick_tasks(n, &kvmclock);
        for ((boot_ns, ip, user, idle), (kvmclock_ns, task)) in
            batch.into_iter().zip(kvmclock.into_iter().zip(tasks))
        {
            if !self.gate.admit(boot_ns, interval, tick_ns) {
                continue;
            }
            if self.budget.as_ref().is_some_and(|b| !b.take()) {
                continue;
            }
            let s = HostSample {
                ip,
                user,
                kvmclock_ns,
                host_ns: boot_ns,
                callers: &[],
                user_start: None,
                idle,
                task,
            };
            self.dev.record_sample(n, &s);
        }
    }

    /// One sample from the vCPU's registers, now, with the guest's
    /// callchain when the event asks for one: kernel frames from the
    /// kernel's ORC tables when it has them, else frame pointers, then
    /// the user frames.
    fn register_sample(&mut self, vcpu: &mut VcpuContext<'_>) {
        let (Ok(regs), Ok(sregs)) = (vcpu.regs(), vcpu.sregs()) else {
            return;
        };
        let n = self.index;
        let now = boottime_ns();
        let user = sregs.cs.dpl == 3;
        let chain = if self.dev.wants_callchain(n) {
            let mut space = GuestAddressSpace::new(self.dev.memory(), sregs.cr3);
            match (&self.orc, user) {
                (Some(orc), false) => orc.walk(&mut space, StartRegs::from_regs(&regs)),
                _ => walk_guest_stack(&mut space, regs.rbp, regs.rsp, !user),
            }
        } else {
            Callchain::default()
        };
        let s = HostSample {
            ip: regs.rip,
            user,
            kvmclock_ns: self.clock.kvmclock_at(now),
            host_ns: now,
            callers: &chain.frames,
            user_start: chain.user_start,
            idle: false,
            task: None,
        };
        self.dev.record_sample(n, &s);
    }
}

impl VcpuHook for SampleHook {
    fn on_kick(&mut self, vcpu: &mut VcpuContext<'_>) {
        let n = self.index;
        if self.backend == Backend::HostTimer && self.dev.wants_callchain(n) {
            // The event wants callchains, so the sampler kicks at its rate
            // and each kick is a sample with registers; ticks taken
            // meanwhile would be second samples of the same time.
            if let Some(t) = self.timer.get() {
                t.drain(|_| {});
            }
            self.register_sample(vcpu);
        } else if self.host_timer().is_some() {
            // This exit, so far: ticks in it since KVM_RUN returned belong
            // to the RIP the guest stopped at.
            let now = boottime_ns();
            let regs = vcpu.regs().ok();
            let current = regs.map(|r| ExitWindow {
                start_ns: now.saturating_sub(vcpu.since_exit().as_nanos() as u64),
                end_ns: u64::MAX,
                rip: r.rip,
            });
            // A kick that found the vCPU halted tells where its idle task
            // halts.
            let halted = vcpu
                .fd()
                .get_mp_state()
                .is_ok_and(|m| m.mp_state == kvm_bindings::KVM_MP_STATE_HALTED);
            if let (true, Some(r)) = (halted, regs) {
                self.idle.halt_rip = Some(r.rip);
            }
            self.drain_host_timer(current);
        } else {
            self.register_sample(vcpu);
        }
        self.dev.flush(n);
    }

    fn on_exit(&mut self, vcpu: &mut VcpuContext<'_>, exit: &ExitInfo) {
        if let Some(f) = self.exits.as_mut() {
            f(&self.dev, self.index, exit);
        }
        let window = self.timer.is_open() && exit.rip != 0;
        let aux = self.dev.aux_wanted(self.index);
        // The driver's FLUSH (host timer, at the event's del): the ticks
        // in the host ring are this event's, so they move now, while the
        // state page still describes it.
        let flush = self.timer.is_open() && self.dev.take_flush(self.index);
        if !window && !aux && !flush {
            return;
        }
        // One clock read serves the exit window and the trace record.
        let now = boottime_ns();
        if window {
            self.windows.push(ExitWindow {
                start_ns: now.saturating_sub(exit.handling.as_nanos() as u64),
                end_ns: now,
                rip: exit.rip,
            });
        }
        if flush {
            self.drain_host_timer(None);
        }
        if !aux {
            return;
        }
        let reason = match exit.kind {
            ExitKind::IoIn => ExitReason::IoIn,
            ExitKind::IoOut => ExitReason::IoOut,
            ExitKind::MmioRead => ExitReason::MmioRead,
            ExitKind::MmioWrite => ExitReason::MmioWrite,
            ExitKind::Kick => ExitReason::Kick,
            ExitKind::Other => ExitReason::Other,
        };
        let kvmclock_ns = self.clock.kvmclock_at(now);
        self.dev.trace_exit(
            self.index,
            &TraceExit {
                reason,
                rip: exit.rip,
                addr: exit.addr,
                size: exit.size,
                handling_ns: exit.handling.as_nanos() as u64,
                kvmclock_ns,
            },
        );
        if self
            .last_stats
            .is_none_or(|t| t.elapsed() >= STATS_INTERVAL)
        {
            self.last_stats = Some(Instant::now());
            self.snapshot_stats(vcpu, kvmclock_ns);
        }
    }
}

impl Drop for SampleHook {
    fn drop(&mut self) {
        if self.timer.is_open() {
            let c = &self.tick_counts;
            log::info!(
                "pvpmu: vCPU {}: host timer ticks: {} in guest mode, {} in exits to the VMM \
                 (at the exit's RIP), {} dropped (host kernel: guest RIP unknown), {} for \
                 halted time (idle task)",
                self.index,
                c.guest,
                c.in_exits,
                c.dropped,
                self.idle.synthesized
            );
        }
    }
}

/// When vCPUs are due for a sample.
pub enum Schedule {
    /// As the pvpmu device's guest events ask (only vCPUs with an active event).
    Device(Pvpmu<GuestMemoryMmap>),
    /// Every vCPU at this interval, whatever the guest does (`perfvisor record`).
    Fixed(Duration),
}

/// The sampler thread: decides when each vCPU is kicked.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Start kicking `vcpus` on `schedule` until `exit` says the VM is ending.
    pub fn start(
        schedule: Schedule,
        vcpus: Vec<Arc<VcpuHandle>>,
        backend: Backend,
        clock: Arc<GuestClock>,
        vm: Arc<VmFd>,
        end: Arc<VmEnd>,
        budget: Option<Arc<SampleBudget>>,
    ) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sampler".into())
            .stack_size(crate::THREAD_STACK)
            .spawn(move || {
                let stopping = move || stop2.load(Ordering::Acquire) || end.stopping();
                run(schedule, vcpus, backend, clock, vm, stopping, budget);
            })?;
        Ok(Sampler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    schedule: Schedule,
    vcpus: Vec<Arc<VcpuHandle>>,
    backend: Backend,
    clock: Arc<GuestClock>,
    vm: Arc<VmFd>,
    stopping: impl Fn() -> bool,
    budget: Option<Arc<SampleBudget>>,
) {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let flush = host_timer_flush(match &schedule {
        Schedule::Device(dev) => dev.max_freq(),
        Schedule::Fixed(interval) => (1_000_000_000 / interval.as_nanos().max(1)) as u32,
    });
    let start = Instant::now();
    let mut cadence: Vec<Option<Cadence>> = vec![None; vcpus.len()];
    let mut last_resync = start;
    let mut cpu_cap = CpuCap::new(SAMPLER_CPU_SHARE);
    clock.resync(&vm);
    while !stopping() {
        let now = Instant::now();
        if now.duration_since(last_resync) >= CLOCK_RESYNC {
            clock.resync(&vm);
            last_resync = now;
        }
        let mut sleep_until = now + IDLE_POLL;
        for (i, h) in vcpus.iter().enumerate() {
            let wanted = match &schedule {
                Schedule::Device(dev) => dev.wanted_interval(i).map(Duration::from_nanos),
                Schedule::Fixed(interval) => Some(*interval),
            };
            // The host timer samples by itself; the kick only moves them.
            // An event that wants callchains is sampled with kicks.
            let (wanted, is_sample_kick) = match (backend, &schedule) {
                (Backend::Kick, _) => (wanted, true),
                (Backend::HostTimer, Schedule::Device(dev)) if dev.wants_callchain(i) => {
                    (wanted, true)
                }
                (Backend::HostTimer, _) => (wanted.map(|_| flush), false),
            };
            let c = &mut cadence[i];
            match (wanted, c.as_mut()) {
                (Some(interval), Some(c)) if c.interval == interval => c.paused_at = None,
                (Some(interval), _) => {
                    *c = Some(Cadence {
                        interval,
                        due: now + interval,
                        sent: now,
                        paused_at: None,
                    })
                }
                (None, Some(p)) => {
                    let since = *p.paused_at.get_or_insert(now);
                    if now.duration_since(since) > PAUSE_GRACE {
                        *c = None;
                    }
                }
                (None, None) => {}
            }
            let Some(c) = c.as_mut() else {
                continue;
            };
            if c.due <= now {
                if c.paused_at.is_some() {
                    // Inactive: the ticks up to now are due to no one.
                    let missed = (now - c.due).as_nanos() / c.interval.as_nanos().max(1);
                    c.due += c.interval * (missed as u32).saturating_add(1);
                } else if h.kick_pending() && now.saturating_duration_since(c.sent) < c.interval * 2
                {
                    // A kick now would merge with the unserved one and
                    // the guest would get one sample for two ticks: wait
                    // for the hook, then send this tick's kick. (After two
                    // intervals, send it anyway: the vCPU may have missed
                    // the signal between its checks.)
                } else if is_sample_kick && budget.as_ref().is_some_and(|b| !b.take()) {
                    // Over the VM's budget: this tick is skipped (counted).
                    c.due += c.interval;
                } else {
                    let _ = h.kick();
                    c.sent = now;
                    c.due += c.interval;
                }
                // Keep the cadence (late ticks are caught up one kick at a
                // time); only after falling far behind start over rather
                // than kick in a long burst.
                if now.saturating_duration_since(c.due) > c.interval * MAX_CATCH_UP {
                    c.due = now + c.interval;
                }
            }
            // Still due: the unserved kick's hook or the next catch-up kick.
            sleep_until = sleep_until.min(c.due.max(now + PENDING_POLL));
        }
        if let Some(d) = cpu_cap.check() {
            // Over its CPU share: the kicks due meanwhile catch up (at most
            // MAX_CATCH_UP) or are skipped.
            std::thread::sleep(d);
        }
        let now = Instant::now();
        if sleep_until > now {
            precise_sleep(sleep_until - now);
        }
    }
    if cpu_cap.throttled() > Duration::ZERO {
        log::info!(
            "pvpmu sampler: slept {:?} to keep within {:.0}% of a CPU",
            cpu_cap.throttled(),
            SAMPLER_CPU_SHARE * 100.0
        );
    }
}

/// One vCPU's sampling clock.
#[derive(Clone, Copy)]
struct Cadence {
    interval: Duration,
    /// When the next kick is due.
    due: Instant,
    /// When the last kick was sent.
    sent: Instant,
    /// Since when the guest's event is inactive (ticks pass, no kicks).
    paused_at: Option<Instant>,
}

/// Sleep with sub-millisecond precision (the thread's timer slack is set to
/// 1 ns in [`run`]; the default 50 us would skew a 4 kHz cadence).
fn precise_sleep(d: Duration) {
    std::thread::sleep(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_timer_flush_keeps_the_host_ring_a_quarter_full_at_most() {
        assert_eq!(host_timer_flush(1000), HOST_TIMER_FLUSH_MAX);
        assert_eq!(host_timer_flush(0), HOST_TIMER_FLUSH_MAX);
        for freq in [1000, 10_000, 50_000, 100_000] {
            let held = host_timer_flush(freq).as_secs_f64() * f64::from(freq);
            assert!(
                held <= f64::from(crate::host_timer::RING_SAMPLES) / 4.0,
                "{freq} Hz: {held} samples between flushes"
            );
        }
        assert!(host_timer_flush(100_000) >= Duration::from_millis(3));
    }

    /// Jittery host ticks every `tick` ns for `secs`; how many the gate takes.
    fn admitted(interval: u64, tick: u64, secs: u64) -> u64 {
        let mut g = RateGate::default();
        let n = secs * 1_000_000_000 / tick;
        (1..=n)
            .filter(|i| {
                // +-10% jitter, deterministic.
                let jitter = (i * 7919 % 21) as i64 - 10;
                let t = (i * tick) as i64 + jitter * tick as i64 / 100;
                g.admit(t as u64, interval, tick)
            })
            .count() as u64
    }

    #[test]
    fn rate_gate_keeps_the_guest_events_rate() {
        let ms = 1_000_000;
        // At or above the host rate: every tick.
        assert_eq!(admitted(ms, ms, 2), 2000);
        assert_eq!(admitted(ms / 4, ms, 2), 2000);
        // Below it: the guest's rate, whatever the jitter (+-1 for the
        // ends of the 2 s).
        let near = |n: u64, want: u64| n.abs_diff(want) <= 1;
        assert!(near(admitted(10 * ms, ms, 2), 200));
        assert!(near(admitted(4 * ms, ms, 2), 500));
        let n = admitted(1_111_111, ms, 2);
        assert!((1790..=1810).contains(&n), "900 Hz from 1 kHz: {n}");
    }

    #[test]
    fn rate_gate_starts_over_after_a_gap() {
        let mut g = RateGate::default();
        assert!(g.admit(1_000, 100, 10));
        assert!(!g.admit(1_050, 100, 10));
        assert!(g.admit(1_100, 100, 10));
        // A long pause (event off): the next tick is taken at once.
        assert!(g.admit(9_000, 100, 10));
        assert!(!g.admit(9_010, 100, 10));
    }

    #[test]
    fn halted_time_fills_the_gaps_between_ticks() {
        let mut c = IdleClock::default();
        // Ticks every 10 until 50, then nothing until 100 (halted), then
        // ticks again: 4.5 ticks of halted time fit the gap at 10 apart.
        let ticks = [10, 20, 30, 40, 50, 100, 110];
        let got = c.place(45, &ticks, 0, 120, 10, 100);
        assert_eq!(got, vec![60, 70, 80, 90]);
        assert_eq!(c.carry_ns, 5);
        // The next drain's half tick completes one more.
        assert_eq!(c.place(5, &[], 120, 140, 10, 100), vec![130]);
        // No gap: nothing invented, at most a tick carried.
        let dense: Vec<u64> = (1..=10).map(|i| i * 10).collect();
        assert!(c.place(1000, &dense, 0, 100, 10, 100).is_empty());
        assert_eq!(c.carry_ns, 10);
        // The cap holds whatever the halted time says.
        let mut c = IdleClock::default();
        assert_eq!(c.place(u64::MAX, &[], 0, u64::MAX, 1, 64).len(), 64);
    }

    #[test]
    fn exit_windows_place_ticks_at_the_exits_rip() {
        let mut w = ExitWindows::default();
        w.push(ExitWindow {
            start_ns: 100,
            end_ns: 200,
            rip: 0xa,
        });
        w.push(ExitWindow {
            start_ns: 300,
            end_ns: 310,
            rip: 0xb,
        });
        assert_eq!(w.find(150, None), Some(0xa));
        assert_eq!(w.find(200, None), Some(0xa));
        assert_eq!(w.find(250, None), None, "between exits the guest ran");
        assert_eq!(w.find(50, None), None);
        assert_eq!(w.find(305, None), Some(0xb));
        let cur = ExitWindow {
            start_ns: 400,
            end_ns: u64::MAX,
            rip: 0xc,
        };
        assert_eq!(w.find(450, Some(cur)), Some(0xc));
        assert_eq!(w.find(305, Some(cur)), Some(0xb));
        assert_eq!(w.find(350, Some(cur)), None);
        for i in 0..2 * ExitWindows::CAPACITY as u64 {
            w.push(ExitWindow {
                start_ns: 1000 + 10 * i,
                end_ns: 1005 + 10 * i,
                rip: i,
            });
        }
        assert_eq!(w.0.len(), ExitWindows::CAPACITY);
        assert_eq!(w.find(150, None), None, "old windows are forgotten");
    }
}
