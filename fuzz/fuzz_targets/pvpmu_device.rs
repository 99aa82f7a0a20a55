//! Fuzzes the pvpmu device's register interface together with the shared
//! memory the guest controls (state pages, page lists, ring tails, AUX
//! sessions), interleaved with the host's sample and AUX writers, on one
//! thread, two vCPUs (and a third, out-of-range vCPU index).
//!
//! Feeds: a sequence of steps: raw MMIO reads and writes at any offset and
//! width, well-formed commands with fuzzed arguments, page lists and the
//! commands that name them, guest writes to any memory, to state-page
//! fields and to ring tails, and the host entry points (samples with
//! callchains, AUX bytes, trace records, flushes, task lookups).
//!
//! Checks after every step: no panic; the model of which pages the guest
//! has handed over (common/pvpmu.rs: SET_STATE and SET_RING replace a
//! bank's earlier pages, RESET releases them, AUX_CLEAR a buffer's) agrees
//! with the device's own page table, never gives a page to two owners;
//! and no byte of guest memory changes outside the pages the device holds
//! *now*: a page it never held, or one it held and released, keeps what
//! the guest last wrote there. Why: the guest is untrusted and the device
//! writes guest memory from the host; a write outside the declared pages
//! is host-driven corruption of guest memory the guest did not lend.

#![no_main]

use std::sync::Arc;

use devices::pvpmu::regs::{bank, cmd, status, BANK_BASE, BANK_SIZE, MMIO_SIZE};
use devices::pvpmu::{Pvpmu, PvpmuConfig};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

#[path = "common/pvpmu.rs"]
mod common;
use common::{host_op, Guest, Input, Mem};

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let cfg = PvpmuConfig {
        nr_vcpus: 2,
        max_freq: 1000,
        irq_line: 11,
        host_timer: false,
        callchains: true,
    };
    let dev = Pvpmu::new(mem.clone(), cfg, irq);
    let mut g = Guest::new(mem, dev.clone(), MEM);
    let mut callers = Vec::new();

    while let Some(op) = inp.byte() {
        let step = match op % 10 {
            // Raw MMIO write at any offset and width.
            0 => (|| {
                let (off, w, v) = (inp.u64()?, inp.byte()?, inp.u64()?);
                let width = [1usize, 2, 4, 8][usize::from(w % 4)];
                g.write(off % (MMIO_SIZE + 16), &v.to_le_bytes()[..width]);
                Some(())
            })(),
            // Raw MMIO read.
            1 => (|| {
                let (off, w) = (inp.u64()?, inp.byte()?);
                g.read(
                    off % (MMIO_SIZE + 16),
                    [1usize, 2, 4, 8][usize::from(w % 4)],
                );
                Some(())
            })(),
            // A well-formed command with fuzzed arguments.
            2 => (|| {
                let (n, c) = (inp.byte()?, inp.byte()?);
                let n = u64::from(n % 3);
                let b = BANK_BASE + n * BANK_SIZE;
                for i in 0..3 {
                    let a = if i == 1 {
                        u64::from(inp.byte()? % 20)
                    } else {
                        inp.addr(MEM)?
                    };
                    g.write(b + bank::ARG0 + 8 * i, &a.to_le_bytes());
                }
                g.write(b + bank::CMD, &u32::from(c % 9).to_le_bytes());
                Some(())
            })(),
            // The guest writes memory (state fields, lists, tails, garbage).
            3 => (|| {
                let (addr, len) = (inp.addr(MEM)?, inp.byte()?);
                let bytes: Vec<u8> = (0..len % 32).map_while(|_| inp.byte()).collect();
                g.poke(addr, &bytes);
                Some(())
            })(),
            // Host entry points on either vCPU (or past them).
            4..=6 => (|| {
                let n = usize::from(inp.byte()? % 3);
                host_op(&dev, n, &mut inp, &mut callers)
            })(),
            7 => g.field_op(&mut inp),
            8 => g.list_cmd_op(&mut inp),
            _ => g.tail_op(&mut inp),
        };
        g.check(format_args!("after step {op}"));
        if step.is_none() {
            break;
        }
    }
    // Releasing everything leaves the device holding nothing.
    for n in 0..2 {
        assert_eq!(g.cmd(n, cmd::RESET, &[]), status::OK);
    }
    let ids: Vec<u64> = g.oracle.aux.keys().copied().collect();
    for id in ids {
        assert_eq!(g.cmd(0, cmd::AUX_CLEAR, &[id]), status::OK);
    }
    assert_eq!(dev.counters().declared_pages, 0);
    // And nothing writes any page any more.
    for n in 0..3 {
        host_op(
            &dev,
            n,
            &mut Input(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            &mut callers,
        );
        dev.flush(n);
    }
    g.check(format_args!("after releasing everything"));
});
