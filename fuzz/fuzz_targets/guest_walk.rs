//! Fuzzes what the host reads out of a guest's memory on every sample with
//! a callchain: the 4-level page-table walk and the frame-pointer walker
//! that follows guest RBP chains through it, into user space and out of a
//! kernel entry's pt_regs. The guest controls all of it.
//!
//! Input: [cr3: u64][rbp: u64][rsp: u64][kernel: u8][4 probe addresses:
//! 4 x u64][guest memory, up to 64 KiB at GPA 0].
//!
//! Checks: no panic (debug arithmetic included: the walker runs near
//! 2^64 on guest-chosen values); no chain longer than MAX_DEPTH; the user
//! part starts inside the chain; a translation is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::introspect::{walk_guest_stack, GuestAddressSpace, MAX_DEPTH};

const MEM: usize = 1 << 16;

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let cr3 = u64_at(data, 0);
    let rbp = u64_at(data, 8);
    let rsp = u64_at(data, 16);
    let kernel = data.get(24).is_some_and(|b| b & 1 == 1);
    let probes: Vec<u64> = (0..4).map(|i| u64_at(data, 25 + 8 * i)).collect();
    let body = data.get(57..).unwrap_or(&[]);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let _ = mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0));

    let mut space = GuestAddressSpace::new(&mem, cr3);
    let chain = walk_guest_stack(&mut space, rbp, rsp, kernel);
    assert!(chain.frames.len() <= MAX_DEPTH);
    if let Some(u) = chain.user_start {
        assert!(u <= chain.frames.len());
    }
    for va in probes {
        let first = space.translate(va);
        assert_eq!(first, space.translate(va));
        let mut buf = [0u8; 16];
        let _ = space.read_bytes(va, &mut buf);
        let _ = space.read_u64(va);
    }
});
