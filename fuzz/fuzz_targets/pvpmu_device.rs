//! Fuzzes the pvpmu device's register interface together with the shared
//! memory the guest controls (state pages, page lists, ring tails, AUX
//! sessions), interleaved with the host's sample and AUX writers.
//!
//! Invariants checked after every step: no panic, and no byte of guest
//! memory changes outside pages the guest has declared to the device (the
//! fuzzer's own memory writes are mirrored in a shadow copy).

#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use devices::bus::BusDeviceSync;
use devices::pvpmu::regs::{bank, cmd, status, BANK_BASE, BANK_SIZE, MMIO_SIZE};
use devices::pvpmu::{HostSample, Pvpmu, PvpmuConfig};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 1 << 20;
const PAGE: u64 = 4096;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Some(v)
    }
    /// A guest address, biased towards page starts inside RAM.
    fn addr(&mut self) -> Option<u64> {
        Some(match self.byte()? % 4 {
            0 => self.u64()?,
            _ => u64::from(self.byte()?) * PAGE % (MEM as u64 + 2 * PAGE),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = Pvpmu::new(mem.clone(), PvpmuConfig { nr_vcpus: 2, max_freq: 1000, irq_line: 11, host_timer: false, callchains: true }, irq);
    let mmio = dev.mmio();
    let mut shadow = vec![0u8; MEM];
    let mut declared: BTreeSet<u64> = BTreeSet::new();
    let mut args = [[0u64; 3]; 2];

    while let Some(op) = inp.byte() {
        match op % 8 {
            // Raw MMIO write at any offset and width.
            0 => {
                let (Some(off), Some(w), Some(v)) = (inp.u64(), inp.byte(), inp.u64()) else { break };
                let width = [1usize, 2, 4, 8][usize::from(w % 4)];
                mmio.write(off % (MMIO_SIZE + 16), &v.to_le_bytes()[..width]);
            }
            // Raw MMIO read.
            1 => {
                let (Some(off), Some(w)) = (inp.u64(), inp.byte()) else { break };
                let mut buf = [0u8; 8];
                mmio.read(off % (MMIO_SIZE + 16), &mut buf[..[1usize, 2, 4, 8][usize::from(w % 4)]]);
            }
            // A well-formed command with fuzzed arguments.
            2 => {
                let (Some(n), Some(c)) = (inp.byte(), inp.byte()) else { break };
                let n = u64::from(n % 2);
                let b = BANK_BASE + n * BANK_SIZE;
                for i in 0..3 {
                    let Some(a) = (if i == 1 { inp.byte().map(|x| u64::from(x % 20)) } else { inp.addr() }) else { return };
                    args[n as usize][i] = a;
                    mmio.write(b + bank::ARG0 + 8 * i as u64, &a.to_le_bytes());
                }
                let command = u32::from(c % 9);
                mmio.write(b + bank::CMD, &command.to_le_bytes());
                let mut st = [0u8; 4];
                mmio.read(b + bank::STATUS, &mut st);
                if u32::from_le_bytes(st) == status::OK {
                    let a = args[n as usize];
                    let list = |count: u64| -> Vec<u64> {
                        (0..count)
                            .filter_map(|i| mem.read_obj::<u64>(GuestAddress(a[0] + 8 * i)).ok())
                            .collect()
                    };
                    match command {
                        cmd::SET_STATE => {
                            declared.insert(a[0]);
                        }
                        cmd::SET_RING => declared.extend(list(a[1] + 1)),
                        cmd::AUX_SET => declared.extend(list(a[1])),
                        _ => {}
                    }
                }
            }
            // The guest writes memory (state fields, lists, tails, garbage).
            3 => {
                let (Some(addr), Some(len)) = (inp.addr(), inp.byte()) else { break };
                let bytes: Vec<u8> = (0..len % 32).map_while(|_| inp.byte()).collect();
                let addr = addr % MEM as u64;
                let end = (addr as usize + bytes.len()).min(MEM);
                let bytes = &bytes[..end - addr as usize];
                mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                shadow[addr as usize..end].copy_from_slice(bytes);
            }
            // Host samples and AUX records on either vCPU.
            4 | 5 => {
                let (Some(n), Some(ip)) = (inp.byte(), inp.u64()) else { break };
                let s = HostSample { ip, user: ip & 1 == 0, kvmclock_ns: ip, host_ns: ip >> 8, callers: &[ip, ip >> 1], user_start: (ip & 2 == 0).then_some(1), idle: ip & 4 == 0, task: (ip & 8 == 0).then_some((ip as u32, (ip >> 32) as u32)) };
                dev.record_sample(usize::from(n % 3), &s);
            }
            6 => {
                let (Some(n), Some(len)) = (inp.byte(), inp.byte()) else { break };
                dev.aux_append(usize::from(n % 3), &vec![0xa5; usize::from(len) * 8]);
            }
            _ => {
                let Some(n) = inp.byte() else { break };
                dev.flush(usize::from(n % 3));
                let _ = dev.wanted_interval(usize::from(n % 3));
            }
        }
        // Every byte outside declared pages is what the fuzzer wrote.
        let mut now = vec![0u8; MEM];
        mem.read_slice(&mut now, GuestAddress(0)).unwrap();
        for page in 0..(MEM as u64 / PAGE) {
            let gpa = page * PAGE;
            if declared.contains(&gpa) {
                continue;
            }
            let r = gpa as usize..(gpa + PAGE) as usize;
            assert!(now[r.clone()] == shadow[r], "device wrote undeclared page 0x{gpa:x}");
        }
        // Declared pages may be written by the device: adopt their contents.
        for &gpa in &declared {
            if gpa < MEM as u64 {
                let r = gpa as usize..(gpa + PAGE) as usize;
                shadow[r.clone()].copy_from_slice(&now[r]);
            }
        }
    }
});
