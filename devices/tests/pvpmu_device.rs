//! The pvpmu host device against guest memory: commands, validation of
//! hostile input, sample formatting, AUX sessions, and a concurrent guest
//! consumer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::bus::BusDeviceSync;
use devices::pvpmu::regs::{bank, cmd, global, status, BANK_BASE, BANK_SIZE, MAGIC_VALUE};
use devices::pvpmu::state::{flags, guest, host};
use devices::pvpmu::{HostSample, Pvpmu, PvpmuConfig, PvpmuMmio, SampleResult};
use perf_ring::abi::{aux_flag, misc, record, sample};
use perf_ring::{
    decode, Body, Checker, CheckerConfig, Consumer, GuestRing, GuestRingLayout, ReadMode,
    SampleFormat,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 16 << 20;
const LIST: u64 = 0x10000;
const CTRL: u64 = 0x20000;
const DATA: u64 = 0x21000;
const DATA_PAGES: u64 = 4;
const STATE: u64 = 0x30000;
const CURRENT_TASK: u64 = 0x40000;
const TASK: u64 = 0x50000;
const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
const AUX_LIST: u64 = 0x60000;
const AUX: u64 = 0x70000;
const EVENT_ID: u64 = 42;
const SAMPLE_TYPE: u64 =
    sample::IDENTIFIER | sample::IP | sample::TID | sample::TIME | sample::CPU | sample::PERIOD;

struct Rig {
    mem: Arc<Mem>,
    dev: Pvpmu<Mem>,
    mmio: PvpmuMmio<Mem>,
    irq: EventFd,
}

fn rig(nr_vcpus: usize) -> Rig {
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = Pvpmu::new(
        mem.clone(),
        PvpmuConfig {
            nr_vcpus,
            max_freq: 1000,
            irq_line: 11,
            host_timer: false,
            callchains: true,
        },
        irq.try_clone().unwrap(),
    );
    let mmio = dev.mmio();
    Rig {
        mem,
        dev,
        mmio,
        irq,
    }
}

impl Rig {
    fn read32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn read64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.mmio.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn cmd(&mut self, n: u64, command: u32, args: &[u64]) -> u32 {
        let b = BANK_BASE + n * BANK_SIZE;
        for (i, a) in args.iter().enumerate() {
            self.mmio
                .write(b + bank::ARG0 + 8 * i as u64, &a.to_le_bytes());
        }
        self.mmio.write(b + bank::CMD, &command.to_le_bytes());
        self.read32(b + bank::STATUS)
    }

    fn ret0(&mut self, n: u64) -> u64 {
        self.read64(BANK_BASE + n * BANK_SIZE + bank::RET0)
    }

    fn w32(&self, addr: u64, v: u32) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    fn w64(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    fn r64(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Ring list at LIST: control page then DATA_PAGES pages.
    fn write_ring_list(&self) {
        self.w64(LIST, CTRL);
        for i in 0..DATA_PAGES {
            self.w64(LIST + 8 * (i + 1), DATA + i * 0x1000);
        }
    }

    /// The guest's event fields and the task the host should find.
    fn activate(&self, gen: u32, flags_: u32, sample_type: u64) {
        self.w32(STATE + guest::VERSION, 1);
        self.w32(STATE + guest::GEN, gen);
        self.w32(STATE + guest::FLAGS, flags_);
        self.w64(STATE + guest::SAMPLE_TYPE, sample_type);
        self.w64(STATE + guest::READ_FORMAT, 0);
        self.w64(STATE + guest::SAMPLE_ID_ALL, 1);
        self.w64(STATE + guest::PERIOD, 1_000_000);
        self.w64(STATE + guest::ID, EVENT_ID);
        self.w64(STATE + guest::STREAM_ID, EVENT_ID);
        self.w32(STATE + guest::CPU, 0);
        self.w64(STATE + guest::CLOCK_OFFSET, 1000);
        self.w64(STATE + guest::CURRENT_TASK_GPA, CURRENT_TASK);
        self.w64(STATE + guest::PAGE_OFFSET, PAGE_OFFSET);
        self.w32(STATE + guest::TASK_PID_OFF, 0x10);
        self.w32(STATE + guest::TASK_TGID_OFF, 0x14);
        self.w64(CURRENT_TASK, PAGE_OFFSET + TASK);
        self.w32(TASK + 0x10, 77);
        self.w32(TASK + 0x14, 70);
        self.w32(STATE + guest::ACTIVE, 1);
    }

    fn setup(&mut self) {
        self.write_ring_list();
        assert_eq!(self.cmd(0, cmd::SET_STATE, &[STATE]), status::OK);
        assert_eq!(self.cmd(0, cmd::SET_RING, &[LIST, DATA_PAGES]), status::OK);
        assert_eq!(self.cmd(0, cmd::START, &[]), status::OK);
        self.activate(1, 0, SAMPLE_TYPE);
    }

    /// A guest-side view of the ring (the same pages, as the driver maps them).
    fn consumer(&self) -> Consumer<GuestRing<Mem>> {
        let layout = GuestRingLayout {
            page_size: 4096,
            control: GuestAddress(CTRL),
            data: (0..DATA_PAGES)
                .map(|i| GuestAddress(DATA + i * 0x1000))
                .collect(),
            aux: vec![],
        };
        Consumer::new(
            GuestRing::new(self.mem.clone(), layout).unwrap(),
            ReadMode::Forward,
        )
    }
}

fn hs(ip: u64, user: bool, t: u64) -> HostSample<'static> {
    HostSample {
        ip,
        user,
        kvmclock_ns: t,
        host_ns: t,
        callers: &[],
        user_start: None,
        idle: false,
        task: None,
    }
}

/// Snapshot of every byte of guest memory outside `except` page ranges.
fn snapshot(mem: &Mem, except: &[(u64, u64)]) -> Vec<u8> {
    let mut all = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut all, GuestAddress(0)).unwrap();
    for &(start, len) in except {
        all[start as usize..(start + len) as usize].fill(0);
    }
    all
}

#[test]
fn registers_identify_the_device() {
    let mut r = rig(2);
    assert_eq!(r.read32(global::MAGIC), MAGIC_VALUE);
    assert_eq!(r.read32(global::VERSION), 1);
    assert_eq!(r.read32(global::NR_VCPUS), 2);
    assert_eq!(r.read32(global::MAX_FREQ), 1000);
    assert_eq!(r.read32(global::IRQ), 11);
    let types = r.read64(global::SAMPLE_TYPES);
    assert_eq!(types & SAMPLE_TYPE, SAMPLE_TYPE);
    assert_eq!(
        u64::from(r.read32(global::SAMPLE_TYPES))
            | (u64::from(r.read32(global::SAMPLE_TYPES + 4)) << 32),
        types
    );
    // Odd widths and offsets read as zero and do not disturb anything.
    let mut b1 = [0xaau8; 1];
    r.mmio.read(global::MAGIC, &mut b1);
    assert_eq!(b1, [0]);
    assert_eq!(r.read32(0xffc), 0);
    assert_eq!(r.read64(global::MAGIC + 1), 0);
    r.mmio.write(global::MAGIC, &[1, 2, 3, 4]);
    assert_eq!(r.read32(global::MAGIC), MAGIC_VALUE);
}

#[test]
fn a_sample_is_formatted_for_the_guest_event() {
    let mut r = rig(1);
    r.setup();
    assert_eq!(
        r.dev
            .record_sample(0, &hs(0xffff_ffff_8100_1234, false, 5_000)),
        SampleResult::Written
    );
    assert_eq!(
        r.dev.record_sample(0, &hs(0x40_1000, true, 1_005_000)),
        SampleResult::Written
    );
    assert!(r.irq.read().unwrap() >= 1, "the first sample interrupts");
    assert!(r.r64(STATE + host::IRQ_SEQ) >= 1);
    assert_eq!(r.r64(STATE + host::SAMPLES), 2);

    let fmt = SampleFormat::new(SAMPLE_TYPE, 0, true).unwrap();
    let mut recs = Vec::new();
    let mut c = r.consumer();
    c.read_batch(None, |_, bytes| recs.push(decode(&fmt, bytes).unwrap()))
        .unwrap();
    assert_eq!(recs.len(), 2);
    let s0 = match &recs[0].body {
        Body::Sample(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(recs[0].header.ty, record::SAMPLE);
    assert_eq!(recs[0].header.misc & misc::CPUMODE_MASK, misc::KERNEL);
    assert_eq!(s0.ip, 0xffff_ffff_8100_1234);
    assert_eq!((s0.ids.pid, s0.ids.tid), (70, 77), "pid = tgid, tid = pid");
    assert_eq!(s0.ids.time, 4_000, "TIME = kvm-clock - clock_offset");
    assert_eq!(s0.ids.id, EVENT_ID);
    assert_eq!(s0.ids.cpu, 0);
    assert_eq!(
        s0.period, 1_000_000,
        "the first period is the event's interval"
    );
    let s1 = match &recs[1].body {
        Body::Sample(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(recs[1].header.misc & misc::CPUMODE_MASK, misc::USER);
    assert_eq!(s1.period, 1_000_000, "then the time since the last sample");
    assert_eq!(r.dev.counters().samples, 2);
}

#[test]
fn wanted_interval_follows_the_event_and_the_cap() {
    let mut r = rig(1);
    assert_eq!(r.dev.wanted_interval(0), None);
    r.setup();
    assert_eq!(r.dev.wanted_interval(0), Some(1_000_000));
    // 4 kHz asked, 1 kHz cap.
    r.w64(STATE + guest::PERIOD, 4000);
    r.w32(STATE + guest::FLAGS, flags::FREQ);
    assert_eq!(r.dev.wanted_interval(0), Some(1_000_000));
    r.w64(STATE + guest::PERIOD, 100);
    assert_eq!(r.dev.wanted_interval(0), Some(10_000_000));
    r.w32(STATE + guest::ACTIVE, 0);
    assert_eq!(r.dev.wanted_interval(0), None);
    assert_eq!(r.dev.wanted_interval(7), None);
}

#[test]
fn exclude_flags_and_inactive_events_filter() {
    let mut r = rig(1);
    r.setup();
    r.activate(2, flags::EXCLUDE_USER, SAMPLE_TYPE);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, true, 1)),
        SampleResult::Filtered
    );
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::Written
    );
    r.w32(STATE + guest::ACTIVE, 0);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::Filtered
    );
    assert_eq!(r.cmd(0, cmd::STOP, &[]), status::OK);
    r.w32(STATE + guest::ACTIVE, 1);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::Idle,
        "STOP is immediate"
    );
}

#[test]
fn hostile_commands_are_rejected_and_counted() {
    let mut r = rig(2);
    r.write_ring_list();
    let before = snapshot(&r.mem, &[]);
    let cases: Vec<(u64, u32, Vec<u64>, u32)> = vec![
        (0, cmd::START, vec![], status::ENOENT),
        (0, cmd::SET_STATE, vec![STATE + 8], status::EFAULT),
        (0, cmd::SET_STATE, vec![MEM_SIZE as u64], status::EFAULT),
        (0, cmd::SET_STATE, vec![!0xfff], status::EFAULT),
        (0, cmd::SET_RING, vec![LIST, 3], status::EINVAL),
        (0, cmd::SET_RING, vec![LIST, 512], status::EINVAL),
        (0, cmd::SET_RING, vec![LIST, 0], status::EINVAL),
        (
            0,
            cmd::SET_RING,
            vec![MEM_SIZE as u64 - 8, 4],
            status::EFAULT,
        ),
        (0, cmd::SET_RING, vec![u64::MAX - 7, 4], status::EFAULT),
        (0, cmd::AUX_SET, vec![AUX_LIST, 3, 0], status::EINVAL),
        (0, cmd::AUX_CLEAR, vec![99], status::ENOENT),
        (0, 0xdead, vec![], status::ENOSYS),
    ];
    for (n, c, args, want) in &cases {
        assert_eq!(r.cmd(*n, *c, args), *want, "command {c} {args:x?}");
    }
    // Page lists with bad entries: unaligned, outside RAM, duplicated.
    for bad in [DATA + 1, MEM_SIZE as u64, CTRL] {
        r.w64(LIST + 16, bad);
        assert_eq!(
            r.cmd(0, cmd::SET_RING, &[LIST, DATA_PAGES]),
            status::EFAULT,
            "bad entry {bad:x}"
        );
    }
    r.write_ring_list();
    // Overlap between resources: a ring page used as a state page.
    assert_eq!(r.cmd(0, cmd::SET_RING, &[LIST, DATA_PAGES]), status::OK);
    assert_eq!(r.cmd(1, cmd::SET_STATE, &[DATA]), status::EFAULT);
    assert_eq!(
        r.cmd(1, cmd::SET_RING, &[LIST, DATA_PAGES]),
        status::EFAULT,
        "vCPU 1 cannot take vCPU 0's pages"
    );
    assert_eq!(r.cmd(0, cmd::SET_STATE, &[STATE]), status::OK);
    assert_eq!(r.cmd(0, cmd::START, &[]), status::OK);
    assert_eq!(r.cmd(0, cmd::SET_RING, &[LIST, DATA_PAGES]), status::EBUSY);
    assert_eq!(r.cmd(0, cmd::SET_STATE, &[STATE]), status::EBUSY);
    // A bank beyond NR_VCPUS does nothing.
    r.mmio.write(
        BANK_BASE + 5 * BANK_SIZE + bank::CMD,
        &cmd::RESET.to_le_bytes(),
    );
    // A CMD written with the wrong width is counted.
    r.mmio.write(BANK_BASE + bank::CMD, &[1]);
    let c = r.dev.counters();
    assert!(c.err_commands >= 6 && c.err_pages >= 10, "{c:?}");
    assert_eq!(r.read64(global::ERR_PAGES), c.err_pages);
    // Nothing outside the declared pages (control + data, zeroed by SET_RING)
    // and the page list we wrote ourselves changed.
    let after = snapshot(&r.mem, &[(CTRL, 0x1000 * (1 + DATA_PAGES)), (LIST, 0x1000)]);
    let before_masked = {
        let mut b = before;
        b[CTRL as usize..(CTRL + 0x1000 * (1 + DATA_PAGES)) as usize].fill(0);
        b[LIST as usize..LIST as usize + 0x1000].fill(0);
        b
    };
    assert!(
        after == before_masked,
        "memory outside the declared pages changed"
    );
    // RESET frees the pages for another vCPU.
    let held = r.dev.counters().declared_pages;
    assert!(held > 0, "bank 0 holds its state page and ring");
    assert_eq!(r.cmd(0, cmd::RESET, &[]), status::OK);
    assert_eq!(
        r.dev.counters().declared_pages,
        0,
        "RESET released them all"
    );
    assert_eq!(r.cmd(1, cmd::SET_RING, &[LIST, DATA_PAGES]), status::OK);
    assert!(
        r.dev.counters().declared_pages > 0,
        "now bank 1 holds the ring"
    );
}

#[test]
fn hostile_state_page_is_survived() {
    let mut r = rig(1);
    r.setup();
    // Unsupported sample_type.
    r.activate(2, 0, SAMPLE_TYPE | sample::RAW);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::BadState
    );
    // Garbage task pointers: the sample is written with pid/tid 0.
    r.activate(3, 0, SAMPLE_TYPE);
    for (task_gpa, ptr, off) in [
        (u64::MAX - 3, 0, 0x10),
        (CURRENT_TASK, 5, 0x10),
        (CURRENT_TASK, PAGE_OFFSET + TASK, 0xffff_ffff),
    ] {
        r.w64(STATE + guest::CURRENT_TASK_GPA, task_gpa);
        r.w64(CURRENT_TASK, ptr);
        r.w32(STATE + guest::TASK_PID_OFF, off);
        assert_eq!(
            r.dev.record_sample(0, &hs(1, false, 1)),
            SampleResult::Written
        );
    }
    assert!(r.dev.counters().err_state >= 4);
    // Back to sane: samples carry the task again.
    r.activate(4, 0, SAMPLE_TYPE);
    assert_eq!(
        r.dev.record_sample(0, &hs(9, false, 1)),
        SampleResult::Written
    );
}

#[test]
fn hostile_data_tail_cannot_overwrite_unread_records() {
    let mut r = rig(1);
    r.setup();
    let ring_bytes = DATA_PAGES * 4096;
    // Fill the ring without consuming.
    let mut written = 0u64;
    loop {
        match r.dev.record_sample(0, &hs(written, false, written)) {
            SampleResult::Written => written += 1,
            SampleResult::Lost => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(written * 56 <= ring_bytes);
    let data_before = snapshot(&r.mem, &[]);
    // Nonsense tails: ahead of head, unaligned, far behind.
    for tail in [u64::MAX, 3, written * 56 + 4096, 1 << 40] {
        r.w64(CTRL + 1032, tail);
        assert_eq!(r.dev.record_sample(0, &hs(0, false, 0)), SampleResult::Lost);
    }
    // Only the tail we wrote (control page) and the host counters (state
    // page) may differ.
    let masked = |mut b: Vec<u8>| {
        b[STATE as usize..STATE as usize + 4096].fill(0);
        b[CTRL as usize..CTRL as usize + 4096].fill(0);
        b
    };
    assert!(
        masked(snapshot(&r.mem, &[])) == masked(data_before),
        "no unread byte changed"
    );
    assert!(r.dev.counters().err_tails >= 1);
    // The reader catches up: writing resumes, with a LOST record first.
    let fmt = SampleFormat::new(SAMPLE_TYPE, 0, true).unwrap();
    r.w64(CTRL + 1032, 0);
    let mut c = r.consumer();
    let mut n = 0;
    c.read_batch(None, |_, _| n += 1).unwrap();
    assert_eq!(n, written);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::Written
    );
    let mut types = Vec::new();
    c.read_batch(None, |_, b| types.push(decode(&fmt, b).unwrap().header.ty))
        .unwrap();
    assert_eq!(types, vec![record::LOST, record::SAMPLE]);
}

#[test]
fn aux_sessions_write_wrap_end_and_stop() {
    let mut r = rig(1);
    r.setup();
    let pages = 2u64;
    for i in 0..pages {
        r.w64(AUX_LIST + 8 * i, AUX + i * 0x1000);
    }
    assert_eq!(r.cmd(0, cmd::AUX_SET, &[AUX_LIST, pages, 0]), status::OK);
    let id = r.ret0(0);
    assert_ne!(id, 0);
    // No session posted yet: nothing written.
    assert!(!r.dev.aux_append(0, &[1u8; 16]));
    // A session starting near the end of the buffer, so writes wrap.
    let post = |r: &Rig, seq: u64, head: u64, room: u64, wakeup: u64| {
        r.w64(STATE + guest::AUX_BUF, id);
        r.w64(STATE + guest::AUX_HEAD, head);
        r.w64(STATE + guest::AUX_ROOM, room);
        r.w64(STATE + guest::AUX_WAKEUP, wakeup);
        r.w64(STATE + guest::AUX_SEQ, seq);
    };
    post(&r, 1, 8192 - 16, 4096, 64);
    assert!(r.dev.aux_wanted(0));
    assert!(r.dev.aux_append(0, &[0xab; 32]));
    let mut tail = [0u8; 16];
    r.mem
        .read_slice(&mut tail, GuestAddress(AUX + 8192 - 16))
        .unwrap();
    assert_eq!(tail, [0xab; 16]);
    let mut head = [0u8; 16];
    r.mem.read_slice(&mut head, GuestAddress(AUX)).unwrap();
    assert_eq!(head, [0xab; 16], "wrapped to the first page");
    assert_eq!(
        r.r64(STATE + host::AUX_DONE_SEQ),
        0,
        "not ended before the wakeup point"
    );
    assert!(r.dev.aux_append(0, &[0xcd; 32]));
    assert_eq!(
        r.r64(STATE + host::AUX_DONE_SEQ),
        1,
        "ended at the wakeup point"
    );
    assert_eq!(r.r64(STATE + host::AUX_WRITTEN), 64);
    assert_eq!(r.r64(STATE + host::AUX_FLAGS), 0);
    assert!(
        !r.dev.aux_append(0, &[0xef; 8]),
        "nothing until the guest posts again"
    );
    // A session with little room is truncated.
    post(&r, 2, 64, 40, 0);
    assert!(r.dev.aux_append(0, &[1; 32]));
    assert!(!r.dev.aux_append(0, &[2; 32]));
    assert_eq!(r.r64(STATE + host::AUX_DONE_SEQ), 2);
    assert_eq!(r.r64(STATE + host::AUX_FLAGS), aux_flag::TRUNCATED);
    assert_eq!(r.r64(STATE + host::AUX_WRITTEN), 32);
    // Hostile sessions: room beyond the buffer, unknown buffer.
    post(&r, 3, 0, 1 << 20, 0);
    assert!(!r.dev.aux_append(0, &[3; 8]));
    r.w64(STATE + guest::AUX_BUF, 12345);
    r.w64(STATE + guest::AUX_SEQ, 4);
    assert!(!r.dev.aux_append(0, &[3; 8]));
    // Stop: aux_buf cleared on the CPU; no more writes.
    post(&r, 5, 0, 4096, 0);
    assert!(r.dev.aux_append(0, &[4; 8]));
    r.w64(STATE + guest::AUX_BUF, 0);
    assert!(!r.dev.aux_append(0, &[5; 8]));
    // AUX_CLEAR: the buffer is gone even if a session names it.
    post(&r, 6, 0, 4096, 0);
    assert_eq!(r.cmd(0, cmd::AUX_CLEAR, &[id]), status::OK);
    assert!(!r.dev.aux_append(0, &[6; 8]));
    let c = r.dev.counters();
    assert_eq!(c.aux_bytes, 32 + 32 + 32 + 8);
    assert!(c.err_state >= 2);
}

#[test]
fn concurrent_guest_consumer_sees_every_sample_or_its_loss() {
    let mut r = rig(1);
    r.setup();
    let fmt = SampleFormat::new(SAMPLE_TYPE, 0, true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let mut c = r.consumer();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut checker = Checker::new(CheckerConfig {
                format: fmt,
                data_size: DATA_PAGES * 4096,
                mode: ReadMode::Forward,
                known_ids: vec![EVENT_ID],
                strict_types: true,
                ip_is_sequence: true,
            });
            let (mut samples, mut lost) = (0u64, 0u64);
            loop {
                let finished = done.load(Ordering::Acquire);
                c.read_batch(Some(&mut checker), |_, b| {
                    match decode(&fmt, b).unwrap().body {
                        Body::Sample(_) => samples += 1,
                        Body::Lost { lost: l, .. } => lost += l,
                        _ => {}
                    }
                })
                .unwrap();
                if finished {
                    break;
                }
                std::thread::yield_now();
            }
            (samples, lost, checker.violations())
        })
    };
    let total: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let mut lost_now = 0;
    for i in 0..total {
        if r.dev.record_sample(0, &hs(i, i % 2 == 0, i)) == SampleResult::Lost {
            lost_now += 1;
        }
    }
    // Flush a final LOST (if any) with one more sample once the reader caught up.
    done.store(true, Ordering::Release);
    let (samples, lost, violations) = consumer.join().unwrap();
    let c = r.dev.counters();
    assert_eq!(violations, 0);
    assert_eq!(c.samples + c.lost, total);
    assert_eq!(c.lost, lost_now);
    assert_eq!(samples, c.samples, "every written sample was read");
    assert!(lost <= c.lost, "reported losses never exceed real ones");
}

#[test]
fn exit_trace_records_decode_from_the_aux_pages() {
    use devices::pvpmu::trace::{self, ExitReason, Record};
    use devices::pvpmu::TraceExit;
    let mut r = rig(1);
    r.setup();
    for i in 0..2u64 {
        r.w64(AUX_LIST + 8 * i, AUX + i * 0x1000);
    }
    assert_eq!(r.cmd(0, cmd::AUX_SET, &[AUX_LIST, 2, 0]), status::OK);
    let id = r.ret0(0);
    let exit = |reason, rip| TraceExit {
        reason,
        rip,
        addr: 0x3f8,
        size: 1,
        handling_ns: 900,
        kvmclock_ns: 10_000,
    };
    assert!(
        !r.dev.trace_exit(0, &exit(ExitReason::IoOut, 1)),
        "no session yet"
    );
    r.w64(STATE + guest::AUX_BUF, id);
    r.w64(STATE + guest::AUX_HEAD, 0);
    r.w64(STATE + guest::AUX_ROOM, 8192);
    r.w64(STATE + guest::AUX_WAKEUP, 0);
    r.w64(STATE + guest::AUX_SEQ, 1);
    assert!(r.dev.trace_exit(0, &exit(ExitReason::IoOut, 0x1000)));
    assert!(r.dev.trace_exit(0, &exit(ExitReason::MmioRead, 0x2000)));
    let names = vec!["exits".to_string(), "halt_exits".to_string()];
    assert!(r.dev.trace_stats(0, 20_000, &names, &[12, 3]));
    assert!(r.dev.trace_exit(0, &exit(ExitReason::Kick, 0x3000)));
    let written = r.r64(STATE + host::AUX_WRITTEN);
    let mut bytes = vec![0u8; written as usize];
    r.mem.read_slice(&mut bytes, GuestAddress(AUX)).unwrap();
    let recs: Vec<_> = trace::decode(&bytes).map(|d| d.unwrap().record).collect();
    assert!(matches!(recs[0], Record::Header { .. }), "{recs:?}");
    match &recs[1] {
        Record::Exit(e) => {
            assert_eq!(
                (e.reason, e.rip, e.addr, e.size, e.host_ns),
                (ExitReason::IoOut, 0x1000, 0x3f8, 1, 900)
            );
            assert_eq!(
                e.guest_ns, 9_000,
                "guest perf clock = kvm-clock - clock_offset"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&recs[2], Record::Exit(e) if e.reason == ExitReason::MmioRead));
    match (&recs[3], &recs[4]) {
        (Record::StatsNames(n), Record::Stats(st)) => {
            assert_eq!(n.iter().collect::<Vec<_>>(), vec!["exits", "halt_exits"]);
            let v: Vec<_> = st.iter().map(|s| (s.id, s.value)).collect();
            assert_eq!(v, vec![(0, 12), (1, 3)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&recs[5], Record::Exit(e) if e.reason == ExitReason::Kick));
    let c = r.dev.counters();
    assert_eq!(c.aux_exits, [0, 1, 1, 0, 1, 0]);
    assert_eq!(c.aux_bytes, written);
}

#[test]
fn idle_task_in_the_kernel_image_and_throttling() {
    let mut r = rig(1);
    r.setup();
    // init_task is in the kernel image mapping: kimage_virt/kimage_phys.
    const KIMAGE_VIRT: u64 = 0xffff_ffff_8000_0000;
    r.w64(STATE + guest::KIMAGE_VIRT, KIMAGE_VIRT);
    r.w64(STATE + guest::KIMAGE_PHYS, 0);
    r.w64(CURRENT_TASK, KIMAGE_VIRT + 0x60000);
    r.w32(0x60000 + 0x10, 0);
    r.w32(0x60000 + 0x14, 0);
    let before = r.dev.counters().err_state;
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 1)),
        SampleResult::Written
    );
    assert_eq!(
        r.dev.counters().err_state,
        before,
        "the idle task resolves without an error"
    );
    // Throttled: nothing due, nothing lost.
    r.w32(STATE + guest::THROTTLED, 1);
    assert_eq!(r.dev.wanted_interval(0), None);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 2)),
        SampleResult::Filtered
    );
    r.w32(STATE + guest::THROTTLED, 0);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 3)),
        SampleResult::Written
    );
    assert_eq!(r.dev.counters().lost, 0);
}

#[test]
fn err_tails_register_counts_and_survives_reset() {
    let mut r = rig(1);
    r.setup();
    while r.dev.record_sample(0, &hs(1, false, 1)) != SampleResult::Lost {}
    r.w64(CTRL + 1032, u64::MAX);
    assert_eq!(r.dev.record_sample(0, &hs(1, false, 1)), SampleResult::Lost);
    let n = r.read64(global::ERR_TAILS);
    assert!(n >= 1, "ERR_TAILS counts the hostile tail");
    assert_eq!(r.dev.counters().err_tails, n);
    assert_eq!(r.cmd(0, cmd::RESET, &[]), status::OK);
    assert_eq!(r.read64(global::ERR_TAILS), n, "the count survives RESET");
}

#[test]
fn aux_head_near_the_top_of_u64_wraps() {
    let mut r = rig(1);
    r.setup();
    r.w64(AUX_LIST, AUX);
    assert_eq!(r.cmd(0, cmd::AUX_SET, &[AUX_LIST, 1, 0]), status::OK);
    let id = r.ret0(0);
    r.w64(STATE + guest::AUX_BUF, id);
    r.w64(STATE + guest::AUX_HEAD, u64::MAX - 7);
    r.w64(STATE + guest::AUX_ROOM, 4096);
    r.w64(STATE + guest::AUX_WAKEUP, 0);
    r.w64(STATE + guest::AUX_SEQ, 1);
    assert!(
        r.dev.aux_append(0, &[0x5a; 48]),
        "written, wrapping at the buffer end"
    );
    let mut tail = [0u8; 8];
    r.mem
        .read_slice(&mut tail, GuestAddress(AUX + 4096 - 8))
        .unwrap();
    assert_eq!(tail, [0x5a; 8]);
}

#[test]
fn ticks_before_the_events_add_and_idle_ticks_of_per_task_events_are_dropped() {
    let mut r = rig(1);
    r.setup();
    // Guest time = kvm-clock - clock_offset (1000): the event was added at
    // guest time 50_000.
    r.w64(STATE + guest::ACTIVE_SINCE, 50_000);
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 40_000)),
        SampleResult::Filtered,
        "a tick from before the add belongs to what ran before"
    );
    assert_eq!(
        r.dev.record_sample(0, &hs(1, false, 51_000)),
        SampleResult::Written
    );
    // Halted time is the idle task's: a system-wide event takes it with
    // pid 0, a per-task event never.
    let idle = HostSample {
        idle: true,
        ..hs(0xffff_ffff_8100_0000, false, 60_000)
    };
    assert_eq!(r.dev.record_sample(0, &idle), SampleResult::Written);
    r.w32(STATE + guest::PID_FILTER, 70);
    assert_eq!(r.dev.record_sample(0, &idle), SampleResult::Filtered);
    let fmt = SampleFormat::new(SAMPLE_TYPE, 0, true).unwrap();
    let mut pids = Vec::new();
    r.consumer()
        .read_batch(None, |_, bytes| {
            if let Body::Sample(s) = decode(&fmt, bytes).unwrap().body {
                pids.push(s.ids.pid);
            }
        })
        .unwrap();
    assert_eq!(pids, vec![70, 0]);
}

#[test]
fn flush_is_a_request_for_the_vcpus_hook() {
    let mut r = rig(2);
    assert!(!r.dev.take_flush(0));
    assert_eq!(r.cmd(0, cmd::FLUSH, &[]), status::OK);
    assert!(!r.dev.take_flush(1), "only the bank's own vCPU");
    assert!(r.dev.take_flush(0));
    assert!(!r.dev.take_flush(0), "taken once");
    assert!(!r.dev.take_flush(9), "no such vCPU");
    let features = r.read32(global::FEATURES);
    assert_ne!(features & devices::pvpmu::regs::feature::FLUSH, 0);
    assert_ne!(features & devices::pvpmu::regs::feature::CALLCHAIN, 0);
}

#[test]
fn callchains_have_kernel_then_user_contexts() {
    let mut r = rig(1);
    r.setup();
    let st = SAMPLE_TYPE | sample::CALLCHAIN;
    r.activate(2, 0, st);
    assert!(r.dev.wants_callchain(0));
    let frames = [0xffff_ffff_8100_2000, 0x40_0800, 0x40_0900];
    let s = HostSample {
        callers: &frames,
        user_start: Some(1),
        ..hs(0xffff_ffff_8100_1000, false, 5_000)
    };
    assert_eq!(r.dev.record_sample(0, &s), SampleResult::Written);
    let user = HostSample {
        callers: &frames[1..],
        ..hs(0x40_0700, true, 6_000)
    };
    assert_eq!(r.dev.record_sample(0, &user), SampleResult::Written);
    let fmt = SampleFormat::new(st, 0, true).unwrap();
    let mut chains = Vec::new();
    r.consumer()
        .read_batch(None, |_, bytes| {
            if let Body::Sample(s) = decode(&fmt, bytes).unwrap().body {
                chains.push(s.callchain.clone());
            }
        })
        .unwrap();
    let (k, u) = (
        perf_ring::abi::context::KERNEL,
        perf_ring::abi::context::USER,
    );
    assert_eq!(
        chains,
        vec![
            vec![
                k,
                0xffff_ffff_8100_1000,
                0xffff_ffff_8100_2000,
                u,
                0x40_0800,
                0x40_0900
            ],
            vec![u, 0x40_0700, 0x40_0800, 0x40_0900],
        ]
    );
}

#[test]
fn delayed_ticks_take_their_task_from_the_guests_switch_log() {
    let mut r = rig(1);
    r.setup();
    // Tasks that left the CPU at guest times 100, 200, 300.
    for (i, (t, pid)) in [(100u64, 10u32), (200, 20), (300, 30)].iter().enumerate() {
        let at = STATE + guest::SWITCH_LOG + 16 * i as u64;
        r.w64(at, *t);
        r.w32(at + 8, *pid);
        r.w32(at + 12, pid + 1);
    }
    r.w64(STATE + guest::SWITCH_SEQ, 3);
    // kvm-clock = guest time + clock_offset (1000).
    let got = r.dev.tick_tasks(0, &[1050, 1150, 1250, 1300, 1350]);
    assert_eq!(
        got,
        vec![Some((10, 11)), Some((20, 21)), Some((30, 31)), None, None],
        "a tick belongs to the first task that left after it; after the last switch, to the task running now"
    );
    // A known task goes into the sample as it is.
    let s = HostSample {
        task: Some((10, 11)),
        ..hs(1, false, 1050)
    };
    assert_eq!(r.dev.record_sample(0, &s), SampleResult::Written);
    // More switches than the log holds since the last read: ticks older
    // than what it still has are not guessed.
    let seq = 3 + 2 * guest::SWITCH_LOG_LEN;
    for i in seq - guest::SWITCH_LOG_LEN..seq {
        let at = STATE + guest::SWITCH_LOG + 16 * (i % guest::SWITCH_LOG_LEN);
        r.w64(at, 10_000 + i);
        r.w32(at + 8, 99);
    }
    r.w64(STATE + guest::SWITCH_SEQ, seq);
    let got = r.dev.tick_tasks(0, &[1050, 1000 + 10_000 + seq - 50]);
    assert_eq!(got, vec![None, Some((99, 0))]);
    // Hostile logs cost one bounded pass and never panic.
    for seq in [u64::MAX, 1 << 63, 97] {
        r.w64(STATE + guest::SWITCH_SEQ, seq);
        for i in 0..guest::SWITCH_LOG_LEN {
            r.w64(STATE + guest::SWITCH_LOG + 16 * i, u64::MAX - i * 7919);
        }
        let got = r.dev.tick_tasks(0, &[0, u64::MAX, 5, 1 << 40]);
        assert_eq!(got.len(), 4);
    }
    assert!(r.dev.tick_tasks(5, &[1]).iter().all(Option::is_none));
}

/// The device has no outer lock (vCPUs enter it at once), so two vCPUs
/// that hand over the same pages at the same moment must not both get
/// them: the check that a page is free and its claim are one step.
#[test]
fn two_vcpus_racing_for_the_same_pages_do_not_both_get_them() {
    use std::sync::Barrier;

    const ROUNDS: u64 = 1500;
    const LISTS: u64 = 0x80000;
    const FIRST: u64 = 0x10_0000;
    let r = rig(2);
    // Round i's ring: a control page and one data page, fresh each round.
    for i in 0..ROUNDS {
        r.w64(LISTS + 16 * i, FIRST + 2 * i * 0x1000);
        r.w64(LISTS + 16 * i + 8, FIRST + (2 * i + 1) * 0x1000);
    }
    let barrier = Arc::new(Barrier::new(2));
    let run = |n: u64| {
        let mmio = r.dev.mmio();
        let barrier = barrier.clone();
        move || {
            let b = BANK_BASE + n * BANK_SIZE;
            let mut won = Vec::new();
            for i in 0..ROUNDS {
                mmio.write(b + bank::ARG0, &(LISTS + 16 * i).to_le_bytes());
                mmio.write(b + bank::ARG1, &1u64.to_le_bytes());
                barrier.wait();
                mmio.write(b + bank::CMD, &cmd::SET_RING.to_le_bytes());
                let mut s = [0u8; 4];
                mmio.read(b + bank::STATUS, &mut s);
                won.push(u32::from_le_bytes(s) == status::OK);
            }
            won
        }
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(run(0));
        let b = s.spawn(run(1));
        (a.join().unwrap(), b.join().unwrap())
    });
    let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    let neither = a.iter().zip(&b).filter(|(x, y)| !**x && !**y).count();
    assert_eq!(both, 0, "{both} of {ROUNDS} rings went to both vCPUs");
    assert_eq!(neither, 0, "{neither} of {ROUNDS} rings went to no vCPU");
}
