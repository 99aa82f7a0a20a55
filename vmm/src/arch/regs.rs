//! The boot vCPU's entry state for Linux's 64-bit boot protocol
//! (Documentation/x86/boot.rst, "64-bit Boot Protocol"): long mode, flat
//! segments, an identity map covering the kernel, `rsi` = the zero page.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors setting up a vCPU's boot state.
#[derive(Debug, Error)]
pub enum RegsError {
    #[error("cannot write the {what} to guest memory at 0x{addr:x}: {source}; is --memory large enough?")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM rejected the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    PartialMsrs { set: usize, wanted: usize },
}

type Result<T> = std::result::Result<T, RegsError>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

// Segment descriptor flags: access byte in bits 0-7, G/DB/L/AVL in bits 12-15.
const CODE64_FLAGS: u16 = 0xa09b; // present, DPL 0, code, exec/read, accessed; G, L
const DATA_FLAGS: u16 = 0xc093; // present, DPL 0, data, read/write, accessed; G, DB
const TSS_FLAGS: u16 = 0x808b; // present, 64-bit busy TSS; G

/// Encode a GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0xffff)
}

/// Decode a GDT descriptor into the segment register state KVM wants.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Write the GDT, an empty IDT and identity page tables for the first 4 GiB
/// (2 MiB pages). Called once per VM.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let gdt = [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ];
    for (i, e) in gdt.iter().enumerate() {
        let addr = GDT_START + 8 * i as u64;
        mem.write_obj(*e, GuestAddress(addr))
            .map_err(|source| RegsError::GuestWrite {
                what: "GDT",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|source| RegsError::GuestWrite {
            what: "IDT",
            addr: IDT_START,
            source,
        })?;

    let pt = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::GuestWrite {
                what: "page tables",
                addr,
                source,
            })
    };
    // PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries map 2 MiB pages (PS bit).
    pt(PML4_START, PDPTE_START | 0x03)?;
    for gib in 0..4u64 {
        let pd = PDE_START + gib * 0x1000;
        pt(PDPTE_START + gib * 8, pd | 0x03)?;
        for i in 0..512u64 {
            pt(pd + i * 8, ((gib << 30) | (i << 21)) | 0x83)?;
        }
    }
    Ok(())
}

/// Special registers for long mode with the flat GDT from [`write_boot_tables`].
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let code = segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 1);
    let data = segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 2);
    let tss = segment_from_gdt(gdt_entry(TSS_FLAGS, 0, 0xfffff), 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))
}

/// General registers: enter at `entry` with `rsi` pointing at the zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<()> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("general registers"))
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// Boot MSRs: zeroed syscall/sysenter state, fast strings, write-back memory.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let wanted = entries.len();
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs { set: 0, wanted })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("boot MSRs"))?;
    if set != wanted {
        return Err(RegsError::PartialMsrs { set, wanted });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Local APIC LINT0 = ExtINT (the PIC), LINT1 = NMI, as the MP table says.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let val = set_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trip() {
        let code = segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 1);
        assert_eq!(
            (
                code.selector,
                code.type_,
                code.l,
                code.db,
                code.g,
                code.present,
                code.s
            ),
            (8, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(DATA_FLAGS, 0x1234_5678, 0xfffff), 2);
        assert_eq!(
            (data.base, data.type_, data.db, data.l),
            (0x1234_5678, 3, 1, 0)
        );
        let tss = segment_from_gdt(gdt_entry(TSS_FLAGS, 0, 0xfffff), 3);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        assert_eq!(gdt_entry(0, 0, 0), 0);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn identity_map_covers_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pd3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pd3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn lvt_delivery_mode() {
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
    }
}
