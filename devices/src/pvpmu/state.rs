//! The per-vCPU shared state page (docs/pvpmu.md, "The shared state page").
//!
//! The guest writes the first half, the host the second. The host reads
//! every guest field once per use into a [`GuestView`], through vm-memory's
//! checked accessors, and treats the values as untrusted data.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Guest-written fields.
pub mod guest {
    pub const VERSION: u64 = 0x000;
    pub const ACTIVE: u64 = 0x004;
    pub const GEN: u64 = 0x008;
    pub const FLAGS: u64 = 0x00c;
    pub const SAMPLE_TYPE: u64 = 0x010;
    pub const READ_FORMAT: u64 = 0x018;
    pub const SAMPLE_ID_ALL: u64 = 0x020;
    pub const PERIOD: u64 = 0x028;
    pub const ID: u64 = 0x030;
    pub const STREAM_ID: u64 = 0x038;
    pub const CPU: u64 = 0x040;
    pub const PID_FILTER: u64 = 0x044;
    pub const CLOCK_OFFSET: u64 = 0x048;
    pub const CURRENT_TASK_GPA: u64 = 0x050;
    pub const PAGE_OFFSET: u64 = 0x058;
    pub const TASK_PID_OFF: u64 = 0x060;
    pub const TASK_TGID_OFF: u64 = 0x064;
    pub const THROTTLED: u64 = 0x068;
    pub const KIMAGE_VIRT: u64 = 0x070;
    pub const KIMAGE_PHYS: u64 = 0x078;
    pub const ACTIVE_SINCE: u64 = 0x080;
    pub const AUX_SEQ: u64 = 0x100;
    pub const AUX_BUF: u64 = 0x108;
    pub const AUX_HEAD: u64 = 0x110;
    pub const AUX_ROOM: u64 = 0x118;
    pub const AUX_WAKEUP: u64 = 0x120;
    pub const SWITCH_SEQ: u64 = 0x128;
    pub const SWITCH_LOG: u64 = 0x200;
    /// Entries in the switch log (16 bytes each, up to the host half).
    pub const SWITCH_LOG_LEN: u64 = 96;
}

/// Host-written fields.
pub mod host {
    pub const IRQ_SEQ: u64 = 0x800;
    pub const SAMPLES: u64 = 0x808;
    pub const LOST: u64 = 0x810;
    pub const AUX_DONE_SEQ: u64 = 0x818;
    pub const AUX_WRITTEN: u64 = 0x820;
    pub const AUX_FLAGS: u64 = 0x828;
    pub const AUX_WRITTEN_SEQ: u64 = 0x830;
}

/// FLAGS bits.
pub mod flags {
    pub const EXCLUDE_USER: u32 = 1 << 0;
    pub const EXCLUDE_KERNEL: u32 = 1 << 1;
    pub const FREQ: u32 = 1 << 2;
}

/// A snapshot of the guest's event fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventView {
    pub gen: u32,
    pub flags: u32,
    pub sample_type: u64,
    pub read_format: u64,
    pub sample_id_all: bool,
    pub period: u64,
    pub id: u64,
    pub stream_id: u64,
    pub cpu: u32,
    /// Nonzero: a per-task event (the task's tgid).
    pub pid_filter: u32,
    pub clock_offset: u64,
    pub current_task_gpa: u64,
    pub page_offset: u64,
    pub task_pid_off: u32,
    pub task_tgid_off: u32,
    pub throttled: bool,
    pub kimage_virt: u64,
    pub kimage_phys: u64,
    /// The guest's perf clock at the event's add (0: not given).
    pub active_since: u64,
}

/// The guest's AUX session fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuxView {
    pub seq: u64,
    pub buf: u64,
    pub head: u64,
    pub room: u64,
    pub wakeup: u64,
}

/// One vCPU's state page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePage(pub GuestAddress);

impl StatePage {
    fn at(&self, off: u64) -> GuestAddress {
        GuestAddress(self.0 .0 + off)
    }

    fn u32<M: GuestMemoryBackend>(&self, mem: &M, off: u64) -> Option<u32> {
        mem.read_obj::<u32>(self.at(off)).ok()
    }

    fn u64<M: GuestMemoryBackend>(&self, mem: &M, off: u64) -> Option<u64> {
        mem.read_obj::<u64>(self.at(off)).ok()
    }

    /// `active`, with acquire: the guest publishes it with release after the
    /// event fields, so the fields read after this are the ones it meant.
    pub fn active<M: GuestMemoryBackend>(&self, mem: &M) -> bool {
        mem.load::<u32>(self.at(guest::ACTIVE), Ordering::Acquire)
            .map(|v| v != 0)
            .unwrap_or(false)
    }

    /// Read the event fields (call after [`StatePage::active`] returned true).
    pub fn event<M: GuestMemoryBackend>(&self, mem: &M) -> Option<EventView> {
        Some(EventView {
            gen: self.u32(mem, guest::GEN)?,
            flags: self.u32(mem, guest::FLAGS)?,
            sample_type: self.u64(mem, guest::SAMPLE_TYPE)?,
            read_format: self.u64(mem, guest::READ_FORMAT)?,
            sample_id_all: self.u64(mem, guest::SAMPLE_ID_ALL)? != 0,
            period: self.u64(mem, guest::PERIOD)?,
            id: self.u64(mem, guest::ID)?,
            stream_id: self.u64(mem, guest::STREAM_ID)?,
            cpu: self.u32(mem, guest::CPU)?,
            pid_filter: self.u32(mem, guest::PID_FILTER)?,
            clock_offset: self.u64(mem, guest::CLOCK_OFFSET)?,
            current_task_gpa: self.u64(mem, guest::CURRENT_TASK_GPA)?,
            page_offset: self.u64(mem, guest::PAGE_OFFSET)?,
            task_pid_off: self.u32(mem, guest::TASK_PID_OFF)?,
            task_tgid_off: self.u32(mem, guest::TASK_TGID_OFF)?,
            throttled: self.u32(mem, guest::THROTTLED)? != 0,
            kimage_virt: self.u64(mem, guest::KIMAGE_VIRT)?,
            kimage_phys: self.u64(mem, guest::KIMAGE_PHYS)?,
            active_since: self.u64(mem, guest::ACTIVE_SINCE)?,
        })
    }

    /// Read the AUX session, `aux_seq` first with acquire (the guest bumps it
    /// with release after the session fields).
    pub fn aux<M: GuestMemoryBackend>(&self, mem: &M) -> Option<AuxView> {
        let seq = mem
            .load::<u64>(self.at(guest::AUX_SEQ), Ordering::Acquire)
            .ok()?;
        Some(AuxView {
            seq,
            buf: self.u64(mem, guest::AUX_BUF)?,
            head: self.u64(mem, guest::AUX_HEAD)?,
            room: self.u64(mem, guest::AUX_ROOM)?,
            wakeup: self.u64(mem, guest::AUX_WAKEUP)?,
        })
    }

    /// The guest's context-switch log, oldest first: (time in the guest's
    /// perf clock, pid, tid) of each task that left the CPU, and whether
    /// older entries were overwritten before this read (more than
    /// [`guest::SWITCH_LOG_LEN`] switches since `since`). `switch_seq`
    /// first, with acquire. At most SWITCH_LOG_LEN entries are read.
    pub fn switch_log<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        since: u64,
    ) -> (u64, Vec<(u64, u32, u32)>, bool) {
        let Ok(seq) = mem.load::<u64>(self.at(guest::SWITCH_SEQ), Ordering::Acquire) else {
            return (since, Vec::new(), false);
        };
        let n = seq.min(guest::SWITCH_LOG_LEN);
        let overrun = seq.wrapping_sub(since) > guest::SWITCH_LOG_LEN;
        let entries = (seq - n..seq)
            .filter_map(|i| {
                let at = guest::SWITCH_LOG + (i % guest::SWITCH_LOG_LEN) * 16;
                Some((
                    self.u64(mem, at)?,
                    self.u32(mem, at + 8)?,
                    self.u32(mem, at + 12)?,
                ))
            })
            .collect();
        (seq, entries, overrun)
    }

    /// Only `clock_offset` (for AUX trace timestamps).
    pub fn clock_offset<M: GuestMemoryBackend>(&self, mem: &M) -> u64 {
        self.u64(mem, guest::CLOCK_OFFSET).unwrap_or(0)
    }

    /// Only the current `aux_buf` (checked before every AUX write).
    pub fn aux_buf<M: GuestMemoryBackend>(&self, mem: &M) -> u64 {
        mem.load::<u64>(self.at(guest::AUX_BUF), Ordering::Acquire)
            .unwrap_or(0)
    }

    /// Store a host field; `order` Release where the guest pairs it with an
    /// acquire.
    pub fn set<M: GuestMemoryBackend>(&self, mem: &M, off: u64, value: u64, order: Ordering) {
        let _ = mem.store(value, self.at(off), order);
    }

    /// Bump `irq_seq` (release: everything the host wrote before, ring head
    /// and AUX result included, is visible to a driver that sees the new
    /// value with acquire).
    pub fn bump_irq_seq<M: GuestMemoryBackend>(&self, mem: &M) {
        let seq = self.u64(mem, host::IRQ_SEQ).unwrap_or(0);
        self.set(mem, host::IRQ_SEQ, seq.wrapping_add(1), Ordering::Release);
    }
}
