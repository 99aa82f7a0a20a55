//! The Linux perf uapi (include/uapi/linux/perf_event.h, 6.1), written
//! once for every perfvisor crate: the ring producer, decoder and checker
//! (`devices`, which re-exports this crate as `perf_ring::abi` and
//! `perf_ring::attr`), the host-timer backend, the perf.data writer
//! (`record`) and the static guest tools, and the system calls
//! (`perf_event_open`, the ioctls, the ring mapping) in [`sys`]. A leaf
//! crate: it depends only on libc.
//!
//! Values are copied from the uapi header, not derived, so a reviewer can
//! diff them.

pub mod attr;
pub mod sys;

/// Byte offsets of `struct perf_event_mmap_page` fields.
pub mod ctrl {
    /// `__u32 version`.
    pub const VERSION: usize = 0;
    /// `__u32 compat_version`.
    pub const COMPAT_VERSION: usize = 4;
    /// `__u64 capabilities` (bit 1 is `cap_bit0_is_deprecated`).
    pub const CAPABILITIES: usize = 40;
    /// `__u32 size`: `offsetof(struct perf_event_mmap_page, __reserved)`.
    pub const SIZE: usize = 72;
    /// Value the kernel stores in [`SIZE`].
    pub const SIZE_VALUE: u32 = 96;
    /// `cap_bit0_is_deprecated` in [`CAPABILITIES`].
    pub const CAP_BIT0_IS_DEPRECATED: u64 = 1 << 1;
    /// `__u64 data_head`: written by the producer only.
    pub const DATA_HEAD: usize = 1024;
    /// `__u64 data_tail`: written by the consumer only.
    pub const DATA_TAIL: usize = 1032;
    /// `__u64 data_offset`: where the data pages start in the mapping.
    pub const DATA_OFFSET: usize = 1040;
    /// `__u64 data_size`.
    pub const DATA_SIZE: usize = 1048;
    /// `__u64 aux_head`: written by the producer only.
    pub const AUX_HEAD: usize = 1056;
    /// `__u64 aux_tail`: written by the consumer only.
    pub const AUX_TAIL: usize = 1064;
    /// `__u64 aux_offset`: written by the consumer before mapping AUX.
    pub const AUX_OFFSET: usize = 1072;
    /// `__u64 aux_size`: written by the consumer before mapping AUX.
    pub const AUX_SIZE: usize = 1080;
    /// Bytes of the control page that carry fields.
    pub const USED_LEN: usize = 1088;
}

/// `enum perf_event_type`.
pub mod record {
    pub const MMAP: u32 = 1;
    pub const LOST: u32 = 2;
    pub const COMM: u32 = 3;
    pub const EXIT: u32 = 4;
    pub const THROTTLE: u32 = 5;
    pub const UNTHROTTLE: u32 = 6;
    pub const FORK: u32 = 7;
    pub const READ: u32 = 8;
    pub const SAMPLE: u32 = 9;
    pub const MMAP2: u32 = 10;
    pub const AUX: u32 = 11;
    pub const ITRACE_START: u32 = 12;
    pub const LOST_SAMPLES: u32 = 13;
    pub const SWITCH: u32 = 14;
    pub const SWITCH_CPU_WIDE: u32 = 15;
}

/// `enum perf_event_sample_format` bits.
pub mod sample {
    pub const IP: u64 = 1 << 0;
    pub const TID: u64 = 1 << 1;
    pub const TIME: u64 = 1 << 2;
    pub const ADDR: u64 = 1 << 3;
    pub const READ: u64 = 1 << 4;
    pub const CALLCHAIN: u64 = 1 << 5;
    pub const ID: u64 = 1 << 6;
    pub const CPU: u64 = 1 << 7;
    pub const PERIOD: u64 = 1 << 8;
    pub const STREAM_ID: u64 = 1 << 9;
    pub const RAW: u64 = 1 << 10;
    pub const BRANCH_STACK: u64 = 1 << 11;
    pub const REGS_USER: u64 = 1 << 12;
    pub const STACK_USER: u64 = 1 << 13;
    pub const WEIGHT: u64 = 1 << 14;
    pub const DATA_SRC: u64 = 1 << 15;
    pub const IDENTIFIER: u64 = 1 << 16;
    pub const TRANSACTION: u64 = 1 << 17;
    pub const REGS_INTR: u64 = 1 << 18;
    pub const PHYS_ADDR: u64 = 1 << 19;
    pub const AUX: u64 = 1 << 20;
    pub const CGROUP: u64 = 1 << 21;
    pub const DATA_PAGE_SIZE: u64 = 1 << 22;
    pub const CODE_PAGE_SIZE: u64 = 1 << 23;
    pub const WEIGHT_STRUCT: u64 = 1 << 24;
    /// The bits this module can encode and decode.
    pub const SUPPORTED: u64 = IDENTIFIER
        | IP
        | TID
        | TIME
        | ADDR
        | ID
        | STREAM_ID
        | CPU
        | PERIOD
        | READ
        | CALLCHAIN
        | RAW
        | AUX;
}

/// `enum perf_event_read_format` bits.
pub mod read_format {
    pub const TOTAL_TIME_ENABLED: u64 = 1 << 0;
    pub const TOTAL_TIME_RUNNING: u64 = 1 << 1;
    pub const ID: u64 = 1 << 2;
    pub const GROUP: u64 = 1 << 3;
    pub const LOST: u64 = 1 << 4;
    /// Every bit 6.1 defines.
    pub const ALL: u64 = (1 << 5) - 1;
}

/// `PERF_RECORD_MISC_*`.
pub mod misc {
    pub const CPUMODE_MASK: u16 = 7;
    pub const CPUMODE_UNKNOWN: u16 = 0;
    pub const KERNEL: u16 = 1;
    pub const USER: u16 = 2;
    pub const HYPERVISOR: u16 = 3;
    pub const GUEST_KERNEL: u16 = 4;
    pub const GUEST_USER: u16 = 5;
    pub const SWITCH_OUT: u16 = 1 << 13;
    pub const EXACT_IP: u16 = 1 << 14;
    pub const SWITCH_OUT_PREEMPT: u16 = 1 << 14;
}

/// `PERF_AUX_FLAG_*`.
pub mod aux_flag {
    pub const TRUNCATED: u64 = 0x01;
    pub const OVERWRITE: u64 = 0x02;
    pub const PARTIAL: u64 = 0x04;
    pub const COLLISION: u64 = 0x08;
    pub const PMU_FORMAT_TYPE_MASK: u64 = 0xff00;
    /// Every flag bit a PERF_RECORD_AUX may carry.
    pub const VALID: u64 = 0x0f | PMU_FORMAT_TYPE_MASK;
}

/// `PERF_CONTEXT_*` callchain markers.
pub mod context {
    pub const HV: u64 = -32i64 as u64;
    pub const KERNEL: u64 = -128i64 as u64;
    pub const USER: u64 = -512i64 as u64;
    pub const GUEST: u64 = -2048i64 as u64;
    pub const GUEST_KERNEL: u64 = -2176i64 as u64;
    pub const GUEST_USER: u64 = -2560i64 as u64;
    pub const MAX: u64 = -4095i64 as u64;
}

/// Size of `struct perf_event_header`.
pub const HEADER_LEN: usize = 8;
/// `header.size` is a `u16`.
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;
