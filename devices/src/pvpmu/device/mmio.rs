//! The register file: global and per-vCPU bank reads, writes that latch
//! arguments or run a command, and the bus device that forwards to them.

use super::*;

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
    pub(super) fn read_global(&self, offset: u64) -> u64 {
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

    pub(super) fn bank_of(&self, offset: u64) -> Option<(usize, u64)> {
        let rel = offset.checked_sub(regs::BANK_BASE)?;
        let n = (rel / regs::BANK_SIZE) as usize;
        (n < self.inner.slots.len()).then_some((n, rel % regs::BANK_SIZE))
    }

    pub(super) fn mmio_read(&self, offset: u64, data: &mut [u8]) {
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

    pub(super) fn mmio_write(&self, offset: u64, data: &[u8]) {
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
}

/// The device on the MMIO bus. It locks per vCPU slot (and the AUX table
/// on its own), so it goes on the bus with no outer lock: vCPUs writing
/// their own banks do not wait for each other.
pub struct PvpmuMmio<M: GuestMemoryBackend>(pub(super) Pvpmu<M>);

impl<M: GuestMemoryBackend + Send + Sync + 'static> BusDeviceSync for PvpmuMmio<M> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data);
    }
}
