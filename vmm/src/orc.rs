//! Guest kernel callchains from the kernel's own ORC unwind tables
//! (`CONFIG_UNWINDER_ORC`, Debian's and most distributions' choice: their
//! kernels have no frame pointers to walk). The tables come from the
//! kernel image the user brings (`.orc_unwind_ip`, `.orc_unwind`), not
//! from guest memory; the stack they are applied to is the guest's, so
//! every read goes through the checked page-table walker and the walk is
//! bounded like the frame-pointer one: at most [`MAX_DEPTH`] frames, the
//! stack pointer must move up (or to another stack, a bounded number of
//! times), and an IP without an ORC entry ends the walk there. Nothing is
//! guessed: where ORC has no answer the chain stops, and a sample keeps
//! its IP alone.
//!
//! The rules follow arch/x86/kernel/unwind_orc.c (`unwind_next_frame`):
//! an entry gives the previous frame's stack pointer (the CFA) from SP or
//! BP plus an offset (or through memory), and the previous BP; its type
//! says where the return address is: just below the CFA (a call), in a
//! full `pt_regs` at the CFA (entry code), or in an IRET frame.

use crate::introspect::{
    continue_in_user, is_user_address, pt_regs, user_regs_at_stack_top, Callchain,
    GuestAddressSpace, WalkEnd, MAX_DEPTH,
};
use crate::kernel_image::{KernelImageError, Vmlinux};

/// At most this many ORC entries (Debian's 6.1 has 384 849).
pub const MAX_ENTRIES: usize = 8 << 20;
/// The first bytes of [`OrcTable::to_bytes`].
const FILE_MAGIC: &[u8; 8] = b"PVORC001";
/// At most this many switches to another stack (IRQ -> task, exception ->
/// task) in one walk.
const MAX_STACK_SWITCHES: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum OrcError {
    #[error(transparent)]
    Image(#[from] KernelImageError),
    #[error("{0} has no ORC unwind tables (.orc_unwind, .orc_unwind_ip: a kernel built without CONFIG_UNWINDER_ORC); kernel callchains use frame pointers")]
    NoTables(String),
    #[error("{0}: the ORC tables are inconsistent ({1}); kernel samples keep their IP alone")]
    Bad(String, &'static str),
}

type Result<T> = std::result::Result<T, OrcError>;

/// The bit layout of `struct orc_entry`'s last two bytes, which changed
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcFormat {
    /// Up to 6.2: `type:2` (0 call, 1 regs, 2 iret), `end:1`.
    V1,
    /// 6.3: `type:2`, `signal:1`, `end:1`.
    V2,
    /// 6.4 on: `type:3` (0 undefined, 1 end of stack, 2 call, 3 regs,
    /// 4 iret), `signal:1`.
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Regs,
    RegsPartial,
    End,
    Undefined,
}

/// One ORC entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    sp_offset: i16,
    bp_offset: i16,
    sp_reg: u8,
    bp_reg: u8,
    kind: Kind,
    signal: bool,
}

const REG_UNDEFINED: u8 = 0;
const REG_PREV_SP: u8 = 1;
const REG_DX: u8 = 2;
const REG_DI: u8 = 3;
const REG_BP: u8 = 4;
const REG_SP: u8 = 5;
const REG_R10: u8 = 6;
const REG_R13: u8 = 7;
const REG_BP_INDIRECT: u8 = 8;
const REG_SP_INDIRECT: u8 = 9;

impl Entry {
    fn decode(b: [u8; 6], format: OrcFormat) -> Entry {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let (sp_reg, bp_reg) = (b[4] & 0xf, b[4] >> 4);
        let (kind, signal) = match format {
            OrcFormat::V1 | OrcFormat::V2 => {
                // The end bit only counts where no SP rule is given.
                let end_bit = if format == OrcFormat::V1 { 2 } else { 3 };
                let signal = format == OrcFormat::V2 && b[5] & 4 != 0;
                let kind = if sp_reg == REG_UNDEFINED {
                    if b[5] >> end_bit & 1 == 1 {
                        Kind::End
                    } else {
                        Kind::Undefined
                    }
                } else {
                    match b[5] & 3 {
                        0 => Kind::Call,
                        1 => Kind::Regs,
                        2 => Kind::RegsPartial,
                        _ => Kind::Undefined,
                    }
                };
                (kind, signal)
            }
            OrcFormat::V3 => {
                let kind = match (b[5] & 7, sp_reg) {
                    (1, _) => Kind::End,
                    (_, REG_UNDEFINED) => Kind::Undefined,
                    (2, _) => Kind::Call,
                    (3, _) => Kind::Regs,
                    (4, _) => Kind::RegsPartial,
                    _ => Kind::Undefined,
                };
                (kind, b[5] & 8 != 0)
            }
        };
        Entry {
            sp_offset,
            bp_offset,
            sp_reg,
            bp_reg,
            kind,
            signal,
        }
    }
}

/// A kernel's ORC tables: entry `i` covers IPs from `ips[i]` up to the next.
#[derive(Debug)]
pub struct OrcTable {
    ips: Vec<u64>,
    entries: Vec<[u8; 6]>,
    format: OrcFormat,
}

/// The registers a walk starts from (the vCPU's at the sample).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub dx: u64,
    pub di: u64,
    pub r10: u64,
    pub r13: u64,
}

impl StartRegs {
    /// The registers a walk needs, from the vCPU's.
    pub fn from_regs(regs: &kvm_bindings::kvm_regs) -> StartRegs {
        StartRegs {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            dx: regs.rdx,
            di: regs.rdi,
            r10: regs.r10,
            r13: regs.r13,
        }
    }
}

impl OrcTable {
    /// The ORC tables of an opened kernel image.
    pub fn from_image(vmlinux: &Vmlinux) -> Result<OrcTable> {
        let name = || vmlinux.path().display().to_string();
        let (Some((ip_data, ip_addr)), Some(unwind)) = (
            vmlinux.section_and_address(".orc_unwind_ip")?,
            vmlinux.section(".orc_unwind")?,
        ) else {
            return Err(OrcError::NoTables(name()));
        };
        let format = format_of(vmlinux.release().as_deref());
        OrcTable::from_sections(ip_data, ip_addr, unwind, format)
            .map_err(|why| OrcError::Bad(name(), why))
    }

    /// The tables from the two sections' bytes (`.orc_unwind_ip` at
    /// `ip_addr`: each entry is an s32 offset from its own address).
    pub fn from_sections(
        ip_data: &[u8],
        ip_addr: u64,
        unwind: &[u8],
        format: OrcFormat,
    ) -> std::result::Result<OrcTable, &'static str> {
        let n = ip_data.len() / 4;
        if n == 0 || n > MAX_ENTRIES || unwind.len() / 6 != n {
            return Err("entry counts differ or are out of range");
        }
        let mut ips = Vec::with_capacity(n);
        for (i, c) in ip_data.chunks_exact(4).enumerate() {
            let rel = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let at = ip_addr.wrapping_add(4 * i as u64);
            ips.push(at.wrapping_add(rel as i64 as u64));
        }
        OrcTable::new(ips, unwind, format)
    }

    /// The table from absolute IPs and the 6-byte entries they index,
    /// refused when the IPs are not sorted (lookups bisect them).
    fn new(
        ips: Vec<u64>,
        unwind: &[u8],
        format: OrcFormat,
    ) -> std::result::Result<OrcTable, &'static str> {
        if ips.windows(2).any(|w| w[0] > w[1]) {
            return Err("the IP table is not sorted");
        }
        let entries = unwind
            .chunks_exact(6)
            .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
            .collect();
        Ok(OrcTable {
            ips,
            entries,
            format,
        })
    }

    /// The tables as a file the inner perfvisor of a sandboxed recording
    /// reads back with [`OrcTable::from_bytes`] (the kernel image is not
    /// decompressed twice, and not under emulation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.ips.len() * 14);
        v.extend_from_slice(FILE_MAGIC);
        v.push(match self.format {
            OrcFormat::V1 => 1,
            OrcFormat::V2 => 2,
            OrcFormat::V3 => 3,
        });
        v.extend_from_slice(&[0; 7]);
        v.extend_from_slice(&(self.ips.len() as u64).to_le_bytes());
        for ip in &self.ips {
            v.extend_from_slice(&ip.to_le_bytes());
        }
        for e in &self.entries {
            v.extend_from_slice(e);
        }
        v
    }

    /// Reads [`OrcTable::to_bytes`]'s output.
    pub fn from_bytes(b: &[u8]) -> std::result::Result<OrcTable, &'static str> {
        let bad = "not a perfvisor ORC file";
        if b.get(..8) != Some(FILE_MAGIC) {
            return Err(bad);
        }
        let format = match b.get(8) {
            Some(1) => OrcFormat::V1,
            Some(2) => OrcFormat::V2,
            Some(3) => OrcFormat::V3,
            _ => return Err(bad),
        };
        let n = b
            .get(16..24)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0 && n <= MAX_ENTRIES)
            .ok_or(bad)?;
        let ips_end = 24 + n * 8;
        if b.len() != ips_end + n * 6 {
            return Err(bad);
        }
        let ips: Vec<u64> = b[24..ips_end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        OrcTable::new(ips, &b[ips_end..], format)
    }

    pub fn len(&self) -> usize {
        self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    pub fn format(&self) -> OrcFormat {
        self.format
    }

    /// The entry covering `ip`, if any (IPs past the last entry and before
    /// the first have none).
    fn lookup(&self, ip: u64) -> Option<Entry> {
        let i = self.ips.partition_point(|&a| a <= ip).checked_sub(1)?;
        if i + 1 == self.ips.len() {
            // The last entry is the table's terminator.
            return None;
        }
        Some(Entry::decode(*self.entries.get(i)?, self.format))
    }

    /// The guest callchain of a kernel-mode sample: kernel return addresses
    /// from ORC, then the user IP and the user frames (frame pointers), as
    /// [`crate::introspect::walk_guest_stack`] gives them: from the pt_regs
    /// the walk reaches at the entry from user space, or else (a sample in
    /// the entry code before the registers are saved, or where ORC has no
    /// entry) from the user registers at the top of the kernel stack the
    /// walk ended on, like the kernel's own perf_callchain_user.
    pub fn walk(&self, space: &mut GuestAddressSpace<'_>, start: StartRegs) -> Callchain {
        let (mut chain, last_sp) = self.walk_kernel(space, start);
        if chain.user_start.is_some() || chain.frames.len() >= MAX_DEPTH {
            return chain;
        }
        if let Some((ip, bp)) = user_regs_at_stack_top(space, last_sp) {
            continue_in_user(space, &mut chain, ip, bp);
        }
        chain
    }

    /// The kernel part of [`OrcTable::walk`], and the last stack pointer.
    fn walk_kernel(&self, space: &mut GuestAddressSpace<'_>, start: StartRegs) -> (Callchain, u64) {
        let mut chain = Callchain::default();
        let (mut ip, mut sp, mut bp) = (start.ip, start.sp, start.bp);
        // The registers ORC may name beyond SP and BP: the vCPU's at first,
        // then a full pt_regs' after entry code.
        let mut regs: Option<StartRegs> = Some(start);
        // The first IP is where the vCPU was, not a return address.
        let mut signal = true;
        let mut switches = 0;
        loop {
            if chain.frames.len() >= MAX_DEPTH {
                chain.end = WalkEnd::Depth;
                return (chain, sp);
            }
            let Some(orc) = self.lookup(if signal { ip } else { ip.wrapping_sub(1) }) else {
                chain.end = WalkEnd::NoUnwindInfo;
                return (chain, sp);
            };
            let read = |space: &mut GuestAddressSpace<'_>, a: u64| space.read_u64(a);
            let reg = |r: u8| -> Option<u64> {
                let full = regs?;
                match r {
                    REG_DX => Some(full.dx),
                    REG_DI => Some(full.di),
                    REG_R10 => Some(full.r10),
                    REG_R13 => Some(full.r13),
                    _ => None,
                }
            };
            let cfa = match orc.kind {
                Kind::End => {
                    chain.end = WalkEnd::Outermost;
                    return (chain, sp);
                }
                Kind::Undefined => {
                    chain.end = WalkEnd::NoUnwindInfo;
                    return (chain, sp);
                }
                _ => {
                    let off = orc.sp_offset as i64 as u64;
                    let base = match orc.sp_reg {
                        REG_SP => Some(sp.wrapping_add(off)),
                        REG_BP => Some(bp.wrapping_add(off)),
                        REG_SP_INDIRECT => read(space, sp).map(|v| v.wrapping_add(off)),
                        REG_BP_INDIRECT => read(space, bp.wrapping_add(off)),
                        // Entry code: a register of the interrupted context
                        // (the vCPU's, or a full pt_regs'), no offset.
                        r => reg(r),
                    };
                    match base {
                        Some(c) => c,
                        None => {
                            chain.end = WalkEnd::Unmapped;
                            return (chain, sp);
                        }
                    }
                }
            };
            let prev_sp = sp;
            let prev_bp = bp;
            match orc.kind {
                Kind::Call => {
                    let Some(ret) = cfa.checked_sub(8).and_then(|a| read(space, a)) else {
                        chain.end = WalkEnd::Unmapped;
                        return (chain, sp);
                    };
                    ip = ret;
                    sp = cfa;
                    regs = None;
                    signal = orc.signal;
                }
                Kind::Regs | Kind::RegsPartial => {
                    // Full pt_regs at the CFA, or an IRET frame (ip, cs,
                    // flags, sp, ss) at it.
                    let base = if orc.kind == Kind::Regs {
                        Some(cfa)
                    } else {
                        cfa.checked_sub(pt_regs::IP)
                    };
                    let Some(base) = base else {
                        chain.end = WalkEnd::BadPointer;
                        return (chain, sp);
                    };
                    let field = |space: &mut GuestAddressSpace<'_>, off: u64| {
                        base.checked_add(off).and_then(|a| space.read_u64(a))
                    };
                    let (Some(rip), Some(cs), Some(rsp)) = (
                        field(space, pt_regs::IP),
                        field(space, pt_regs::CS),
                        field(space, pt_regs::SP),
                    ) else {
                        chain.end = WalkEnd::Unmapped;
                        return (chain, sp);
                    };
                    if cs & 3 == 3 {
                        // Entered from user space: the user IP, then the
                        // user frames from the saved RBP.
                        if orc.kind != Kind::Regs {
                            // An IRET frame has no saved RBP: the user IP
                            // alone.
                            chain.user_start = Some(chain.frames.len());
                            chain.frames.push(rip);
                            chain.end = WalkEnd::Outermost;
                            return (chain, sp);
                        }
                        let Some(ubp) = field(space, pt_regs::BP) else {
                            chain.end = WalkEnd::Unmapped;
                            return (chain, sp);
                        };
                        if !is_user_address(rip) {
                            chain.end = WalkEnd::BadPointer;
                            return (chain, sp);
                        }
                        continue_in_user(space, &mut chain, rip, ubp);
                        return (chain, sp);
                    }
                    ip = rip;
                    sp = rsp;
                    signal = true;
                    if orc.kind == Kind::Regs {
                        let f =
                            |space: &mut GuestAddressSpace<'_>, off| field(space, off).unwrap_or(0);
                        regs = Some(StartRegs {
                            ip: rip,
                            sp: rsp,
                            bp: f(space, pt_regs::BP),
                            dx: f(space, pt_regs::DX),
                            di: f(space, pt_regs::DI),
                            r10: f(space, pt_regs::R10),
                            r13: f(space, pt_regs::R13),
                        });
                    } else {
                        regs = None;
                    }
                }
                Kind::End | Kind::Undefined => {
                    chain.end = WalkEnd::NoUnwindInfo;
                    return (chain, sp);
                }
            }
            // The previous BP.
            bp = match orc.bp_reg {
                REG_UNDEFINED => match (orc.kind, regs) {
                    (Kind::Regs, Some(r)) => r.bp,
                    _ => prev_bp,
                },
                REG_PREV_SP => match read(space, cfa.wrapping_add(orc.bp_offset as i64 as u64)) {
                    Some(v) => v,
                    None => {
                        chain.end = WalkEnd::Unmapped;
                        return (chain, sp);
                    }
                },
                REG_BP => match read(space, prev_bp.wrapping_add(orc.bp_offset as i64 as u64)) {
                    Some(v) => v,
                    None => {
                        chain.end = WalkEnd::Unmapped;
                        return (chain, sp);
                    }
                },
                _ => {
                    chain.end = WalkEnd::NoUnwindInfo;
                    return (chain, sp);
                }
            };
            if ip == 0 || is_user_address(ip) {
                chain.end = WalkEnd::Outermost;
                return (chain, sp);
            }
            // The stack grows down: the caller's frame is above, unless the
            // walk moved to another stack (IRQ or exception stack to the
            // task's), which a 16 KiB-aligned region change shows.
            if sp <= prev_sp {
                let other_stack = sp >> 14 != prev_sp >> 14;
                switches += 1;
                if !other_stack || switches > MAX_STACK_SWITCHES {
                    chain.end = WalkEnd::NotAscending;
                    return (chain, sp);
                }
            }
            chain.frames.push(ip);
        }
    }
}

/// The entry format of a kernel release ("6.1.0-57-amd64"): unknown
/// releases get the newest.
pub fn format_of(release: Option<&str>) -> OrcFormat {
    let Some(r) = release else {
        return OrcFormat::V3;
    };
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(99);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(99);
    match (major, minor) {
        (m, _) if m < 6 => OrcFormat::V1,
        (6, n) if n < 3 => OrcFormat::V1,
        (6, 3) => OrcFormat::V2,
        _ => OrcFormat::V3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const MB: u64 = 1 << 20;
    /// Kernel va 0xffff_ffff_8000_0000 + x is pa x (a 1 GiB page); user va
    /// 0x40_0000.. is pa 0x10_0000.. (4 KiB pages).
    const KBASE: u64 = 0xffff_ffff_8000_0000;
    const ENTRY: u64 = 0xffff_ffff_8100_0000;
    const DO_SYSCALL: u64 = 0xffff_ffff_8100_1000;
    const GETPPID: u64 = 0xffff_ffff_8100_2000;
    const END: u64 = 0xffff_ffff_8100_3000;
    /// The top of a task stack (16 KiB aligned) and its pt_regs.
    const STACK_TOP: u64 = KBASE + 0xa0_4000;
    const REGS: u64 = STACK_TOP - 21 * 8;

    fn w(m: &GuestMemoryMmap, va: u64, v: u64) {
        let pa = if va >= KBASE {
            va - KBASE
        } else {
            va - 0x40_0000 + 0x10_0000
        };
        m.write_obj(v, GuestAddress(pa)).unwrap();
    }

    fn memory() -> GuestMemoryMmap {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MB) as usize)]).unwrap();
        let p = |a: u64, v: u64| m.write_obj(v, GuestAddress(a)).unwrap();
        p(0x1000, 0x2000 | 3);
        p(0x2000, 0x3000 | 3);
        p(0x3000 + 2 * 8, 0x4000 | 3);
        for i in 0..16 {
            p(0x4000 + i * 8, (0x10_0000 + i * 0x1000) | 3);
        }
        p(0x1000 + 511 * 8, 0x6000 | 3);
        p(0x6000 + 510 * 8, 0x83);
        m
    }

    /// One V1 entry: (sp_offset, bp_offset, sp_reg, bp_reg, type, end).
    fn v1(sp_off: i16, bp_off: i16, sp_reg: u8, bp_reg: u8, ty: u8, end: bool) -> [u8; 6] {
        let s = sp_off.to_le_bytes();
        let b = bp_off.to_le_bytes();
        [
            s[0],
            s[1],
            b[0],
            b[1],
            sp_reg | bp_reg << 4,
            ty | u8::from(end) << 2,
        ]
    }

    /// entry_SYSCALL_64 (no rule before the registers are saved, then
    /// pt_regs at SP), do_syscall_64 (a frame on BP), getppid (a leaf).
    fn table() -> OrcTable {
        let rows: Vec<(u64, [u8; 6])> = vec![
            (ENTRY, v1(0, 0, REG_UNDEFINED, REG_UNDEFINED, 0, true)),
            (ENTRY + 0x50, v1(0, 0, REG_SP, REG_UNDEFINED, 1, false)),
            (DO_SYSCALL, v1(8, 0, REG_SP, REG_UNDEFINED, 0, false)),
            (DO_SYSCALL + 1, v1(16, -16, REG_SP, REG_PREV_SP, 0, false)),
            (DO_SYSCALL + 4, v1(16, -16, REG_BP, REG_PREV_SP, 0, false)),
            (GETPPID, v1(8, 0, REG_SP, REG_UNDEFINED, 0, false)),
            (END, v1(0, 0, REG_UNDEFINED, REG_UNDEFINED, 0, false)),
        ];
        let ip_addr = 0xffff_ffff_82c0_0000u64;
        let mut ips = Vec::new();
        let mut unwind = Vec::new();
        for (i, (ip, e)) in rows.iter().enumerate() {
            let rel = ip.wrapping_sub(ip_addr + 4 * i as u64) as i64 as i32;
            ips.extend(rel.to_le_bytes());
            unwind.extend(e);
        }
        OrcTable::from_sections(&ips, ip_addr, &unwind, OrcFormat::V1).unwrap()
    }

    /// A getppid() system call from user space, stopped in getppid.
    fn syscall_stack(m: &GuestMemoryMmap) -> StartRegs {
        // pt_regs: user ip, cs, ss, sp, bp.
        w(m, REGS + pt_regs::IP, 0x40_0500);
        w(m, REGS + pt_regs::CS, 0x33);
        w(m, REGS + 20 * 8, 0x2b);
        w(m, REGS + pt_regs::SP, 0x40_0f00);
        w(m, REGS + pt_regs::BP, 0x40_0100);
        // User frame: [bp] = 0 (outermost), [bp + 8] = its return address.
        w(m, 0x40_0100, 0);
        w(m, 0x40_0108, 0x40_0600);
        // The entry called do_syscall_64, which saved RBP (0) and called
        // getppid.
        w(m, REGS - 8, ENTRY + 0x80);
        w(m, REGS - 16, 0);
        w(m, REGS - 24, DO_SYSCALL + 0x50);
        StartRegs {
            ip: GETPPID + 0x10,
            sp: REGS - 24,
            bp: REGS - 16,
            ..Default::default()
        }
    }

    #[test]
    fn a_system_call_unwinds_to_the_entry_and_into_user_space() {
        let m = memory();
        let start = syscall_stack(&m);
        let mut space = GuestAddressSpace::new(&m, 0x1000);
        let c = table().walk(&mut space, start);
        assert_eq!(
            c.frames,
            vec![DO_SYSCALL + 0x50, ENTRY + 0x80, 0x40_0500, 0x40_0600]
        );
        assert_eq!(c.user_start, Some(2));
        assert_eq!(c.end, WalkEnd::Outermost);
    }

    #[test]
    fn without_a_rule_the_kernel_part_stops_and_the_user_part_comes_from_the_stack_top() {
        let m = memory();
        let start = syscall_stack(&m);
        let mut space = GuestAddressSpace::new(&m, 0x1000);
        // In the entry code before pt_regs is complete, and in a module
        // (past the table): no kernel frames are made up.
        for ip in [ENTRY + 0x10, 0xffff_ffff_c000_0000] {
            let c = table().walk(
                &mut space,
                StartRegs {
                    ip,
                    sp: REGS - 8,
                    ..start
                },
            );
            assert_eq!(c.frames, vec![0x40_0500, 0x40_0600], "{ip:x}");
            assert_eq!(c.user_start, Some(0));
        }
        // A kernel thread's stack (no user pt_regs at the top): the IP
        // alone.
        w(&m, REGS + pt_regs::CS, 0x10);
        let c = table().walk(
            &mut space,
            StartRegs {
                ip: ENTRY + 0x10,
                sp: REGS - 8,
                ..start
            },
        );
        assert!(c.frames.is_empty() && c.user_start.is_none(), "{c:?}");
    }

    #[test]
    fn hostile_stacks_and_tables_are_bounded() {
        let m = memory();
        let start = syscall_stack(&m);
        let mut space = GuestAddressSpace::new(&m, 0x1000);
        // A frame that returns to itself: the stack does not move up.
        w(&m, REGS - 24, GETPPID + 0x10);
        let c = table().walk(
            &mut space,
            StartRegs {
                sp: REGS - 24,
                ..start
            },
        );
        assert!(c.frames.len() <= (MAX_STACK_SWITCHES + 2) as usize, "{c:?}");
        // A BP rule through an unmapped BP: the kernel part ends, the user
        // part still comes from the stack top.
        let c = table().walk(
            &mut space,
            StartRegs {
                ip: DO_SYSCALL + 0x50,
                bp: 0xffff_ffff_c000_0000,
                ..start
            },
        );
        assert_eq!(
            c.frames,
            vec![0x40_0500, 0x40_0600],
            "no kernel frame is made up"
        );
        // Random tables over a random stack: never more than MAX_DEPTH
        // frames, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for a in (0..0x4000).step_by(8) {
            w(
                &m,
                STACK_TOP - 0x4000 + a,
                if next() % 2 == 0 {
                    next()
                } else {
                    GETPPID + next() % 0x3000
                },
            );
        }
        for _ in 0..200 {
            let n = 1 + (next() % 64) as usize;
            let mut ips = Vec::new();
            let mut unwind = Vec::new();
            let mut ip = ENTRY;
            for i in 0..n {
                ip += next() % 0x200;
                let rel = ip.wrapping_sub(0x1000 + 4 * i as u64) as i64 as i32;
                ips.extend(rel.to_le_bytes());
                unwind.extend(&next().to_le_bytes()[..6]);
            }
            for format in [OrcFormat::V1, OrcFormat::V2, OrcFormat::V3] {
                let Ok(t) = OrcTable::from_sections(&ips, 0x1000, &unwind, format) else {
                    continue;
                };
                let s = StartRegs {
                    ip: ENTRY + next() % 0x4000,
                    sp: STACK_TOP - 8 - ((next() % 0x3ff8) & !7),
                    bp: STACK_TOP - 8 - (next() % 0x3ff8),
                    dx: next(),
                    di: next(),
                    r10: next(),
                    r13: next(),
                };
                let c = t.walk(&mut space, s);
                assert!(c.frames.len() <= MAX_DEPTH);
            }
        }
    }

    #[test]
    fn tables_round_trip_and_bad_ones_are_refused() {
        let t = table();
        let back = OrcTable::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(back.ips, t.ips);
        assert_eq!(back.entries, t.entries);
        assert_eq!(back.format, t.format);
        let bytes = t.to_bytes();
        for len in 0..bytes.len() {
            assert!(OrcTable::from_bytes(&bytes[..len]).is_err());
        }
        // Unsorted IPs, and counts that differ.
        let ips: Vec<u8> = [8i32, -8].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(OrcTable::from_sections(&ips, 0x1000, &[0; 12], OrcFormat::V1).is_err());
        assert!(OrcTable::from_sections(&ips[..4], 0x1000, &[0; 12], OrcFormat::V1).is_err());
    }

    #[test]
    fn the_entry_format_follows_the_release() {
        assert_eq!(format_of(Some("6.1.0-57-amd64")), OrcFormat::V1);
        assert_eq!(format_of(Some("5.10.0-30-amd64")), OrcFormat::V1);
        assert_eq!(format_of(Some("6.3.13")), OrcFormat::V2);
        assert_eq!(format_of(Some("6.12.48+deb13-amd64")), OrcFormat::V3);
        assert_eq!(format_of(None), OrcFormat::V3);
    }
}
