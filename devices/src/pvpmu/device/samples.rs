//! Sample writing on each vCPU's own thread: what the guest's event wants,
//! the task identity of host-timer ticks, the record itself, interrupts
//! and flushes.

use super::*;

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
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

    pub(super) fn min_interval_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.inner.cfg.max_freq.max(1))
    }

    pub(super) fn interval_ns(&self, ev: &EventView) -> u64 {
        let wanted = if ev.flags & flags::FREQ != 0 {
            1_000_000_000 / ev.period.clamp(1, 1_000_000_000)
        } else {
            ev.period
        };
        wanted.max(self.min_interval_ns())
    }

    /// Read pid and tid of the task running on the vCPU from guest memory,
    /// as the state page says where to find them.
    pub(super) fn task_ids(&self, ev: &EventView) -> Option<(u32, u32)> {
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

    pub(super) fn bad_state(&self, slot: &mut Slot<M>, msg: &str) -> SampleResult {
        self.reject_state(slot, format_args!("state page: {msg}; sample skipped"));
        SampleResult::BadState
    }

    pub(super) fn interrupt(&self, slot: &mut Slot<M>, state: StatePage) {
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
