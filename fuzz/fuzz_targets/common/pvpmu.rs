//! Shared by the pvpmu device fuzz targets (pvpmu_device,
//! pvpmu_device_threads): the input slicer, the guest side that drives the
//! device's registers, and the oracle of the pages the device may write.
//!
//! The oracle is the model of docs/pvpmu.md's ownership rules, kept apart
//! from the device's own table: a bank owns its state page (SET_STATE) and
//! its ring's pages (SET_RING), each replaced by the next successful
//! command of the same kind and released by RESET; an AUX buffer
//! (AUX_SET) owns its pages until AUX_CLEAR. Every command the guest side
//! issues, well-formed or a raw register write that happens to hit a CMD
//! register, is observed (STATUS, RET0 and the latched arguments read back
//! through MMIO) and applied to the model.
//!
//! The memory check: `shadow` holds what every page the device may NOT
//! write must contain. The guest side's own writes go to memory and
//! shadow alike; a page the device holds is not compared; the moment a
//! page is released (the releasing command has returned, so nothing may
//! write it any more) its current contents become its shadow. So any
//! device write to a page it never held, or to one after its release, is
//! caught by the next [`Guest::check`].
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use devices::bus::BusDeviceSync;
use devices::pvpmu::regs::{
    bank, cmd, status, BANK_BASE, BANK_SIZE, MAX_AUX_PAGES, MAX_RING_PAGES, PAGE_SIZE,
};
use devices::pvpmu::state::guest;
use devices::pvpmu::trace::ExitReason;
use devices::pvpmu::{HostSample, Pvpmu, PvpmuMmio, TraceExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Mem = GuestMemoryMmap<()>;

pub const PAGE: u64 = PAGE_SIZE;

/// Bytes of input, consumed from the front.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub fn u32(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..4 {
            v |= u32::from(self.byte()?) << (8 * i);
        }
        Some(v)
    }
    pub fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Some(v)
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    /// A guest address, biased towards page starts inside (and just past)
    /// a memory of `mem` bytes.
    pub fn addr(&mut self, mem: usize) -> Option<u64> {
        Some(match self.byte()? % 4 {
            0 => self.u64()?,
            _ => u64::from(self.byte()?) * PAGE % (mem as u64 + 2 * PAGE),
        })
    }
}

/// Which pages the guest has handed to the device and not taken back.
#[derive(Debug, Default)]
pub struct Oracle {
    pub state: Vec<Option<u64>>,
    pub ring: Vec<Vec<u64>>,
    pub aux: BTreeMap<u64, Vec<u64>>,
}

impl Oracle {
    pub fn new(banks: usize) -> Oracle {
        Oracle {
            state: vec![None; banks],
            ring: vec![Vec::new(); banks],
            aux: BTreeMap::new(),
        }
    }

    /// Every page the device may write now.
    pub fn allowed(&self) -> BTreeSet<u64> {
        let mut s: BTreeSet<u64> = self.state.iter().flatten().copied().collect();
        s.extend(self.ring.iter().flatten());
        s.extend(self.aux.values().flatten());
        s
    }

    /// The number of pages held, counting a page twice if two owners held
    /// it (which the device must never allow).
    pub fn holdings(&self) -> usize {
        self.state.iter().flatten().count()
            + self.ring.iter().map(Vec::len).sum::<usize>()
            + self.aux.values().map(Vec::len).sum::<usize>()
    }
}

/// A sample from input bytes (`callers` is the caller's buffer).
pub fn host_sample<'c>(inp: &mut Input<'_>, callers: &'c mut Vec<u64>) -> Option<HostSample<'c>> {
    let ip = inp.u64()?;
    let f = inp.byte()?;
    let n = inp.byte()?;
    callers.clear();
    // Sometimes past MAX_CALLCHAIN (128).
    let len = if n & 0x80 != 0 {
        100 + usize::from(n & 0x7f)
    } else {
        usize::from(n % 8)
    };
    callers.extend((0..len as u64).map(|i| ip.rotate_left(i as u32) ^ i));
    Some(HostSample {
        ip,
        user: f & 1 != 0,
        kvmclock_ns: ip >> (f & 7),
        host_ns: ip >> 8,
        callers,
        user_start: (f & 2 != 0).then_some(usize::from(n % 9)),
        idle: f & 4 != 0,
        task: (f & 8 != 0).then_some((ip as u32, (ip >> 32) as u32)),
    })
}

/// One call of the device's host-side entry points for vCPU `n` (what the
/// VMM's sampler and exit hooks call on vCPU `n`'s thread).
pub fn host_op(
    dev: &Pvpmu<Mem>,
    n: usize,
    inp: &mut Input<'_>,
    callers: &mut Vec<u64>,
) -> Option<()> {
    match inp.byte()? % 8 {
        0 | 1 => {
            let s = host_sample(inp, callers)?;
            dev.record_sample(n, &s);
        }
        2 => {
            let len = usize::from(inp.byte()?);
            dev.aux_append(n, &vec![0xa5; len * 8]);
        }
        3 => {
            let r = inp.byte()?;
            let exit = TraceExit {
                reason: ExitReason::ALL[usize::from(r) % ExitReason::ALL.len()],
                rip: inp.u64()?,
                addr: u64::from(r) << 12,
                size: u32::from(r % 9),
                handling_ns: u64::from(r) * 100,
                kvmclock_ns: inp.u64()?,
            };
            dev.trace_exit(n, &exit);
        }
        4 => {
            let k = usize::from(inp.byte()? % 5);
            let names: Vec<String> = (0..k).map(|i| format!("stat{i}")).collect();
            let values: Vec<u64> = (0..k as u64).collect();
            dev.trace_stats(n, inp.u64()?, &names, &values);
        }
        5 => {
            let t = inp.u64()?;
            let _ = dev.tick_tasks(n, &[t, t.wrapping_add(1000), t.wrapping_add(2000)]);
        }
        6 => {
            let _ = dev.wanted_interval(n);
            let _ = dev.wants_callchain(n);
            let _ = dev.aux_wanted(n);
            let _ = dev.take_flush(n);
        }
        _ => dev.flush(n),
    }
    Some(())
}

/// The guest: register accesses and memory writes, with the oracle and the
/// shadow kept in step.
pub struct Guest {
    pub mem: Arc<Mem>,
    pub dev: Pvpmu<Mem>,
    pub mmio: PvpmuMmio<Mem>,
    pub banks: usize,
    pub oracle: Oracle,
    pub shadow: Vec<u8>,
}

impl Guest {
    /// Memory must be all zero (as a new GuestMemoryMmap is).
    pub fn new(mem: Arc<Mem>, dev: Pvpmu<Mem>, size: usize) -> Guest {
        let banks = dev.config().nr_vcpus;
        Guest {
            mmio: dev.mmio(),
            mem,
            dev,
            banks,
            oracle: Oracle::new(banks),
            shadow: vec![0u8; size],
        }
    }

    fn size(&self) -> u64 {
        self.shadow.len() as u64
    }

    pub fn read(&self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.mmio.read(off, &mut b[..width]);
        u64::from_le_bytes(b)
    }

    /// Any register write; one that runs a command is observed.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        let target = off
            .checked_sub(BANK_BASE)
            .map(|rel| ((rel / BANK_SIZE) as usize, rel % BANK_SIZE))
            .filter(|&(n, reg)| n < self.banks && reg == bank::CMD && data.len() == 4);
        let Some((n, _)) = target else {
            self.mmio.write(off, data);
            return;
        };
        let command = u32::from_le_bytes(data.try_into().unwrap());
        // The page list as the device will read it: taken before the
        // command, whose pages may hold the list itself (a control page
        // the producer then initialises).
        let b = BANK_BASE + n as u64 * BANK_SIZE;
        let args = [0, 1, 2].map(|i| self.read(b + bank::ARG0 + 8 * i, 8));
        let list = match command {
            cmd::SET_RING => self.list(args[0], args[1].saturating_add(1)),
            cmd::AUX_SET => self.list(args[0], args[1]),
            _ => None,
        };
        self.mmio.write(off, data);
        self.observe(n, command, args, list);
    }

    /// A well-formed command on bank `n` (any `n`); returns STATUS.
    pub fn cmd(&mut self, n: u64, command: u32, args: &[u64]) -> u32 {
        let b = BANK_BASE + n * BANK_SIZE;
        for (i, a) in args.iter().enumerate() {
            self.write(b + bank::ARG0 + 8 * i as u64, &a.to_le_bytes());
        }
        self.write(b + bank::CMD, &command.to_le_bytes());
        self.read(b + bank::STATUS, 4) as u32
    }

    /// The page list of `count` entries at `at`, if it is in RAM and no
    /// longer than any list a command takes.
    fn list(&self, at: u64, count: u64) -> Option<Vec<u64>> {
        if count > MAX_AUX_PAGES.max(MAX_RING_PAGES + 1) {
            return None;
        }
        (0..count)
            .map(|i| {
                let a = at.checked_add(8 * i)?;
                self.mem.read_obj::<u64>(GuestAddress(a)).ok()
            })
            .collect()
    }

    /// Apply command `command`, just run on bank `n`, to the oracle.
    fn observe(&mut self, n: usize, command: u32, args: [u64; 3], list: Option<Vec<u64>>) {
        let b = BANK_BASE + n as u64 * BANK_SIZE;
        if self.read(b + bank::STATUS, 4) as u32 != status::OK {
            return;
        }
        let list = || list.expect("a page list the device accepted was in RAM");
        let before = self.oracle.allowed();
        match command {
            cmd::SET_STATE => self.oracle.state[n] = Some(args[0]),
            cmd::SET_RING => self.oracle.ring[n] = list(),
            cmd::RESET => {
                self.oracle.state[n] = None;
                self.oracle.ring[n].clear();
            }
            cmd::AUX_SET => {
                let id = self.read(b + bank::RET0, 8);
                let pages = list();
                assert!(
                    self.oracle.aux.insert(id, pages).is_none(),
                    "AUX id {id} given twice"
                );
            }
            cmd::AUX_CLEAR => {
                let gone = self.oracle.aux.remove(&args[0]);
                assert!(
                    gone.is_some(),
                    "AUX_CLEAR of unknown buffer {} succeeded",
                    args[0]
                );
            }
            _ => {}
        }
        let after = self.oracle.allowed();
        assert_eq!(
            self.oracle.holdings(),
            after.len(),
            "a page went to two owners: {:?}",
            self.oracle
        );
        assert!(
            after
                .iter()
                .all(|p| p % PAGE == 0 && p + PAGE <= self.size()),
            "{after:?}"
        );
        assert_eq!(
            self.dev.counters().declared_pages,
            after.len() as u64,
            "the device's page table and the model disagree after command {command} on bank {n}"
        );
        // Released: from now on its contents are fixed.
        for p in before.difference(&after) {
            let r = *p as usize..(*p + PAGE) as usize;
            self.mem
                .read_slice(&mut self.shadow[r], GuestAddress(*p))
                .unwrap();
        }
    }

    /// The guest writes memory (clipped to RAM).
    pub fn poke(&mut self, addr: u64, bytes: &[u8]) {
        let size = self.size();
        let addr = addr % size;
        let end = (addr + bytes.len() as u64).min(size);
        let bytes = &bytes[..(end - addr) as usize];
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.shadow[addr as usize..end as usize].copy_from_slice(bytes);
    }

    pub fn poke64(&mut self, addr: u64, v: u64) {
        self.poke(addr, &v.to_le_bytes());
    }

    /// The first page the device does not hold that is not as the guest
    /// left it: (page, first changed byte).
    pub fn violation(&self) -> Option<(u64, u64)> {
        let allowed = self.oracle.allowed();
        let mut now = [0u8; PAGE as usize];
        for gpa in (0..self.size()).step_by(PAGE as usize) {
            if allowed.contains(&gpa) {
                continue;
            }
            self.mem.read_slice(&mut now, GuestAddress(gpa)).unwrap();
            let was = &self.shadow[gpa as usize..(gpa + PAGE) as usize];
            if now[..] != *was {
                let at = now.iter().zip(was).position(|(a, b)| a != b).unwrap();
                return Some((gpa, gpa + at as u64));
            }
        }
        None
    }

    /// Every page the device does not hold is as the guest left it.
    pub fn check(&self, when: std::fmt::Arguments<'_>) {
        if let Some((gpa, at)) = self.violation() {
            panic!(
                "{when}: the device wrote page 0x{gpa:x} (first at 0x{at:x}), which it does not hold; held: {:?}",
                self.oracle
            );
        }
    }
}

/// The guest half of the state page, with each field's width.
pub const STATE_FIELDS: &[(u64, usize)] = &[
    (guest::VERSION, 4),
    (guest::ACTIVE, 4),
    (guest::GEN, 4),
    (guest::FLAGS, 4),
    (guest::SAMPLE_TYPE, 8),
    (guest::READ_FORMAT, 8),
    (guest::SAMPLE_ID_ALL, 8),
    (guest::PERIOD, 8),
    (guest::ID, 8),
    (guest::STREAM_ID, 8),
    (guest::CPU, 4),
    (guest::PID_FILTER, 4),
    (guest::CLOCK_OFFSET, 8),
    (guest::CURRENT_TASK_GPA, 8),
    (guest::PAGE_OFFSET, 8),
    (guest::TASK_PID_OFF, 4),
    (guest::TASK_TGID_OFF, 4),
    (guest::THROTTLED, 4),
    (guest::KIMAGE_VIRT, 8),
    (guest::KIMAGE_PHYS, 8),
    (guest::ACTIVE_SINCE, 8),
    (guest::AUX_SEQ, 8),
    (guest::AUX_BUF, 8),
    (guest::AUX_HEAD, 8),
    (guest::AUX_ROOM, 8),
    (guest::AUX_WAKEUP, 8),
    (guest::SWITCH_SEQ, 8),
    (guest::SWITCH_LOG, 8),
    (guest::SWITCH_LOG + 8, 8),
];

impl Guest {
    /// A page of RAM named by one input byte.
    pub fn page(&self, b: u8) -> u64 {
        u64::from(b) * PAGE % self.size()
    }

    /// A value for a state-page field: raw, small, an AUX buffer the
    /// guest holds, a sample_type the host produces, an address in RAM,
    /// or one.
    fn value(&mut self, inp: &mut Input<'_>) -> Option<u64> {
        Some(match inp.byte()? % 6 {
            0 => inp.u64()?,
            1 => u64::from(inp.byte()?),
            2 => {
                let i = usize::from(inp.byte()?);
                let ids: Vec<u64> = self.oracle.aux.keys().copied().collect();
                if ids.is_empty() {
                    0
                } else {
                    ids[i % ids.len()]
                }
            }
            3 => devices::pvpmu::SAMPLE_TYPES & inp.u64()?,
            4 => self.page(inp.byte()?) + u64::from(inp.byte()?) * 8,
            _ => 1,
        })
    }

    /// The guest writes one field of bank `n`'s state page (the one the
    /// device holds, else the page the input names).
    pub fn field_op(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let n = usize::from(inp.byte()?) % self.banks;
        let (off, width) = STATE_FIELDS[usize::from(inp.byte()?) % STATE_FIELDS.len()];
        let page = match self.oracle.state[n] {
            Some(p) => p,
            None => self.page(inp.byte()?),
        };
        let v = self.value(inp)?;
        self.poke(page + off, &v.to_le_bytes()[..width]);
        Some(())
    }

    /// The guest's consumer moves bank `n`'s ring tail (`data_tail` of its
    /// control page) to any value.
    pub fn tail_op(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let n = usize::from(inp.byte()?) % self.banks;
        let tail = inp.u64()?;
        if let Some(&ctrl) = self.oracle.ring[n].first() {
            self.poke(
                ctrl + perf_ring::abi::ctrl::DATA_TAIL as u64,
                &tail.to_le_bytes(),
            );
        }
        Some(())
    }

    /// A page list written to page `1 + bank` and a command that names it:
    /// SET_RING (a control page and 1, 2 or 4 data pages) or AUX_SET
    /// (1, 2 or 4 pages), pages from the input; or SET_STATE, RESET,
    /// START, STOP, FLUSH or AUX_CLEAR of a held buffer.
    pub fn list_cmd_op(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let n = u64::from(inp.byte()?) % (self.banks as u64 + 1);
        let c = inp.byte()?;
        let count = 1u64 << (c >> 4) % 3;
        let list = PAGE * (1 + n);
        match c % 8 {
            0 | 1 => {
                let ring = c % 8 == 0;
                let pages: Vec<u64> = (0..count + u64::from(ring))
                    .map(|_| inp.byte().map(|b| self.page(b)))
                    .collect::<Option<_>>()?;
                for (i, p) in pages.iter().enumerate() {
                    self.poke64(list + 8 * i as u64, *p);
                }
                let command = if ring { cmd::SET_RING } else { cmd::AUX_SET };
                self.cmd(n, command, &[list, count, 0]);
            }
            2 => {
                let p = self.page(inp.byte()?);
                self.cmd(n, cmd::SET_STATE, &[p]);
            }
            3 => {
                let i = usize::from(inp.byte()?);
                let ids: Vec<u64> = self.oracle.aux.keys().copied().collect();
                let id = if ids.is_empty() {
                    u64::from(c)
                } else {
                    ids[i % ids.len()]
                };
                self.cmd(n, cmd::AUX_CLEAR, &[id]);
            }
            4 => {
                self.cmd(n, cmd::RESET, &[]);
            }
            5 | 6 => {
                self.cmd(n, cmd::START, &[]);
            }
            _ => {
                let command = if c & 0x80 != 0 { cmd::STOP } else { cmd::FLUSH };
                self.cmd(n, command, &[]);
            }
        }
        Some(())
    }

    /// Bank `n` set up as the driver does it: state page, a ring of one
    /// control and `data` pages (list on page `1 + n`), an event that asks
    /// for every field the host produces, START.
    pub fn setup_bank(&mut self, n: usize, state: u64, ring: &[u64]) {
        let list = PAGE * (1 + n as u64);
        for (i, p) in ring.iter().enumerate() {
            self.poke64(list + 8 * i as u64, *p);
        }
        assert_eq!(self.cmd(n as u64, cmd::SET_STATE, &[state]), status::OK);
        let nr_data = ring.len() as u64 - 1;
        assert_eq!(
            self.cmd(n as u64, cmd::SET_RING, &[list, nr_data]),
            status::OK
        );
        let w32 = |g: &mut Guest, off: u64, v: u32| g.poke(state + off, &v.to_le_bytes());
        let w64 = |g: &mut Guest, off: u64, v: u64| g.poke(state + off, &v.to_le_bytes());
        w32(self, guest::VERSION, 1);
        w32(self, guest::GEN, 1);
        w64(self, guest::SAMPLE_TYPE, devices::pvpmu::SAMPLE_TYPES);
        w64(self, guest::SAMPLE_ID_ALL, 1);
        w64(self, guest::PERIOD, 1_000_000);
        w64(self, guest::ID, 42 + n as u64);
        w32(self, guest::CPU, n as u32);
        w64(self, guest::CURRENT_TASK_GPA, state + 0x700);
        w32(self, guest::TASK_PID_OFF, 0x10);
        w32(self, guest::TASK_TGID_OFF, 0x14);
        w32(self, guest::ACTIVE, 1);
        assert_eq!(self.cmd(n as u64, cmd::START, &[]), status::OK);
    }

    /// An AUX buffer of `pages` (list on page `1 + banks`) and a session
    /// for it posted on bank `n`'s state page.
    pub fn setup_aux(&mut self, n: usize, pages: &[u64]) {
        let list = PAGE * (1 + self.banks as u64);
        for (i, p) in pages.iter().enumerate() {
            self.poke64(list + 8 * i as u64, *p);
        }
        assert_eq!(
            self.cmd(n as u64, cmd::AUX_SET, &[list, pages.len() as u64, 0]),
            status::OK
        );
        let id = self.read(BANK_BASE + n as u64 * BANK_SIZE + bank::RET0, 8);
        let state = self.oracle.state[n].expect("the bank has a state page");
        let size = pages.len() as u64 * PAGE;
        for (off, v) in [
            (guest::AUX_BUF, id),
            (guest::AUX_HEAD, 0),
            (guest::AUX_ROOM, size),
            (guest::AUX_WAKEUP, size / 2),
            (guest::AUX_SEQ, 1),
        ] {
            self.poke64(state + off, v);
        }
    }
}
