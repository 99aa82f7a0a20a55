//! Fuzzes the pvpmu device from two threads at once, as a VM with 2-4
//! vCPUs drives it: the device is on the MMIO bus with no outer lock, so a
//! guest's commands on one vCPU run while the host's sampler writes
//! samples and AUX bytes for the others.
//!
//! Feeds: a device configuration (2-4 vCPUs, host timer, callchains), an
//! optional set-up as the driver does it (every bank with a state page, a
//! ring and an active event, an AUX session on bank 1), then up to 8
//! rounds of two op lists run concurrently:
//! - thread "guest" (vCPU 0's thread): commands and raw register writes
//!   on any bank, page lists, state-page fields, ring tails, any memory,
//!   and the host entry points for vCPU 0 (its own);
//! - thread "sampler" (the other vCPUs' threads): samples, AUX bytes,
//!   trace records, flushes and lookups for vCPUs 1..n (and one past).
//!
//! Only the guest thread changes which pages the device holds, so the
//! model of those pages (common/pvpmu.rs) follows the device exactly: each
//! command is observed after it returns, and a page it released is frozen
//! there (the device took the vCPU's slot lock to release it, so no writer
//! may touch it after).
//!
//! Checks: no panic; no deadlock (each round's threads finish their
//! bounded op lists within 20 s, else the target panics); the model agrees
//! with the device's page table after every command; after every round
//! (both threads done) no byte changed outside the pages the device holds
//! now, including pages released during the round, whatever the sampler
//! was doing when they were released. Why: the per-slot locking and the
//! AUX/page tables are what keep a racing sampler from writing a page the
//! guest took back; a single-threaded target cannot reach those races.

#![no_main]

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use devices::pvpmu::regs::{bank, BANK_BASE, MMIO_SIZE};
use devices::pvpmu::{Pvpmu, PvpmuConfig};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

#[path = "common/pvpmu.rs"]
mod common;
use common::{host_op, Guest, Input, Mem, PAGE};

const MEM: usize = 1 << 20;
const ROUNDS: usize = 8;
/// Ops per thread per round, at most.
const OPS: usize = 48;
const DEADLINE: Duration = Duration::from_secs(20);

/// One guest-thread op.
fn guest_op(
    g: &mut Guest,
    dev: &Pvpmu<Mem>,
    inp: &mut Input<'_>,
    callers: &mut Vec<u64>,
) -> Option<()> {
    match inp.byte()? % 8 {
        0 => {
            let (off, w, v) = (inp.u64()?, inp.byte()?, inp.u64()?);
            let width = [1usize, 2, 4, 8][usize::from(w % 4)];
            g.write(off % (MMIO_SIZE + 16), &v.to_le_bytes()[..width]);
        }
        1 => {
            let (addr, len) = (inp.addr(MEM)?, inp.byte()?);
            let bytes = inp.bytes(usize::from(len % 32))?.to_vec();
            g.poke(addr, &bytes);
        }
        2 | 3 => g.list_cmd_op(inp)?,
        4 => g.field_op(inp)?,
        5 => g.tail_op(inp)?,
        6 => {
            // Read back a bank's registers (they are the sampler's locks too).
            let n = u64::from(inp.byte()?) % (g.banks as u64 + 1);
            for r in [bank::STATUS, bank::ARG0, bank::RET0] {
                g.read(
                    BANK_BASE + n * 0x40 + r,
                    if r == bank::STATUS { 4 } else { 8 },
                );
            }
        }
        _ => host_op(dev, 0, inp, callers)?,
    }
    Some(())
}

/// A round's ops for one thread: a count, then that many ops' bytes (a
/// byte length then the bytes, so each thread's ops are fixed before the
/// round starts).
fn round_ops<'a>(inp: &mut Input<'a>) -> Option<Vec<&'a [u8]>> {
    let n = usize::from(inp.byte()?) % (OPS + 1);
    (0..n)
        .map(|_| {
            let len = usize::from(inp.byte()? % 40);
            inp.bytes(len)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(c) = inp.byte() else { return };
    let nr = 2 + usize::from(c % 3);
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let cfg = PvpmuConfig {
        nr_vcpus: nr,
        max_freq: 1_000_000,
        irq_line: 11,
        host_timer: c & 4 != 0,
        callchains: c & 8 != 0,
    };
    let dev = Pvpmu::new(mem.clone(), cfg, irq);
    let mut g = Guest::new(mem, dev.clone(), MEM);
    if c & 16 != 0 {
        // Pages 16.. : bank n's state page, then its control and data pages.
        for n in 0..nr {
            let base = 16 + 8 * n as u64;
            let data = 1u64 << (n % 3);
            let ring: Vec<u64> = (0..=data).map(|i| (base + 1 + i) * PAGE).collect();
            g.setup_bank(n, base * PAGE, &ring);
        }
        g.setup_aux(1, &[64 * PAGE, 65 * PAGE]);
        g.check(format_args!("after the set-up"));
    }

    for round in 0..ROUNDS {
        let (Some(a), Some(b)) = (round_ops(&mut inp), round_ops(&mut inp)) else {
            break;
        };
        let start = Arc::new(Barrier::new(2));
        let (tx, rx) = mpsc::channel();
        let sampler = {
            let (dev, start, tx) = (dev.clone(), start.clone(), tx.clone());
            let ops: Vec<Vec<u8>> = b.iter().map(|o| o.to_vec()).collect();
            std::thread::spawn(move || {
                let mut callers = Vec::new();
                start.wait();
                for op in &ops {
                    let mut i = Input(op);
                    let Some(k) = i.byte() else { continue };
                    // vCPUs 1..nr, and one past the last.
                    let n = 1 + usize::from(k) % nr;
                    let _ = host_op(&dev, n, &mut i, &mut callers);
                }
                let _ = tx.send(None);
            })
        };
        let guest = {
            let (dev, start) = (dev.clone(), start.clone());
            let ops: Vec<Vec<u8>> = a.iter().map(|o| o.to_vec()).collect();
            let mut g = g;
            std::thread::spawn(move || {
                let mut callers = Vec::new();
                start.wait();
                for op in &ops {
                    let _ = guest_op(&mut g, &dev, &mut Input(op), &mut callers);
                }
                let _ = tx.send(Some(g));
            })
        };
        let mut back = None;
        for _ in 0..2 {
            match rx.recv_timeout(DEADLINE) {
                Ok(Some(x)) => back = Some(x),
                Ok(None) => {}
                Err(e) => {
                    panic!("round {round}: a thread did not finish in {DEADLINE:?} ({e}): deadlock")
                }
            }
        }
        sampler.join().expect("the sampler thread");
        guest.join().expect("the guest thread");
        g = back.expect("the guest thread hands the guest back");
        g.check(format_args!("after round {round}"));
    }
});
