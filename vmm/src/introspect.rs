//! Reading a guest's own structures from the host, without its help: guest
//! virtual addresses through its page tables, frame-pointer callchains, and
//! the task running on a vCPU.
//!
//! The guest is untrusted and its memory changes under our feet. Every read
//! goes through vm-memory's checked accessors; every walk is bounded (four
//! table levels, [`MAX_DEPTH`] frames, frames must move up the stack), so
//! garbage page tables, cyclic tables or looping frame pointers cost a
//! bounded number of reads and never fault.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Most frames a callchain walk follows.
pub const MAX_DEPTH: usize = 64;
/// Largest distance between two frames on one stack (a bigger jump ends the
/// walk: it is not a stack).
const MAX_FRAME_SPAN: u64 = 1 << 20;
/// Physical-address bits of a page-table entry (bits 12..51).
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PTE_PRESENT: u64 = 1;
const PTE_PS: u64 = 1 << 7;

/// Is `va` canonical for 48-bit virtual addresses?
pub fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

/// A guest address space: guest memory plus the CR3 of the sampled vCPU.
pub struct GuestAddressSpace<'a> {
    mem: &'a GuestMemoryMmap,
    /// The PML4's guest-physical address (CR3 without PCID/flag bits).
    root: u64,
    /// Page-table reads done so far (a cost meter for tests and stats).
    pub reads: u64,
}

impl<'a> GuestAddressSpace<'a> {
    /// The address space rooted at `cr3` (4-level paging).
    pub fn new(mem: &'a GuestMemoryMmap, cr3: u64) -> Self {
        Self {
            mem,
            root: cr3 & PTE_ADDR,
            reads: 0,
        }
    }

    fn entry(&mut self, table: u64, index: u64) -> Option<u64> {
        self.reads += 1;
        self.mem
            .read_obj::<u64>(GuestAddress(table.checked_add(index.checked_mul(8)?)?))
            .ok()
    }

    /// Translate a guest virtual address (4 KiB, 2 MiB and 1 GiB pages).
    pub fn translate(&mut self, va: u64) -> Option<u64> {
        if !is_canonical(va) {
            return None;
        }
        let pml4e = self.entry(self.root, (va >> 39) & 511)?;
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = self.entry(pml4e & PTE_ADDR, (va >> 30) & 511)?;
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        if pdpte & PTE_PS != 0 {
            return Some((pdpte & PTE_ADDR & !((1 << 30) - 1)) | (va & ((1 << 30) - 1)));
        }
        let pde = self.entry(pdpte & PTE_ADDR, (va >> 21) & 511)?;
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        if pde & PTE_PS != 0 {
            return Some((pde & PTE_ADDR & !((1 << 21) - 1)) | (va & ((1 << 21) - 1)));
        }
        let pte = self.entry(pde & PTE_ADDR, (va >> 12) & 511)?;
        if pte & PTE_PRESENT == 0 {
            return None;
        }
        Some((pte & PTE_ADDR) | (va & 0xfff))
    }

    /// Read an aligned u64 at a guest virtual address.
    pub fn read_u64(&mut self, va: u64) -> Option<u64> {
        if !va.is_multiple_of(8) {
            return None;
        }
        let gpa = self.translate(va)?;
        self.reads += 1;
        self.mem.read_obj::<u64>(GuestAddress(gpa)).ok()
    }

    /// Read bytes at a guest virtual address (may cross pages).
    pub fn read_bytes(&mut self, va: u64, buf: &mut [u8]) -> Option<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.checked_add(done as u64)?;
            let in_page = (4096 - (cur & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let gpa = self.translate(cur)?;
            self.reads += 1;
            self.mem
                .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
                .ok()?;
            done += n;
        }
        Some(())
    }
}

/// x86_64 `struct pt_regs` offsets (arch/x86/include/asm/ptrace.h).
pub(crate) mod pt_regs {
    pub const R13: u64 = 2 * 8;
    pub const BP: u64 = 4 * 8;
    pub const R10: u64 = 7 * 8;
    pub const DX: u64 = 12 * 8;
    pub const DI: u64 = 14 * 8;
    pub const IP: u64 = 16 * 8;
    pub const CS: u64 = 17 * 8;
    pub const SP: u64 = 19 * 8;
    pub const SS: u64 = 20 * 8;
    pub const SIZE: u64 = 21 * 8;
}

/// An x86-64 Linux task's kernel stack: THREAD_SIZE (16 KiB unless KASAN
/// doubles it), aligned to its size (THREAD_ALIGN, also for vmalloc'ed
/// stacks). A task that entered the kernel from user space has its user
/// registers at the very top (TOP_OF_KERNEL_STACK_PADDING is 0 on x86-64),
/// which is where the kernel's own perf_callchain_user finds them
/// (task_pt_regs).
const KERNEL_STACK_SIZE: u64 = 16 << 10;

/// The user IP and frame pointer saved at the top of the kernel stack that
/// `rsp` points into, if that really is a user entry's pt_regs (user CS
/// and SS, a user IP). On an IRQ or exception stack, or for a kernel
/// thread, the checks fail and there is nothing to add.
pub(crate) fn user_regs_at_stack_top(
    space: &mut GuestAddressSpace<'_>,
    rsp: u64,
) -> Option<(u64, u64)> {
    let top = (rsp | (KERNEL_STACK_SIZE - 1)).checked_add(1)?;
    let regs = top.checked_sub(pt_regs::SIZE)?;
    let cs = space.read_u64(regs.checked_add(pt_regs::CS)?)?;
    let ss = space.read_u64(regs.checked_add(pt_regs::SS)?)?;
    let ip = space.read_u64(regs.checked_add(pt_regs::IP)?)?;
    let bp = space.read_u64(regs.checked_add(pt_regs::BP)?)?;
    (cs & 3 == 3 && ss & 3 == 3 && is_canonical(ip) && is_user_address(ip)).then_some((ip, bp))
}

/// Is `va` in the lower (user) half? Linux x86-64 kernels live in the
/// upper half. The one rule for the walkers and the samplers.
pub fn is_user_address(va: u64) -> bool {
    va >> 63 == 0
}

/// The guest's callchain at a sample, as the guest kernel's own perf would
/// give it with frame pointers: kernel frames from RBP, then the user
/// frames of the task that entered the kernel. The user part is found, in
/// order: through an encoded pt_regs pointer in the frame chain (interrupts
/// and exceptions); where a kernel walk meets a user address (a sample at
/// the kernel entry, before RBP was saved); from the user registers at the
/// top of the kernel stack that `rsp` is on (system calls, whose entry
/// clears RBP). At most [`MAX_DEPTH`] frames in all.
pub fn walk_guest_stack(
    space: &mut GuestAddressSpace<'_>,
    rbp: u64,
    rsp: u64,
    kernel: bool,
) -> Callchain {
    let mut chain = walk_frame_pointers(space, rbp, kernel);
    if !kernel || chain.user_start.is_some() {
        return chain;
    }
    if let Some(i) = chain.frames.iter().position(|&a| is_user_address(a)) {
        chain.user_start = Some(i);
        return chain;
    }
    if let Some((ip, bp)) = user_regs_at_stack_top(space, rsp) {
        continue_in_user(space, &mut chain, ip, bp);
    }
    chain
}

/// Appends the user IP of a kernel entry and the user frames from its
/// saved RBP to `chain`, within [`MAX_DEPTH`] frames in all.
pub(crate) fn continue_in_user(
    space: &mut GuestAddressSpace<'_>,
    chain: &mut Callchain,
    ip: u64,
    bp: u64,
) {
    if chain.frames.len() >= MAX_DEPTH {
        return;
    }
    chain.user_start = Some(chain.frames.len());
    chain.frames.push(ip);
    let user = walk_frame_pointers(space, bp, false);
    let room = MAX_DEPTH - chain.frames.len();
    chain.frames.extend(user.frames.into_iter().take(room));
    chain.end = user.end;
}

/// A walked callchain: return addresses after the sampled IP, innermost
/// first, and where the user part starts (Linux's kernel entry leaves an
/// encoded pt_regs pointer in RBP; from it the walk continues in user space).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Callchain {
    /// Return addresses (kernel ones first when the sample was in the kernel).
    pub frames: Vec<u64>,
    /// Index in `frames` of the first user frame (the user IP at kernel entry).
    pub user_start: Option<usize>,
    /// Why the walk ended.
    pub end: WalkEnd,
}

/// Why a frame-pointer walk stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// A zero frame pointer or return address: the outermost frame.
    #[default]
    Outermost,
    /// A non-canonical or misaligned frame pointer.
    BadPointer,
    /// An address that does not translate.
    Unmapped,
    /// The next frame is not above this one (a loop or a corrupt stack).
    NotAscending,
    /// [`MAX_DEPTH`] frames.
    Depth,
    /// The kernel's unwind tables (ORC) have no rule for this IP (module
    /// or generated code, or a hole): the chain stops rather than guess.
    NoUnwindInfo,
}

/// Walk frame pointers from `rbp`. `kernel` says the sample was taken in
/// guest kernel mode; then the walk follows Linux's encoded pt_regs pointer
/// (bit 0 set in RBP, ENCODE_FRAME_POINTER) into the interrupted user
/// context.
pub fn walk_frame_pointers(space: &mut GuestAddressSpace<'_>, rbp: u64, kernel: bool) -> Callchain {
    let mut chain = Callchain::default();
    let mut frame = rbp;
    let mut in_kernel = kernel;
    while chain.frames.len() < MAX_DEPTH {
        if frame == 0 {
            chain.end = WalkEnd::Outermost;
            return chain;
        }
        if in_kernel && frame & 1 == 1 {
            // An entry from user space: pt_regs at frame & !1.
            // Guest-chosen: the field addresses may not fit in 64 bits.
            let regs = frame & !1;
            let field = |space: &mut GuestAddressSpace<'_>, off: u64| {
                space.read_u64(regs.checked_add(off)?)
            };
            let (Some(ip), Some(bp), Some(cs)) = (
                field(space, pt_regs::IP),
                field(space, pt_regs::BP),
                field(space, pt_regs::CS),
            ) else {
                chain.end = WalkEnd::Unmapped;
                return chain;
            };
            if cs & 3 != 3 {
                // An interrupt from kernel mode: nothing user to add.
                chain.end = WalkEnd::Outermost;
                return chain;
            }
            chain.user_start = Some(chain.frames.len());
            chain.frames.push(ip);
            in_kernel = false;
            frame = bp;
            continue;
        }
        if !is_canonical(frame) || !frame.is_multiple_of(8) {
            chain.end = WalkEnd::BadPointer;
            return chain;
        }
        // The highest canonical, aligned frame has no room for its return
        // address below 2^64.
        let ret_at = frame.checked_add(8);
        let (Some(next), Some(ret)) = (
            space.read_u64(frame),
            ret_at.and_then(|a| space.read_u64(a)),
        ) else {
            chain.end = WalkEnd::Unmapped;
            return chain;
        };
        if ret == 0 || !is_canonical(ret) {
            chain.end = WalkEnd::Outermost;
            return chain;
        }
        chain.frames.push(ret);
        if next == 0 {
            chain.end = WalkEnd::Outermost;
            return chain;
        }
        let encoded = in_kernel && next & 1 == 1;
        if !encoded && (next <= frame || next.saturating_sub(frame) > MAX_FRAME_SPAN) {
            chain.end = WalkEnd::NotAscending;
            return chain;
        }
        frame = next;
    }
    chain.end = WalkEnd::Depth;
    chain
}

/// Where the guest kernel keeps the running task and its ids, for a kernel
/// perfvisor knows (from the guest image's build: System.map and struct
/// offsets, see scripts/build-guest-image.sh's guest-info.txt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Per-CPU offset of `current_task`.
    pub current_task: u64,
    /// `offsetof(struct task_struct, pid)`, `tgid`, `comm`.
    pub task_pid: u64,
    pub task_tgid: u64,
    pub task_comm: u64,
    /// `offsetof(struct task_struct, mm)` and `offsetof(struct mm_struct,
    /// start_code)`, when known: the running process's code start, which
    /// gives a PIE executable's load address (see [`GuestTask::start_code`]).
    pub task_mm: Option<u64>,
    pub mm_start_code: Option<u64>,
}

impl KernelInfo {
    /// Parse `name value` lines (hex or decimal): `current_task`,
    /// `task_pid`, `task_tgid`, `task_comm`, and optionally `task_mm` and
    /// `task_mm_start_code` (mm_struct's start_code).
    pub fn parse(text: &str) -> Option<KernelInfo> {
        let get = |k: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let (name, v) = l.split_once(char::is_whitespace)?;
                (name == k).then(|| {
                    let v = v.trim();
                    v.strip_prefix("0x")
                        .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
                })?
            })
        };
        Some(KernelInfo {
            current_task: get("current_task")?,
            task_pid: get("task_pid")?,
            task_tgid: get("task_tgid")?,
            task_comm: get("task_comm")?,
            task_mm: get("task_mm"),
            mm_start_code: get("task_mm_start_code"),
        })
    }

    /// The `guest-info.txt` text [`KernelInfo::parse`] reads back.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "current_task {:#x}\ntask_pid {}\ntask_tgid {}\ntask_comm {}\n",
            self.current_task, self.task_pid, self.task_tgid, self.task_comm
        );
        if let (Some(mm), Some(sc)) = (self.task_mm, self.mm_start_code) {
            t.push_str(&format!("task_mm {mm}\ntask_mm_start_code {sc}\n"));
        }
        t
    }
}

/// The task running on a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// `mm->start_code` of a user process (None for a kernel thread, or
    /// when the layout does not say where it is). The kernel sets it to
    /// the load bias plus the lowest `p_vaddr` of the executable's
    /// executable `PT_LOAD`s (6.1 `load_elf_binary()`), so the host learns
    /// where a PIE was loaded. Guest-written: a hint for symbols only.
    pub start_code: Option<u64>,
}

/// Find the running task: `percpu_base` is the vCPU's kernel GS base
/// (GS.base in kernel mode, MSR_KERNEL_GS_BASE in user mode).
pub fn current_task(
    space: &mut GuestAddressSpace<'_>,
    info: &KernelInfo,
    percpu_base: u64,
) -> Option<GuestTask> {
    let task = space.read_u64(percpu_base.checked_add(info.current_task)?)?;
    // A task_struct lives in the kernel half. Anything else (zero before
    // the kernel has set up its per-CPU area, as in the boot decompressor)
    // is no task: the sample is left unnamed rather than called pid 0.
    if !is_canonical(task) || task >> 63 == 0 {
        return None;
    }
    let mut ids = [0u8; 4];
    space.read_bytes(task.checked_add(info.task_pid)?, &mut ids)?;
    let tid = u32::from_le_bytes(ids);
    space.read_bytes(task.checked_add(info.task_tgid)?, &mut ids)?;
    let pid = u32::from_le_bytes(ids);
    let mut comm = [0u8; 16];
    space.read_bytes(task.checked_add(info.task_comm)?, &mut comm)?;
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
    let start_code = process_start_code(space, info, task);
    Some(GuestTask {
        pid,
        tid,
        comm,
        start_code,
    })
}

/// `task->mm->start_code`, when the layout has both offsets and the task
/// has a user address space (a kernel-half `mm`) whose value is a user
/// address.
fn process_start_code(
    space: &mut GuestAddressSpace<'_>,
    info: &KernelInfo,
    task: u64,
) -> Option<u64> {
    let mm = space.read_u64(task.checked_add(info.task_mm?)?)?;
    if !is_canonical(mm) || mm >> 63 == 0 {
        return None;
    }
    let start = space.read_u64(mm.checked_add(info.mm_start_code?)?)?;
    (start != 0 && start >> 47 == 0).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MB) as usize)]).unwrap()
    }

    fn w(m: &GuestMemoryMmap, a: u64, v: u64) {
        m.write_obj(v, GuestAddress(a)).unwrap();
    }

    /// PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000, mapping
    /// va 0x40_0000.. (4K pages) to pa 0x10_0000.., plus a 2 MiB page at
    /// va 0x8000_0000 -> pa 0x20_0000 and a 1 GiB page for the kernel half.
    fn tables(m: &GuestMemoryMmap) {
        w(m, 0x1000, 0x2000 | 3);
        w(m, 0x2000, 0x3000 | 3);
        w(m, 0x3000 + 2 * 8, 0x4000 | 3); // va 0x40_0000
        for i in 0..16 {
            w(m, 0x4000 + i * 8, (0x10_0000 + i * 0x1000) | 3);
        }
        w(m, 0x2000 + 2 * 8, 0x5000 | 3); // va 0x8000_0000 -> PD 0x5000
        w(m, 0x5000, 0x20_0000 | 0x83);
        // Kernel half: PML4[511] -> PDPT 0x6000, 1 GiB page at 0.
        w(m, 0x1000 + 511 * 8, 0x6000 | 3);
        w(m, 0x6000 + 510 * 8, 0x83);
    }

    #[test]
    fn translates_4k_2m_1g() {
        let m = mem();
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000 | 0x5 /* PCID bits */);
        assert_eq!(s.translate(0x40_0123), Some(0x10_0123));
        assert_eq!(s.translate(0x40_f008), Some(0x10_f008));
        assert_eq!(s.translate(0x8012_3456), Some(0x32_3456));
        assert_eq!(s.translate(0xffff_ffff_8000_1234), Some(0x1234));
        assert_eq!(s.translate(0x50_0000), None, "not present");
        assert_eq!(s.translate(0x8000_0000_0000), None, "non-canonical");
    }

    #[test]
    fn hostile_tables_are_bounded() {
        let m = mem();
        // CR3 outside RAM, garbage entries pointing outside RAM, and a
        // table that points at itself at every level.
        let mut s = GuestAddressSpace::new(&m, 0xffff_f000);
        assert_eq!(s.translate(0x1000), None);
        w(&m, 0x1000, 0x7fff_ffff_f000 | 1);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        assert_eq!(s.translate(0x1000), None);
        w(&m, 0x1000, 0x1000 | 3); // self-referencing: every level reads 0x1000[0]
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        let _ = s.translate(0x0);
        assert!(s.reads <= 4, "a walk reads at most four entries");
        // Frame pointers that loop are cut off.
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        w(&m, 0x10_0100, 0x40_0100); // [rbp] = rbp
        w(&m, 0x10_0108, 0x40_1000);
        let c = walk_frame_pointers(&mut s, 0x40_0100, false);
        assert_eq!(c.end, WalkEnd::NotAscending);
        assert_eq!(c.frames, vec![0x40_1000]);
        for rbp in [0x40_0101, 0x8000_0000_0000, 0x50_0000] {
            let c = walk_frame_pointers(&mut s, rbp, false);
            assert!(c.frames.is_empty(), "{rbp:x}: {c:?}");
        }
    }

    #[test]
    fn walks_user_frames_through_kernel_entry() {
        let m = mem();
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        // Kernel stack in the 1 GiB kernel page: frames at 0x8000, 0x8040,
        // whose saved rbp is an encoded pt_regs pointer at 0x9000.
        let k = 0xffff_ffff_8000_0000u64;
        w(&m, 0x8000, k + 0x8040);
        w(&m, 0x8008, k + 0x11_1111);
        w(&m, 0x8040, (k + 0x9000) | 1);
        w(&m, 0x8048, k + 0x22_2222);
        w(&m, 0x9000 + pt_regs::IP, 0x40_0800);
        w(&m, 0x9000 + pt_regs::BP, 0x40_0200);
        w(&m, 0x9000 + pt_regs::CS, 0x33);
        // User stack: hot's frame at 0x40_0200 -> b at 0x40_0300 -> a (outermost).
        w(&m, 0x10_0200, 0x40_0300);
        w(&m, 0x10_0208, 0x40_0b00);
        w(&m, 0x10_0300, 0);
        w(&m, 0x10_0308, 0x40_0a00);
        let c = walk_frame_pointers(&mut s, k + 0x8000, true);
        assert_eq!(
            c.frames,
            vec![
                k + 0x11_1111,
                k + 0x22_2222,
                0x40_0800,
                0x40_0b00,
                0x40_0a00
            ]
        );
        assert_eq!(c.user_start, Some(2));
        assert_eq!(c.end, WalkEnd::Outermost);
    }

    #[test]
    fn system_call_samples_continue_from_the_user_registers_at_the_stack_top() {
        let m = mem();
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        let k = 0xffff_ffff_8000_0000u64;
        // A 16 KiB kernel stack at 0x10000..0x14000: one kernel frame whose
        // saved rbp is 0 (the syscall entry cleared it), and the user
        // pt_regs at the top.
        w(&m, 0x11000, 0);
        w(&m, 0x11008, k + 0x33_3333);
        let regs = 0x14000 - pt_regs::SIZE;
        w(&m, regs + pt_regs::IP, 0x40_0800);
        w(&m, regs + pt_regs::BP, 0x40_0200);
        w(&m, regs + pt_regs::CS, 0x33);
        w(&m, regs + pt_regs::SS, 0x2b);
        w(&m, 0x10_0200, 0);
        w(&m, 0x10_0208, 0x40_0b00);
        let c = walk_guest_stack(&mut s, k + 0x11000, k + 0x10f00, true);
        assert_eq!(c.frames, vec![k + 0x33_3333, 0x40_0800, 0x40_0b00]);
        assert_eq!(c.user_start, Some(1));
        // A kernel CS there (an IRQ stack, a kernel thread): no user part.
        w(&m, regs + pt_regs::CS, 0x10);
        let c = walk_guest_stack(&mut s, k + 0x11000, k + 0x10f00, true);
        assert_eq!(c.frames, vec![k + 0x33_3333]);
        assert_eq!(c.user_start, None);
        // Hostile stack pointers end cleanly.
        for rsp in [u64::MAX, 0, 0x8000_0000_0000, k + 0x7fff_fff8] {
            let _ = walk_guest_stack(&mut s, 0, rsp, true);
        }
    }

    /// Frame pointers next to 2^64 end the walk; in a debug build (where
    /// overflow panics) this failed before the walker's arithmetic was
    /// checked.
    #[test]
    fn frame_pointers_at_the_top_of_the_address_space_end_the_walk() {
        let m = mem();
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        for (rbp, kernel) in [
            (0xffff_ffff_ffff_fff8, false),
            (0xffff_ffff_ffff_fff8, true),
            (u64::MAX, true),
            (u64::MAX - 1, true),
            (0x7fff_ffff_fff8, false),
        ] {
            let c = walk_frame_pointers(&mut s, rbp, kernel);
            assert!(c.frames.is_empty(), "rbp {rbp:#x}: {c:?}");
            assert_ne!(c.end, WalkEnd::Depth, "rbp {rbp:#x}");
            let c = walk_guest_stack(&mut s, rbp, rbp, kernel);
            assert!(c.frames.len() <= 1, "rbp {rbp:#x}: {c:?}");
        }
        // Page-table entries are read at checked addresses too.
        assert_eq!(s.translate(u64::MAX), None);
        let mut top = GuestAddressSpace::new(&m, u64::MAX);
        assert_eq!(top.translate(0xffff_ffff_8000_0000), None);
    }

    #[test]
    fn a_kernel_walk_that_meets_user_addresses_switches_to_user() {
        let m = mem();
        tables(&m);
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        // RBP is still the user's (a sample at the kernel entry).
        w(&m, 0x10_0200, 0x40_0300);
        w(&m, 0x10_0208, 0x40_0b00);
        w(&m, 0x10_0300, 0);
        w(&m, 0x10_0308, 0x40_0a00);
        let c = walk_guest_stack(&mut s, 0x40_0200, 0, true);
        assert_eq!(c.frames, vec![0x40_0b00, 0x40_0a00]);
        assert_eq!(c.user_start, Some(0));
    }

    #[test]
    fn current_task_from_per_cpu_data() {
        let m = mem();
        tables(&m);
        let k = 0xffff_ffff_8000_0000u64;
        let info = KernelInfo {
            current_task: 0x40,
            task_pid: 0x10,
            task_tgid: 0x14,
            task_comm: 0x20,
            task_mm: None,
            mm_start_code: None,
        };
        w(&m, 0xa040, k + 0xb000);
        m.write_obj(77u32, GuestAddress(0xb010)).unwrap();
        m.write_obj(70u32, GuestAddress(0xb014)).unwrap();
        m.write_slice(b"pv-workload\0", GuestAddress(0xb020))
            .unwrap();
        let mut s = GuestAddressSpace::new(&m, 0x1000);
        let t = current_task(&mut s, &info, k + 0xa000).unwrap();
        assert_eq!(
            t,
            GuestTask {
                pid: 70,
                tid: 77,
                comm: "pv-workload".into(),
                start_code: None,
            }
        );
        // With the mm offsets: the process's code start, from its mm.
        let with_mm = KernelInfo {
            task_mm: Some(0x30),
            mm_start_code: Some(0x18),
            ..info
        };
        w(&m, 0xb030, k + 0xc000);
        w(&m, 0xc018, 0x5555_5555_5000);
        let t = current_task(&mut s, &with_mm, k + 0xa000).unwrap();
        assert_eq!(t.start_code, Some(0x5555_5555_5000));
        assert_eq!(KernelInfo::parse(&with_mm.to_text()), Some(with_mm));
        // A kernel thread (no mm), a user-half mm, a kernel start_code: none.
        for (mm, start) in [(0, 0x1000), (0x7000, 0x1000), (k + 0xc000, k)] {
            w(&m, 0xb030, mm);
            w(&m, 0xc018, start);
            let t = current_task(&mut s, &with_mm, k + 0xa000).unwrap();
            assert_eq!(t.start_code, None, "mm {mm:#x} start {start:#x}");
        }
        w(&m, 0xb030, 0);
        assert_eq!(current_task(&mut s, &info, 0x7000_0000_0000), None);
        // A per-CPU slot still zero (early boot), or a user pointer: no task.
        w(&m, 0xa040, 0);
        assert_eq!(current_task(&mut s, &info, k + 0xa000), None);
        w(&m, 0xa040, 0xb000);
        assert_eq!(current_task(&mut s, &info, k + 0xa000), None);
        let text = "current_task 0x40\ntask_pid 16\ntask_tgid 0x14\ntask_comm 32\n";
        assert_eq!(KernelInfo::parse(text), Some(info));
        assert_eq!(KernelInfo::parse("current_task 1"), None);
        let info = KernelInfo::parse(text).unwrap();
        assert_eq!(KernelInfo::parse(&info.to_text()), Some(info));
    }
}
