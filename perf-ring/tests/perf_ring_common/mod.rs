//! Helpers shared by the perf_ring integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use perf_ring::{GuestRing, GuestRingLayout};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const PAGE: usize = 4096;
pub const BASE: u64 = 0x10_0000;
pub const CANARY: u8 = 0xA5;

/// Guest memory with a ring whose pages are scattered in reverse-ish,
/// interleaved order, every ring page separated by a canary page.
pub struct Scattered {
    pub mem: Arc<GuestMemoryMmap>,
    pub layout: GuestRingLayout,
    pub total_pages: usize,
}

pub fn scattered(data_pages: usize, aux_pages: usize) -> Scattered {
    let n = 1 + data_pages + aux_pages;
    let total_pages = 2 * n + 1;
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), total_pages * PAGE)]).unwrap();
    mem.write_slice(&vec![CANARY; total_pages * PAGE], GuestAddress(BASE))
        .unwrap();
    // Slot k is the odd page 2k+1; assign slots in a scrambled order.
    let mut slots: Vec<usize> = (0..n).collect();
    // Deterministic scramble: reverse, then interleave halves.
    slots.reverse();
    let (a, b) = slots.split_at(n / 2);
    let mut order = Vec::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            if let Some(x) = b.get(i / 2) {
                order.push(*x);
            }
        } else if let Some(x) = a.get(i / 2) {
            order.push(*x);
        }
    }
    order.extend(b.iter().skip(n.div_ceil(2)));
    order.truncate(n);
    assert_eq!(order.len(), n);
    let addr = |slot: usize| GuestAddress(BASE + ((2 * slot + 1) * PAGE) as u64);
    let layout = GuestRingLayout {
        page_size: PAGE,
        control: addr(order[0]),
        data: order[1..1 + data_pages].iter().map(|s| addr(*s)).collect(),
        aux: order[1 + data_pages..].iter().map(|s| addr(*s)).collect(),
    };
    Scattered {
        mem: Arc::new(mem),
        layout,
        total_pages,
    }
}

impl Scattered {
    pub fn ring(&self) -> Arc<GuestRing<GuestMemoryMmap>> {
        Arc::new(GuestRing::new(self.mem.clone(), self.layout.clone()).unwrap())
    }

    /// Every even (guard) page still holds the canary.
    pub fn canaries_intact(&self) -> bool {
        let mut buf = vec![0u8; PAGE];
        (0..self.total_pages).step_by(2).all(|p| {
            self.mem
                .read_slice(&mut buf, GuestAddress(BASE + (p * PAGE) as u64))
                .unwrap();
            buf.iter().all(|b| *b == CANARY)
        })
    }

    /// The data ring's bytes in ring order.
    pub fn data_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.layout.data.len() * PAGE];
        for (i, gpa) in self.layout.data.iter().enumerate() {
            self.mem
                .read_slice(&mut out[i * PAGE..(i + 1) * PAGE], *gpa)
                .unwrap();
        }
        out
    }

    pub fn ctrl_u64(&self, off: u64) -> u64 {
        self.mem
            .read_obj(self.layout.control.unchecked_add(off))
            .unwrap()
    }
}

/// Builds expected record bytes field by field.
#[derive(Default)]
pub struct Bytes8(pub Vec<u8>);

impl Bytes8 {
    pub fn header(mut self, ty: u32, misc: u16, size: u16) -> Self {
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(&misc.to_ne_bytes());
        self.0.extend_from_slice(&size.to_ne_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}
