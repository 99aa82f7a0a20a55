//! Where things live in guest-physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000.. PDs (identity map of the first 4 GiB)
//! 0x0002_0000  kernel command line (COMMAND_LINE_SIZE bytes)
//! 0x0009_fc00  MP table (start of the EBDA, where Linux scans for it)
//! 0x0010_0000  high memory: kernel, then initrd at the top of low RAM
//! 0xc000_0000  MMIO hole up to 4 GiB (devices at MMIO_DEVICES_START)
//! 0x1_0000_0000 RAM above the hole, if any
//! ```

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (the kernel installs its own before enabling interrupts).
pub const IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table root.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages), one per GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86's COMMAND_LINE_SIZE in Linux 6.1 (arch/x86/include/asm/setup.h).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; Linux scans 639 KiB-640 KiB for the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte past legacy low memory and the BIOS area.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Base of the window where perfvisor places MMIO devices (pvpmu and later ones).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of the MMIO device window.
pub const MMIO_DEVICES_SIZE: u64 = 0x1000_0000;
/// Local APIC and IO-APIC default addresses.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// IO-APIC address as the MP table announces it.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// KVM's TSS (three pages) must sit in unused guest-physical space below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Intel's EPT identity-map page, just before the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The guest RAM ranges (start, length) for `mem_size` bytes of RAM, split
/// around the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (1 << 32, (4 << 30) - MMIO_HOLE_START)]
        );
        const { assert!(MMIO_DEVICES_START >= MMIO_HOLE_START) };
        const { assert!(MMIO_DEVICES_START + MMIO_DEVICES_SIZE <= IO_APIC_DEFAULT_PHYS_BASE as u64) };
    }
}
