//! Per-vCPU CPUID: KVM's supported list (which already carries the hypervisor
//! signature leaves 0x4000_0000/0x4000_0001), with topology and APIC ids
//! patched so `--cpus N` shows N single-threaded cores in one package.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use thiserror::Error;

/// Errors building or installing CPUID.
#[derive(Debug, Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Supported(kvm_ioctls::Error),
    #[error("KVM rejected the vCPU's CPUID: {0}")]
    Set(kvm_ioctls::Error),
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// The LAPIC's TSC-deadline mode. KVM emulates it with the in-kernel LAPIC
/// but leaves it out of KVM_GET_SUPPORTED_CPUID; a VMM that checked
/// KVM_CAP_TSC_DEADLINE_TIMER sets it (as QEMU and Firecracker do). Without
/// it Linux calibrates the LAPIC timer against the PIT, which under nested
/// virtualization fails ("APIC timer disabled due to verification
/// failure") and leaves the guest on the PIT: every timer is port I/O.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const CLFLUSH_LINE_8B: u32 = 8; // 64-byte lines in units of 8 bytes

/// KVM's supported CPUID, read once per VM, plus the features KVM emulates
/// but reports only through capabilities (TSC-deadline timer).
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        for e in cpuid
            .as_mut_slice()
            .iter_mut()
            .filter(|e| e.function == LEAF_FEATURES)
        {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
    Ok(cpuid)
}

fn bits_for(n: u32) -> u32 {
    // ceil(log2(n)) with 1 -> 0
    32 - n.saturating_sub(1).leading_zeros()
}

/// Patch one entry for vCPU `index` of `count`.
fn patch(e: &mut kvm_cpuid_entry2, index: u32, count: u32) {
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_00ff)
                | (index << 24)
                | ((count & 0xff) << 16)
                | (CLFLUSH_LINE_8B << 8);
            e.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package - 1 in EAX[31:26]; each cache shared by one thread.
            e.eax = (e.eax & 0x0000_3fff) | ((count - 1) << 26);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            // Level 0: SMT (1 thread per core); level 1: core (count cores); then invalid.
            let (eax, ebx, level_type) = match e.index {
                0 => (0, 1, 1),
                1 => (bits_for(count), count, 2),
                _ => (0, 0, 0),
            };
            e.eax = eax;
            e.ebx = ebx;
            e.ecx = (level_type << 8) | (e.index & 0xff);
            e.edx = index;
        }
        LEAF_AMD_SIZE_IDS => {
            // NC = cores - 1, ApicIdCoreIdSize = bits for the core id.
            e.ecx = (e.ecx & !0xf0ff) | (bits_for(count) << 12) | (count - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            e.eax = index;
            e.ebx = index & 0xff; // compute unit id; 1 thread per unit
            e.ecx = 0; // node 0, 1 node per package
        }
        _ => {}
    }
}

/// Install CPUID for vCPU `index` of `count`.
pub fn setup(vcpu: &VcpuFd, base: &CpuId, index: u8, count: u8) -> Result<(), CpuidError> {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        patch(e, u32::from(index), u32::from(count.max(1)));
    }
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_apic_id_and_hypervisor_bit() {
        let mut e = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xffff_ff12,
            ..Default::default()
        };
        patch(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xff, 0x12);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_levels() {
        let mut e = kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            ..Default::default()
        };
        patch(&mut e, 2, 3);
        assert_eq!((e.eax, e.ebx, e.ecx >> 8, e.edx), (2, 3, 2, 2));
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
