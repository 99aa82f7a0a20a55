//! Layout of the per-vCPU shared state page (docs/pvpmu.md, "The shared
//! state page"; `struct pvpmu_state` in guest-image/include/pvpmu_if.h).
//! Byte offsets into the page, which is one guest page.

/// Size of the state page.
pub const STATE_PAGE_SIZE: u64 = 4096;

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
    /// Entries in the switch log (up to the host half).
    pub const SWITCH_LOG_LEN: u64 = 96;
    /// Bytes of one switch-log entry (`struct pvpmu_switch`).
    pub const SWITCH_ENTRY_LEN: u64 = 16;
    /// `u64 time` in an entry: when the task left the CPU (guest perf clock).
    pub const SWITCH_TIME: u64 = 0;
    /// `u32 pid` in an entry (the tgid).
    pub const SWITCH_PID: u64 = 8;
    /// `u32 tid` in an entry.
    pub const SWITCH_TID: u64 = 12;
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
