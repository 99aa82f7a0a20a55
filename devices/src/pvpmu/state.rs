//! Reading and writing the per-vCPU shared state page (docs/pvpmu.md, "The
//! shared state page"; its layout is `pvpmu_abi::state`).
//!
//! The guest writes the first half, the host the second. The host reads
//! every guest field once per use into a [`GuestView`], through vm-memory's
//! checked accessors, and treats the values as untrusted data.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub use pvpmu_abi::state::{flags, guest, host};

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
                let at = guest::SWITCH_LOG + (i % guest::SWITCH_LOG_LEN) * guest::SWITCH_ENTRY_LEN;
                Some((
                    self.u64(mem, at + guest::SWITCH_TIME)?,
                    self.u32(mem, at + guest::SWITCH_PID)?,
                    self.u32(mem, at + guest::SWITCH_TID)?,
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
