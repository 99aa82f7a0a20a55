//! The Intel MultiProcessor Specification 1.4 table, so a guest without ACPI
//! finds its CPUs, the IO-APIC and the ISA interrupt routing.
//!
//! Layout at [`EBDA_START`]: the 16-byte floating pointer, then the
//! configuration table header and its entries (processors, the ISA bus, the
//! IO-APIC, one I/O interrupt entry per ISA IRQ, and LINT0/LINT1).

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_DEFAULT_PHYS_BASE, EBDA_START, HIMEM_START, IO_APIC_DEFAULT_PHYS_BASE};

/// Errors writing the MP table.
#[derive(Debug, Error)]
pub enum MptableError {
    #[error("--cpus {0} is out of range: the MP table describes 1 to {MAX_CPUS} CPUs")]
    TooManyCpus(u8),
    #[error("the MP table does not fit below 1 MiB")]
    TooLarge,
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// APIC ids 0..MAX_CPUS-1 go to CPUs; the IO-APIC takes the next id.
pub const MAX_CPUS: u8 = 254;
/// ISA interrupts routed through the IO-APIC.
const NUM_ISA_IRQS: u8 = 16;

const MPC_PROCESSOR: u8 = 0;
const MPC_BUS: u8 = 1;
const MPC_IOAPIC: u8 = 2;
const MPC_INTSRC: u8 = 3;
const MPC_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 signature and FPU|APIC feature flags (as QEMU and Firecracker announce).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const SPEC_REV: u8 = 4;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Build the MP table bytes as they go at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MPC_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MPC_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MPC_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    for irq in 0..NUM_ISA_IRQS {
        // type, irqtype, irqflag (u16: bus default polarity/trigger), srcbus, srcbusirq, dstapic, dstirq
        entries.extend_from_slice(&[MPC_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI, on all local APICs (0xff).
    entries.extend_from_slice(&[MPC_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MPC_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    let len = u16::try_from(44 + entries.len()).map_err(|_| MptableError::TooLarge)?;
    table.extend_from_slice(&len.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"PERFVSOR");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(
        &u32::try_from(table_addr)
            .map_err(|_| MptableError::TooLarge)?
            .to_le_bytes(),
    );
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    if base + fp.len() as u64 > HIMEM_START {
        return Err(MptableError::TooLarge);
    }
    Ok(fp)
}

/// Write the MP table for `num_cpus` CPUs at the start of the EBDA.
pub fn setup(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 16, MAX_CPUS] {
            let t = build(cpus, EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let entries = u16::from_le_bytes(table[34..36].try_into().unwrap());
            assert_eq!(entries, cpus as u16 + 1 + 1 + 16 + 2);
            // The first processor entry is the boot processor.
            assert_eq!(
                &table[44..48],
                &[
                    MPC_PROCESSOR,
                    0,
                    APIC_VERSION,
                    CPU_ENABLED | CPU_BOOTPROCESSOR
                ]
            );
        }
        assert!(build(0, EBDA_START).is_err());
        assert!(build(255, EBDA_START).is_err());
    }
}
