//! `struct perf_event_attr` (Linux 6.1, `PERF_ATTR_SIZE_VER7`) and its
//! bits, shared by everything that opens perf events: the host-timer
//! sampling backend and the guest tools. Layout checked against
//! include/uapi/linux/perf_event.h in the tests.

/// `PERF_ATTR_SIZE_VER7`: the size of `struct perf_event_attr` in 6.1.
pub const PERF_ATTR_SIZE_VER7: u32 = 128;

/// `PERF_TYPE_SOFTWARE`.
pub const PERF_TYPE_SOFTWARE: u32 = 1;
/// `PERF_COUNT_SW_CPU_CLOCK` (config 0 of the software PMU; pvpmu's
/// config 0 means the same).
pub const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;

/// `struct perf_event_attr` as of Linux 6.1 (128 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfEventAttr {
    /// `type`: the PMU type from sysfs.
    pub type_: u32,
    /// `size`: [`PERF_ATTR_SIZE_VER7`].
    pub size: u32,
    /// `config`.
    pub config: u64,
    /// `sample_period` or, with [`flag::FREQ`], `sample_freq`.
    pub sample_period_or_freq: u64,
    /// `sample_type`.
    pub sample_type: u64,
    /// `read_format`.
    pub read_format: u64,
    /// The bitfield word (`disabled`, `inherit`, ...): see [`flag`].
    pub flags: u64,
    /// `wakeup_events` / `wakeup_watermark`.
    pub wakeup_events: u32,
    /// `bp_type`.
    pub bp_type: u32,
    /// `config1` / `bp_addr`.
    pub config1: u64,
    /// `config2` / `bp_len`.
    pub config2: u64,
    /// `branch_sample_type`.
    pub branch_sample_type: u64,
    /// `sample_regs_user`.
    pub sample_regs_user: u64,
    /// `sample_stack_user`.
    pub sample_stack_user: u32,
    /// `clockid`.
    pub clockid: i32,
    /// `sample_regs_intr`.
    pub sample_regs_intr: u64,
    /// `aux_watermark`.
    pub aux_watermark: u32,
    /// `sample_max_stack`.
    pub sample_max_stack: u16,
    /// `__reserved_2`.
    pub reserved_2: u16,
    /// `aux_sample_size`.
    pub aux_sample_size: u32,
    /// `__reserved_3`.
    pub reserved_3: u32,
    /// `sig_data`.
    pub sig_data: u64,
}

/// Bits of [`PerfEventAttr::flags`] (bitfield order of the uapi header,
/// x86-64 allocates bitfields from the least significant bit).
pub mod flag {
    pub const DISABLED: u64 = 1 << 0;
    pub const INHERIT: u64 = 1 << 1;
    pub const PINNED: u64 = 1 << 2;
    pub const EXCLUSIVE: u64 = 1 << 3;
    pub const EXCLUDE_USER: u64 = 1 << 4;
    pub const EXCLUDE_KERNEL: u64 = 1 << 5;
    pub const EXCLUDE_HV: u64 = 1 << 6;
    pub const EXCLUDE_IDLE: u64 = 1 << 7;
    pub const MMAP: u64 = 1 << 8;
    pub const COMM: u64 = 1 << 9;
    pub const FREQ: u64 = 1 << 10;
    pub const INHERIT_STAT: u64 = 1 << 11;
    pub const ENABLE_ON_EXEC: u64 = 1 << 12;
    pub const TASK: u64 = 1 << 13;
    pub const WATERMARK: u64 = 1 << 14;
    /// `precise_ip` is two bits at 15..17.
    pub const PRECISE_IP_SHIFT: u32 = 15;
    pub const MMAP_DATA: u64 = 1 << 17;
    pub const SAMPLE_ID_ALL: u64 = 1 << 18;
    pub const EXCLUDE_HOST: u64 = 1 << 19;
    pub const EXCLUDE_GUEST: u64 = 1 << 20;
    pub const EXCLUDE_CALLCHAIN_KERNEL: u64 = 1 << 21;
    pub const EXCLUDE_CALLCHAIN_USER: u64 = 1 << 22;
    pub const MMAP2: u64 = 1 << 23;
    pub const COMM_EXEC: u64 = 1 << 24;
    pub const USE_CLOCKID: u64 = 1 << 25;
    pub const CONTEXT_SWITCH: u64 = 1 << 26;
    pub const WRITE_BACKWARD: u64 = 1 << 27;
    pub const NAMESPACES: u64 = 1 << 28;
    pub const KSYMBOL: u64 = 1 << 29;
    pub const BPF_EVENT: u64 = 1 << 30;
    pub const AUX_OUTPUT: u64 = 1 << 31;
    pub const CGROUP: u64 = 1 << 32;
    pub const TEXT_POKE: u64 = 1 << 33;
    pub const BUILD_ID: u64 = 1 << 34;
    pub const INHERIT_THREAD: u64 = 1 << 35;
    pub const REMOVE_ON_EXEC: u64 = 1 << 36;
    pub const SIGTRAP: u64 = 1 << 37;
}

/// `read_format` bits.
pub mod read_format {
    /// PERF_FORMAT_LOST (6.0+): the event's count of records dropped for
    /// lack of room.
    pub const LOST: u64 = 1 << 4;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Offsets from include/uapi/linux/perf_event.h (6.1) and the
    /// PERF_ATTR_SIZE_VER* values, which mark where each version ended.
    #[test]
    fn attr_layout() {
        assert_eq!(size_of::<PerfEventAttr>(), PERF_ATTR_SIZE_VER7 as usize);
        assert_eq!(offset_of!(PerfEventAttr, type_), 0);
        assert_eq!(offset_of!(PerfEventAttr, size), 4);
        assert_eq!(offset_of!(PerfEventAttr, config), 8);
        assert_eq!(offset_of!(PerfEventAttr, sample_period_or_freq), 16);
        assert_eq!(offset_of!(PerfEventAttr, sample_type), 24);
        assert_eq!(offset_of!(PerfEventAttr, read_format), 32);
        assert_eq!(offset_of!(PerfEventAttr, flags), 40);
        assert_eq!(offset_of!(PerfEventAttr, wakeup_events), 48);
        assert_eq!(offset_of!(PerfEventAttr, bp_type), 52);
        assert_eq!(offset_of!(PerfEventAttr, config1), 56);
        // PERF_ATTR_SIZE_VER0 = 64: config2 starts where VER0 ended.
        assert_eq!(offset_of!(PerfEventAttr, config2), 64);
        // VER1 = 72, VER2 = 80, VER3 = 96, VER4 = 104, VER5 = 112,
        // VER6 = 120, VER7 = 128.
        assert_eq!(offset_of!(PerfEventAttr, branch_sample_type), 72);
        assert_eq!(offset_of!(PerfEventAttr, sample_regs_user), 80);
        assert_eq!(offset_of!(PerfEventAttr, sample_stack_user), 88);
        assert_eq!(offset_of!(PerfEventAttr, clockid), 92);
        assert_eq!(offset_of!(PerfEventAttr, sample_regs_intr), 96);
        assert_eq!(offset_of!(PerfEventAttr, aux_watermark), 104);
        assert_eq!(offset_of!(PerfEventAttr, sample_max_stack), 108);
        assert_eq!(offset_of!(PerfEventAttr, reserved_2), 110);
        assert_eq!(offset_of!(PerfEventAttr, aux_sample_size), 112);
        assert_eq!(offset_of!(PerfEventAttr, reserved_3), 116);
        assert_eq!(offset_of!(PerfEventAttr, sig_data), 120);
    }

    #[test]
    fn flag_bits() {
        // The 38 named bits are distinct and contiguous from bit 0, with
        // precise_ip's two bits at 15 and 16.
        let named = [
            flag::DISABLED,
            flag::INHERIT,
            flag::PINNED,
            flag::EXCLUSIVE,
            flag::EXCLUDE_USER,
            flag::EXCLUDE_KERNEL,
            flag::EXCLUDE_HV,
            flag::EXCLUDE_IDLE,
            flag::MMAP,
            flag::COMM,
            flag::FREQ,
            flag::INHERIT_STAT,
            flag::ENABLE_ON_EXEC,
            flag::TASK,
            flag::WATERMARK,
            3 << flag::PRECISE_IP_SHIFT,
            flag::MMAP_DATA,
            flag::SAMPLE_ID_ALL,
            flag::EXCLUDE_HOST,
            flag::EXCLUDE_GUEST,
            flag::EXCLUDE_CALLCHAIN_KERNEL,
            flag::EXCLUDE_CALLCHAIN_USER,
            flag::MMAP2,
            flag::COMM_EXEC,
            flag::USE_CLOCKID,
            flag::CONTEXT_SWITCH,
            flag::WRITE_BACKWARD,
            flag::NAMESPACES,
            flag::KSYMBOL,
            flag::BPF_EVENT,
            flag::AUX_OUTPUT,
            flag::CGROUP,
            flag::TEXT_POKE,
            flag::BUILD_ID,
            flag::INHERIT_THREAD,
            flag::REMOVE_ON_EXEC,
            flag::SIGTRAP,
        ];
        let all = named.iter().fold(0u64, |acc, b| {
            assert_eq!(acc & b, 0, "{b:#x} overlaps");
            acc | b
        });
        assert_eq!(all, (1 << 38) - 1);
        // And in the header's order: each named bit is 1 << its index
        // (precise_ip's two bits count as two).
        for (i, b) in named.iter().enumerate() {
            let want = if i <= 15 { i } else { i + 1 };
            assert_eq!(b.trailing_zeros() as usize, want, "flag {i}");
        }
        assert_eq!(flag::EXCLUDE_HOST, 1 << 19);
        assert_eq!(flag::USE_CLOCKID, 1 << 25);
    }
}
