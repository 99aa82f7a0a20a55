//! `perfvisor record`'s sampling side: every vCPU is sampled at a fixed rate
//! from the host, whatever the guest runs (no driver, no cooperation), and
//! each sample goes to a channel the recorder's writer drains.
//!
//! With the kick backend a sample has the guest's registers, so it can carry
//! a frame-pointer callchain (walked through the guest's own page tables,
//! [`crate::introspect`]) and the running task (when perfvisor knows the
//! guest kernel's layout, [`KernelInfo`]). With the host-timer backend a
//! sample is only an IP and a mode: no callchain, no task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{kvm_msr_entry, Msrs};
use vm_memory::GuestMemoryMmap;

use crate::host_timer::{LazyHostTimer, Tick};
use crate::introspect::{current_task, walk_guest_stack, GuestAddressSpace, GuestTask, KernelInfo};
use crate::orc::{OrcTable, StartRegs};
use crate::sampler::{boottime_ns, Backend};
use crate::vcpu::{VcpuContext, VcpuHook};

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Samples buffered between the vCPU threads and the writer.
const CHANNEL_DEPTH: usize = 1 << 16;

/// How to record.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// Samples per second per vCPU.
    pub freq: u32,
    /// Walk frame pointers (kick backend only).
    pub callchain: bool,
    /// The sampling mechanism.
    pub backend: Backend,
    /// Where the guest kernel keeps the current task, if known.
    pub kernel_info: Option<KernelInfo>,
    /// The guest kernel's ORC tables: kernel frames are unwound with them
    /// instead of frame pointers (a kernel built with the ORC unwinder has
    /// none to follow).
    pub orc: Option<Arc<OrcTable>>,
}

/// One sample.
#[derive(Debug, Clone)]
pub struct RecordedSample {
    pub vcpu: u8,
    /// Host thread id of the vCPU thread.
    pub vcpu_tid: u32,
    /// Host CLOCK_BOOTTIME, ns.
    pub time_ns: u64,
    pub ip: u64,
    pub user: bool,
    /// The guest task, when identified.
    pub task: Option<GuestTask>,
    /// Return addresses after `ip`, innermost first.
    pub callchain: Vec<u64>,
    /// ns since this vCPU's previous sample.
    pub period: u64,
}

/// Counters shared with the recorder.
#[derive(Debug, Default)]
pub struct RecordStats {
    /// Samples taken, per vCPU.
    pub samples: Vec<AtomicU64>,
    /// Samples dropped because the writer fell behind.
    pub dropped: AtomicU64,
    /// Callchain walks and their total cost in ns.
    pub walks: AtomicU64,
    pub walk_ns: AtomicU64,
    /// Guest memory reads the walks made.
    pub walk_reads: AtomicU64,
}

impl RecordStats {
    fn new(nr: usize) -> Self {
        Self {
            samples: (0..nr).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }
}

/// The per-vCPU hook.
pub struct RecordHook {
    index: u8,
    tid: u32,
    cfg: RecordConfig,
    mem: Arc<GuestMemoryMmap>,
    tx: SyncSender<RecordedSample>,
    stats: Arc<RecordStats>,
    last_ns: u64,
    timer: LazyHostTimer,
}

impl RecordHook {
    fn send(&mut self, s: RecordedSample) {
        match self.tx.try_send(s) {
            Ok(()) => {
                if let Some(c) = self.stats.samples.get(usize::from(self.index)) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn period(&mut self, now: u64) -> u64 {
        let p = match self.last_ns {
            0 => 1_000_000_000 / u64::from(self.cfg.freq.max(1)),
            last => now.saturating_sub(last).max(1),
        };
        self.last_ns = now;
        p
    }

    fn kernel_gs_base(&self, vcpu: &mut VcpuContext<'_>, user: bool, gs_base: u64) -> Option<u64> {
        if !user {
            return Some(gs_base);
        }
        // In user mode the kernel's per-CPU base waits in KERNEL_GS_BASE.
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_KERNEL_GS_BASE,
            ..Default::default()
        }])
        .ok()?;
        (vcpu.fd().get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
    }
}

impl VcpuHook for RecordHook {
    fn on_kick(&mut self, vcpu: &mut VcpuContext<'_>) {
        if self.tid == 0 {
            self.tid = gettid();
        }
        if self.cfg.backend == Backend::HostTimer {
            if let Some(timer) = self.timer.get_or_open() {
                let mut got = Vec::new();
                // Guest-mode ticks only, like the host's `perf record -e
                // cpu-clock:G` (the anchor this command is checked against).
                timer.drain(|tick| {
                    if let Tick::Guest { ip, user, boot_ns } = tick {
                        got.push((ip, user, boot_ns));
                    }
                });
                for (ip, user, t) in got {
                    let period = self.period(t);
                    let s = RecordedSample {
                        vcpu: self.index,
                        vcpu_tid: self.tid,
                        time_ns: t,
                        ip,
                        user,
                        task: None,
                        callchain: Vec::new(),
                        period,
                    };
                    self.send(s);
                }
                return;
            }
        }
        let (Ok(regs), Ok(sregs)) = (vcpu.regs(), vcpu.sregs()) else {
            return;
        };
        let now = boottime_ns();
        let user = sregs.cs.dpl == 3;
        let mut space = GuestAddressSpace::new(&self.mem, sregs.cr3);
        let mut callchain = Vec::new();
        if self.cfg.callchain {
            let t = Instant::now();
            callchain = match (&self.cfg.orc, user) {
                (Some(orc), false) => orc.walk(&mut space, StartRegs::from_regs(&regs)).frames,
                _ => walk_guest_stack(&mut space, regs.rbp, regs.rsp, !user).frames,
            };
            self.stats.walks.fetch_add(1, Ordering::Relaxed);
            self.stats
                .walk_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let task = match self.cfg.kernel_info {
            Some(info) => self
                .kernel_gs_base(vcpu, user, sregs.gs.base)
                .and_then(|b| current_task(&mut space, &info, b)),
            None => None,
        };
        self.stats
            .walk_reads
            .fetch_add(space.reads, Ordering::Relaxed);
        let period = self.period(now);
        let s = RecordedSample {
            vcpu: self.index,
            vcpu_tid: self.tid,
            time_ns: now,
            ip: regs.rip,
            user,
            task,
            callchain,
            period,
        };
        self.send(s);
    }
}

/// What [`crate::vm::Vm::record`] hands back: the samples and the counters.
pub struct Recording {
    pub samples: Receiver<RecordedSample>,
    pub stats: Arc<RecordStats>,
}

/// Build one hook per vCPU and the channel they feed.
pub fn hooks(
    nr: usize,
    cfg: RecordConfig,
    mem: Arc<GuestMemoryMmap>,
) -> (Vec<RecordHook>, Recording) {
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let stats = Arc::new(RecordStats::new(nr));
    let hooks = (0..nr)
        .map(|i| RecordHook {
            index: i as u8,
            tid: 0,
            cfg: cfg.clone(),
            mem: mem.clone(),
            tx: tx.clone(),
            stats: stats.clone(),
            last_ns: 0,
            timer: LazyHostTimer::new("record", i, cfg.freq),
        })
        .collect();
    (hooks, Recording { samples: rx, stats })
}

/// Host thread id of the calling thread.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}
