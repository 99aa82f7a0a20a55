//! Fuzzes the parsers of the kernel image a user brings to `perfvisor
//! record`: the kallsyms table finder, BTF task layout, and the ORC table
//! file the outer perfvisor hands the inner one. Then walks the guest stack
//! with a fuzzed ORC table over fuzzed guest memory (identity-mapped
//! through fuzzed page tables).
//!
//! Checks: no panic; no walk longer than MAX_DEPTH frames; every kallsyms
//! result is sorted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::introspect::{GuestAddressSpace, MAX_DEPTH};
use vmm::orc::{OrcFormat, OrcTable, StartRegs};

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let addr = u64_at(rest, 0);
            if let Ok(Some(syms)) = vmm::kallsyms::find_symbols(rest.get(8..).unwrap_or(&[]), addr)
            {
                assert!(syms.windows(2).all(|w| w[0].addr <= w[1].addr));
            }
        }
        1 => {
            let _ = vmm::btf_layout::layout_from_btf(rest);
        }
        2 => {
            let _ = OrcTable::from_bytes(rest);
        }
        _ => {
            // [n entries: u8][ips: n x s32][entries: n x 6][regs: 7 x u64][memory...]
            let n = usize::from(*rest.first().unwrap_or(&0)) + 1;
            let ips_at = 1;
            let ents_at = ips_at + 4 * n;
            let regs_at = ents_at + 6 * n;
            let mem_at = regs_at + 56;
            let (Some(ips), Some(ents)) = (rest.get(ips_at..ents_at), rest.get(ents_at..regs_at))
            else {
                return;
            };
            let format = [OrcFormat::V1, OrcFormat::V2, OrcFormat::V3][usize::from(sel / 4) % 3];
            let Ok(table) = OrcTable::from_sections(ips, 0xffff_ffff_8100_0000, ents, format)
            else {
                return;
            };
            let r = |i: usize| u64_at(rest, regs_at + 8 * i);
            let start = StartRegs {
                ip: r(0),
                sp: r(1),
                bp: r(2),
                dx: r(3),
                di: r(4),
                r10: r(5),
                r13: r(6),
            };
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
            let body = rest.get(mem_at..).unwrap_or(&[]);
            let _ = mem.write_slice(&body[..body.len().min(1 << 16)], GuestAddress(0));
            // CR3 at 0: whatever the fuzzer wrote there is the page table.
            let mut space = GuestAddressSpace::new(&mem, 0);
            let c = table.walk(&mut space, start);
            assert!(c.frames.len() <= MAX_DEPTH);
        }
    }
});
