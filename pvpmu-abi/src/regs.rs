//! Register map, commands and status codes (docs/pvpmu.md, "Registers";
//! the `PVPMU_REG_*`, `PVPMU_B_*`, `PVPMU_CMD_*` and `PVPMU_ST_*` names of
//! pvpmu_if.h).

/// Size of the MMIO region.
pub const MMIO_SIZE: u64 = 0x1000;

/// `MAGIC` value: bytes "PMPU" in memory order.
pub const MAGIC_VALUE: u32 = 0x5550_4d50;
/// Interface version.
pub const VERSION_VALUE: u32 = 1;

/// Global registers.
pub mod global {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const FEATURES: u64 = 0x008;
    pub const NR_VCPUS: u64 = 0x00c;
    pub const MAX_FREQ: u64 = 0x010;
    pub const IRQ: u64 = 0x014;
    pub const SAMPLE_TYPES: u64 = 0x018;
    pub const ERR_COMMANDS: u64 = 0x040;
    pub const ERR_PAGES: u64 = 0x048;
    pub const ERR_TAILS: u64 = 0x050;
    pub const ERR_STATE: u64 = 0x058;
    pub const SAMPLES: u64 = 0x060;
    pub const LOST: u64 = 0x068;
    pub const AUX_BYTES: u64 = 0x070;
    pub const INTERRUPTS: u64 = 0x078;
}

/// FEATURES bits.
pub mod feature {
    pub const SAMPLING: u32 = 1 << 0;
    pub const AUX: u32 = 1 << 1;
    pub const HOST_TIMER: u32 = 1 << 2;
    /// Events that ask for `PERF_SAMPLE_CALLCHAIN` get the host's walk of
    /// the guest's frame pointers (with the host timer: those events are
    /// sampled with kicks). Without it a callchain is the sampled IP alone.
    pub const CALLCHAIN: u32 = 1 << 3;
    /// The FLUSH command exists (host timer: ticks taken for the active
    /// event are moved into the ring before the write retires).
    pub const FLUSH: u32 = 1 << 4;
}

/// First per-vCPU bank.
pub const BANK_BASE: u64 = 0x100;
/// Size of one bank.
pub const BANK_SIZE: u64 = 0x40;
/// Banks that fit in the region.
pub const MAX_BANKS: usize = ((MMIO_SIZE - BANK_BASE) / BANK_SIZE) as usize;

/// Offsets inside a bank.
pub mod bank {
    pub const CMD: u64 = 0x00;
    pub const STATUS: u64 = 0x04;
    pub const ARG0: u64 = 0x08;
    pub const ARG1: u64 = 0x10;
    pub const ARG2: u64 = 0x18;
    pub const RET0: u64 = 0x20;
}

/// Commands.
pub mod cmd {
    pub const SET_STATE: u32 = 1;
    pub const SET_RING: u32 = 2;
    pub const START: u32 = 3;
    pub const STOP: u32 = 4;
    pub const RESET: u32 = 5;
    pub const AUX_SET: u32 = 6;
    pub const AUX_CLEAR: u32 = 7;
    pub const FLUSH: u32 = 8;
}

/// STATUS values.
pub mod status {
    pub const OK: u32 = 0;
    pub const EINVAL: u32 = 1;
    pub const EBUSY: u32 = 2;
    pub const ENOENT: u32 = 3;
    pub const EFAULT: u32 = 4;
    pub const ENOSYS: u32 = 5;
}

/// Most data pages in a sample ring.
pub const MAX_RING_PAGES: u64 = 256;
/// Most pages in an AUX buffer.
pub const MAX_AUX_PAGES: u64 = 4096;
/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
