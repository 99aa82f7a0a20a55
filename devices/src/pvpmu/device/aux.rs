//! The AUX area: appending trace bytes to the guest's AUX buffer, opening
//! and ending sessions, and the trace prologue, EXIT records and stats.

use super::*;

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
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

    pub(super) fn aux_append_locked(&self, slot: &mut Slot<M>, record: &[u8]) -> bool {
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
    pub(super) fn aux_room_left(&self, slot: &mut Slot<M>) -> u64 {
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
    pub(super) fn trace_prologue(
        &self,
        n: usize,
        slot: &mut Slot<M>,
        names: Option<&[String]>,
    ) -> bool {
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

    pub(super) fn count_trace(&self, ok: bool, exit: Option<trace::ExitReason>) {
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
    pub(super) fn with_trace_session(
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

    pub(super) fn aux_open(&self, slot: &mut Slot<M>, view: AuxView) {
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
                self.reject_state(
                    slot,
                    format_args!("AUX session names unknown buffer {}", view.buf),
                );
                return;
            }
        };
        if view.room > size || view.wakeup > size {
            self.reject_state(
                slot,
                format_args!(
                    "AUX session room {} or wakeup {} exceeds the buffer ({size})",
                    view.room, view.wakeup
                ),
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

    pub(super) fn aux_maybe_end(&self, slot: &mut Slot<M>, force: bool) {
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
    pub(super) fn aux_end(&self, slot: &mut Slot<M>) {
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
