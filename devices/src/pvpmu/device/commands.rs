//! The commands a guest writes to a bank's CMD register: set the state
//! page, set the ring, set or clear an AUX buffer, and the slot reset.

use super::*;

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
    pub(super) fn command(&self, n: usize, command: u32) {
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

    pub(super) fn reset_slot(&self, n: usize, slot: &mut Slot<M>) {
        slot.running = false;
        slot.state = None;
        slot.ring = None;
        slot.ring_pages.clear();
        slot.gen = None;
        slot.aux = AuxSession::default();
        lock(&self.inner.declared).retain(|_, o| *o != Owner::State(n) && *o != Owner::Ring(n));
    }

    pub(super) fn cmd_set_state(&self, n: usize, slot: &mut Slot<M>, gpa: u64) -> CmdResult {
        if slot.running {
            return Err(Reject(
                status::EBUSY,
                Counter::Commands,
                "SET_STATE while running; STOP first".into(),
            ));
        }
        let claim = self.claim();
        self.check_page(&claim, gpa, "state page", Owner::State(n))?;
        claim.declare(&[gpa], Owner::State(n));
        slot.state = Some(StatePage(GuestAddress(gpa)));
        slot.aux = AuxSession::default();
        Ok(0)
    }

    pub(super) fn cmd_set_ring(
        &self,
        n: usize,
        slot: &mut Slot<M>,
        list: u64,
        nr_data: u64,
    ) -> CmdResult {
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
        // Held until the pages are the ring's (the producer set-up in
        // between writes the control page).
        let claim = self.claim();
        for (i, p) in pages.iter().enumerate() {
            self.check_page(&claim, *p, &format!("ring page {i}"), Owner::Ring(n))?;
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
        claim.declare(&pages, Owner::Ring(n));
        slot.ring = Some(producer);
        slot.ring_pages = pages;
        slot.gen = None;
        Ok(0)
    }

    pub(super) fn cmd_aux_set(&self, list: u64, nr: u64, _flags: u64) -> CmdResult {
        if !nr.is_power_of_two() || nr > regs::MAX_AUX_PAGES {
            return Err(einval(format!(
                "{nr} AUX pages: need a power of two up to {}",
                regs::MAX_AUX_PAGES
            )));
        }
        let pages = self.read_list(list, nr, "AUX")?;
        let mut table = lock(&self.inner.aux);
        let id = table.next_id;
        let claim = self.claim();
        for (i, p) in pages.iter().enumerate() {
            self.check_page(&claim, *p, &format!("AUX page {i}"), Owner::Aux(id))?;
        }
        table.next_id += 1;
        claim.declare(&pages, Owner::Aux(id));
        table.bufs.insert(id, AuxBuffer { pages });
        Ok(id)
    }

    pub(super) fn cmd_aux_clear(&self, id: u64) -> CmdResult {
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
}
