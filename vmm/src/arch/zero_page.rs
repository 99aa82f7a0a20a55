//! The Linux zero page (`struct boot_params`) with the e820 memory map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const E820_RAM: u32 = 1;

/// What goes into the zero page besides the memory map.
pub struct ZeroPage {
    /// The bzImage's own setup header, if the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
    /// Length of the command line at [`CMDLINE_START`], without the NUL.
    pub cmdline_len: usize,
    /// Initrd address and size.
    pub initrd: Option<(GuestAddress, usize)>,
}

/// The e820 map for the RAM ranges: low RAM up to the EBDA, then RAM from
/// 1 MiB; everything else is a hole the kernel treats as reserved.
pub fn e820_entries(ram: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let mut out = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for &(start, len) in ram {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            out.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    out
}

/// Fill and write the zero page at [`ZERO_PAGE_START`].
pub fn write(
    mem: &GuestMemoryMmap,
    zp: &ZeroPage,
    ram: &[(u64, u64)],
) -> Result<(), linux_loader::configurator::Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = zp.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = zp.cmdline_len as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr.0 >> 32) as u32;
        params.ext_ramdisk_size = (size as u64 >> 32) as u32;
    }
    let entries = e820_entries(ram);
    for (slot, e) in params.e820_table.iter_mut().zip(entries.iter()) {
        *slot = *e;
    }
    params.e820_entries = entries.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_skips_legacy_hole() {
        let e = e820_entries(&[(0, 256 << 20)]);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].addr, e[0].size), (0, EBDA_START));
        assert_eq!(
            (e[1].addr, e[1].size),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
        let e = e820_entries(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(e.len(), 3);
        let addr = e[2].addr;
        assert_eq!(addr, 4 << 30);
    }
}
