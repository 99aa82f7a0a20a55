//! Concurrent stress: a producer thread and a consumer thread on the same
//! `GuestMemoryMmap`, with the checker on, in normal, backward and
//! overwrite modes. Millions of records in release builds; a bounded count
//! in debug builds so `cargo test` stays fast.
//!
//! `raw_atomics_consumer_proves_the_layout` reads the ring with nothing but
//! pointers, hard-coded uapi offsets and `AtomicU64`, to prove the layout
//! rather than the shared Rust types.

mod perf_ring_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use perf_ring::abi::sample as st;
use perf_ring::*;
use perf_ring_common::*;
use vm_memory::GuestMemoryBackend;

fn records() -> u64 {
    if cfg!(debug_assertions) {
        60_000
    } else {
        2_000_000
    }
}

fn fmt() -> SampleFormat {
    SampleFormat::new(st::IP | st::TID | st::TIME | st::ID | st::RAW, 0, true).unwrap()
}

/// Sample `i`: IP = sequence number, a RAW payload of 0..=40 bytes.
fn write_nth<R: RingMemory>(p: &mut Producer<R>, i: u64, payload: &[u8]) -> Output {
    let raw_len = (i.wrapping_mul(2654435761) >> 7) as usize % 41;
    let s = Sample {
        misc: 2,
        ip: i,
        raw: &payload[..raw_len],
        ..Default::default()
    };
    let ids = SampleId {
        pid: 1,
        tid: 2,
        time: i,
        id: 0x55,
        stream_id: 0x55,
        cpu: 0,
    };
    p.write_sample(&s, &ids).unwrap()
}

fn checker(mode: ReadMode, size: u64) -> Checker {
    Checker::new(CheckerConfig {
        format: fmt(),
        data_size: size,
        mode,
        known_ids: vec![0x55],
        strict_types: true,
        ip_is_sequence: true,
    })
}

#[test]
fn normal_mode_exact_lost_accounting() {
    let s = scattered(8, 0);
    let ring = s.ring();
    let n = records();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt(),
            event_id: 0x55,
            ..Default::default()
        },
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let ring2 = ring.clone();
    let reader = std::thread::spawn(move || {
        let mut c = Consumer::new(ring2.clone(), ReadMode::Forward);
        let mut chk = checker(ReadMode::Forward, ring2.pages().data_size());
        loop {
            let finished = done2.load(Ordering::Acquire);
            c.read_batch(Some(&mut chk), |_, _| {}).unwrap();
            if finished {
                break;
            }
            std::thread::yield_now();
        }
        chk
    });
    let payload = [0x5au8; 64];
    for i in 0..n {
        // Give the reader time now and then, so both full-ring drops and
        // long runs of successful writes happen.
        if !write_nth(&mut p, i, &payload).written && i % 4 == 0 {
            std::thread::yield_now();
        }
    }
    // Flush the pending LOST count with records that fit once drained.
    let mut i = n;
    while p.pending_lost() != 0 {
        let _ = write_nth(&mut p, i, &payload);
        i += 1;
        std::thread::yield_now();
    }
    done.store(true, Ordering::Release);
    let mut chk = reader.join().unwrap();
    let st = *p.stats();
    chk.check_totals(i, p.pending_lost()).unwrap();
    assert_eq!(st.records_dropped, st.lost_reported);
    assert!(st.records_written > 0);
    assert!(s.canaries_intact());
    eprintln!(
        "normal: {} produced, {} written, {} dropped",
        i, st.records_written, st.records_dropped
    );
}

#[test]
fn forward_overwrite_mode_reader_validates_against_head() {
    let s = scattered(8, 0);
    let ring = s.ring();
    let n = records();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt(),
            event_id: 0x55,
            overwrite: true,
            ..Default::default()
        },
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let ring2 = ring.clone();
    let reader = std::thread::spawn(move || {
        let mut c = Consumer::new(ring2.clone(), ReadMode::ForwardOverwrite);
        c.set_max_record_len(128);
        let mut chk = checker(ReadMode::ForwardOverwrite, ring2.pages().data_size());
        let mut seen = 0;
        while !done2.load(Ordering::Acquire) {
            seen += c.read_batch(Some(&mut chk), |_, _| {}).unwrap().records;
        }
        (seen, *c.stats())
    });
    let payload = [0u8; 64];
    for i in 0..n {
        assert!(write_nth(&mut p, i, &payload).written);
        if i % 4096 == 0 {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    let (seen, stats) = reader.join().unwrap();
    assert_eq!(p.stats().records_dropped, 0);
    eprintln!(
        "forward overwrite: {n} written, {seen} read intact, {} skips",
        stats.skips
    );
    assert!(s.canaries_intact());
}

#[test]
fn backward_overwrite_mode_paused_snapshots() {
    let s = scattered(8, 0);
    let ring = s.ring();
    let n = records();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt(),
            event_id: 0x55,
            write_backward: true,
            overwrite: true,
            ..Default::default()
        },
    )
    .unwrap();
    // Pause handshake, as perf record --overwrite does with
    // PERF_EVENT_IOC_PAUSE_OUTPUT around each read.
    let want_pause = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (wp, pd, dn, ring2) = (
        want_pause.clone(),
        paused.clone(),
        done.clone(),
        ring.clone(),
    );
    let reader = std::thread::spawn(move || {
        let mut c = Consumer::new(ring2.clone(), ReadMode::Backward);
        let mut chk = checker(ReadMode::Backward, ring2.pages().data_size());
        let mut snaps = 0u64;
        let mut recs = 0u64;
        while !dn.load(Ordering::Acquire) {
            wp.store(true, Ordering::Release);
            while !pd.load(Ordering::Acquire) && !dn.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            recs += c.read_batch(Some(&mut chk), |_, _| {}).unwrap().records;
            snaps += 1;
            wp.store(false, Ordering::Release);
            while pd.load(Ordering::Acquire) && !dn.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
        (snaps, recs)
    });
    let payload = [0u8; 64];
    for i in 0..n {
        let want = want_pause.load(Ordering::Acquire);
        if want != p.is_paused() {
            p.set_paused(want);
            paused.store(want, Ordering::Release);
        }
        let _ = write_nth(&mut p, i, &payload);
    }
    done.store(true, Ordering::Release);
    let (snaps, recs) = reader.join().unwrap();
    let st = *p.stats();
    assert_eq!(st.records_dropped, st.lost_reported + p.pending_lost());
    eprintln!(
        "backward: {snaps} snapshots, {recs} records read, {} dropped while paused",
        st.records_dropped
    );
    assert!(snaps > 0);
    assert!(s.canaries_intact());
}

/// Host pointers of the ring pages, as plain addresses.
fn raw_pages(s: &Scattered) -> (usize, Vec<usize>) {
    let ctrl = s.mem.get_host_address(s.layout.control).unwrap() as usize;
    let data = s
        .layout
        .data
        .iter()
        .map(|a| s.mem.get_host_address(*a).unwrap() as usize)
        .collect();
    (ctrl, data)
}

/// A reader that knows only the uapi: offsets 1024/1032/1048, the header
/// layout, PERF_RECORD_LOST = 2, SAMPLE = 9, IP right after the header.
fn raw_reader(ctrl: usize, data: Vec<usize>, done: Arc<AtomicBool>) -> (u64, u64) {
    let ctrl = ctrl as *mut u8;
    // SAFETY: the pages stay mapped until this thread is joined; the
    // offsets are 8-aligned u64 fields of struct perf_event_mmap_page.
    let (head, tail, size) = unsafe {
        (
            AtomicU64::from_ptr(ctrl.add(1024).cast()),
            AtomicU64::from_ptr(ctrl.add(1032).cast()),
            AtomicU64::from_ptr(ctrl.add(1048).cast()),
        )
    };
    let size = size.load(Ordering::Relaxed);
    assert_eq!(size, (data.len() * PAGE) as u64);
    let copy = |pos: u64, out: &mut [u8]| {
        for (k, b) in out.iter_mut().enumerate() {
            let off = ((pos + k as u64) % size) as usize;
            // SAFETY: off < size, so the page index and in-page offset are
            // inside the mapped data pages.
            *b = unsafe { *(data[off / PAGE] as *const u8).add(off % PAGE) };
        }
    };
    let (mut samples, mut lost) = (0u64, 0u64);
    let mut next_seq = 0u64;
    let mut pos = tail.load(Ordering::Relaxed);
    loop {
        let finished = done.load(Ordering::Acquire);
        let h = head.load(Ordering::Acquire);
        assert!(h - pos <= size - 8);
        while pos < h {
            let mut hdr = [0u8; 8];
            copy(pos, &mut hdr);
            let ty = u32::from_ne_bytes(hdr[0..4].try_into().unwrap());
            let len = u16::from_ne_bytes(hdr[6..8].try_into().unwrap()) as u64;
            assert!(
                len >= 8 && len.is_multiple_of(8) && pos + len <= h,
                "bad record at {pos:#x}"
            );
            let mut body = vec![0u8; len as usize];
            copy(pos, &mut body);
            let w1 = u64::from_ne_bytes(body[8..16].try_into().unwrap());
            match ty {
                9 => {
                    assert_eq!(w1, next_seq, "sample sequence");
                    next_seq += 1;
                    samples += 1;
                }
                2 => {
                    let n = u64::from_ne_bytes(body[16..24].try_into().unwrap());
                    next_seq += n;
                    lost += n;
                }
                other => panic!("unexpected type {other}"),
            }
            pos += len;
        }
        // Release: our reads of the record bytes happen before the
        // producer can reuse the space.
        tail.store(pos, Ordering::Release);
        if finished {
            return (samples, lost);
        }
        std::thread::yield_now();
    }
}

#[test]
fn raw_atomics_consumer_proves_the_layout() {
    let s = scattered(4, 0);
    let ring = s.ring();
    let mut p = Producer::new(
        ring,
        ProducerConfig {
            format: fmt(),
            event_id: 0x55,
            ..Default::default()
        },
    )
    .unwrap();
    let (ctrl, data) = raw_pages(&s);
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let reader = std::thread::spawn(move || raw_reader(ctrl, data, d2));
    let n = records() / 2;
    let payload = [1u8; 64];
    let mut i = 0;
    while i < n || p.pending_lost() != 0 {
        let _ = write_nth(&mut p, i, &payload);
        i += 1;
        if i % 512 == 0 {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    let (samples, lost) = reader.join().unwrap();
    assert_eq!(samples + lost, i, "produced = read + lost");
    assert!(s.canaries_intact());
}

fn fixed_fmt() -> SampleFormat {
    SampleFormat::new(st::IP | st::TID | st::TIME | st::ID | st::PERIOD, 0, true).unwrap()
}

fn fixed_nth(i: u64) -> (Sample<'static>, SampleId) {
    let s = Sample {
        misc: 2,
        ip: i,
        period: 1,
        ..Default::default()
    };
    let ids = SampleId {
        pid: 1,
        tid: 2,
        time: i,
        id: 0x55,
        stream_id: 0x55,
        cpu: 0,
    };
    (s, ids)
}

/// The fast path (fixed format) with batched publication, as the device
/// uses it: batches of 1..=100 samples through `write_samples` and
/// `begin_batch`/`write_sample`/`end_batch_wakeup`, a concurrent reader
/// with the full checker (sequence, LOST totals, unread bytes stable).
#[test]
fn batched_fast_path_exact_lost_accounting() {
    let s = scattered(4, 0);
    let ring = s.ring();
    let n = records();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fixed_fmt(),
            event_id: 0x55,
            ..Default::default()
        },
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let ring2 = ring.clone();
    let reader = std::thread::spawn(move || {
        let mut c = Consumer::new(ring2.clone(), ReadMode::Forward);
        let mut chk = Checker::new(CheckerConfig {
            format: fixed_fmt(),
            data_size: ring2.pages().data_size(),
            mode: ReadMode::Forward,
            known_ids: vec![0x55],
            strict_types: true,
            ip_is_sequence: true,
        });
        loop {
            let finished = done2.load(Ordering::Acquire);
            c.read_batch(Some(&mut chk), |_, _| {}).unwrap();
            if finished {
                break;
            }
            std::thread::yield_now();
        }
        chk
    });
    let mut i = 0u64;
    let mut batches = 0u64;
    let mut wakeups = 0u64;
    while i < n || p.pending_lost() != 0 {
        let len = 1 + (i.wrapping_mul(2654435761) >> 9) % 100;
        let wake = if batches.is_multiple_of(2) {
            let out = p.write_samples((i..i + len).map(fixed_nth));
            assert_eq!(out.error, None);
            assert_eq!(out.written + out.dropped, len);
            out.needs_wakeup
        } else {
            p.begin_batch();
            for k in i..i + len {
                let (smp, ids) = fixed_nth(k);
                let _ = p.write_sample(&smp, &ids).unwrap();
            }
            p.end_batch_wakeup()
        };
        // Every published head covers whole batches.
        assert_eq!(p.published_head(), p.head());
        wakeups += u64::from(wake);
        i += len;
        batches += 1;
        if batches.is_multiple_of(8) {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    let mut chk = reader.join().unwrap();
    let st = *p.stats();
    chk.check_totals(i, p.pending_lost()).unwrap();
    assert_eq!(st.records_dropped, st.lost_reported);
    assert!(st.records_written > 0 && wakeups > 0);
    assert!(s.canaries_intact());
    eprintln!(
        "batched fast path: {i} produced in {batches} batches, {} written, {} dropped, {wakeups} wakeups",
        st.records_written, st.records_dropped
    );
}
