//! Property tests against a simple model of the ring: random record sizes,
//! ring sizes, partial consumption, pauses, mode switches, hostile
//! data_tail values and batched publication, for a variable-length format
//! (general path) and a fixed one (the precomputed fast path).

mod perf_ring_common;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use perf_ring::abi::sample as st;
use perf_ring::*;
use perf_ring_common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Consume(usize),
    Hostile(u8, u64),
    Restore,
    Pause(bool),
    ToggleOverwrite,
    /// `begin_batch` (true) or `end_batch_wakeup` (false).
    Batch(bool),
    /// `write_samples` of this many samples with this RAW size.
    WriteMany(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..300).prop_map(Op::Write),
        3 => (0usize..20).prop_map(Op::Consume),
        1 => (0u8..4, 1u64..1000).prop_map(|(k, v)| Op::Hostile(k, v)),
        1 => Just(Op::Restore),
        1 => any::<bool>().prop_map(Op::Pause),
        1 => Just(Op::ToggleOverwrite),
        2 => any::<bool>().prop_map(Op::Batch),
        2 => (1usize..40, 0usize..300).prop_map(|(k, raw)| Op::WriteMany(k, raw)),
    ]
}

fn fmt() -> SampleFormat {
    SampleFormat::new(st::IP | st::TID | st::RAW, 0, true).unwrap()
}

/// No variable-length field: `write_sample` takes the fast path.
fn fixed_fmt() -> SampleFormat {
    SampleFormat::new(st::IP | st::TID | st::TIME, 0, true).unwrap()
}

/// What the model expects at one position.
#[derive(Debug)]
enum Expect {
    Lost(u64),
    Sample { seq: u64, raw: usize },
}

struct Model {
    size: u64,
    head: u64,
    /// data_head as the reader sees it.
    published: u64,
    batching: bool,
    /// A wakeup was asked for inside the open batch.
    batch_wakeup: bool,
    tail: u64,
    lost: u64,
    seq: u64,
    paused: bool,
    overwrite: bool,
    hostile: bool,
    /// The hostile tail points into the open batch.
    hostile_in_batch: bool,
    unread: VecDeque<(u64, u64, Expect)>,
}

fn sample_len(f: &SampleFormat, raw: usize) -> u64 {
    if f.sample_type & st::RAW == 0 {
        // header + IP + TID + TIME.
        return 32;
    }
    // header + IP + TID + RAW(u32 size + payload, padded to 8).
    (8 + 8 + 8 + (raw + 4).div_ceil(8) * 8) as u64
}

fn run_model(f: SampleFormat, pages_log: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let pages = 1usize << pages_log;
    let s = scattered(pages, 0);
    let ring = s.ring();
    // wakeup_events = 3, so batches collect wakeups.
    let cfg = ProducerConfig {
        format: f,
        event_id: 9,
        wakeup: Wakeup::Events(3),
        ..Default::default()
    };
    let mut p = Producer::new(ring.clone(), cfg).unwrap();
    let mut m = Model {
        size: (pages * PAGE) as u64,
        head: 0,
        published: 0,
        batching: false,
        batch_wakeup: false,
        tail: 0,
        lost: 0,
        seq: 0,
        paused: false,
        overwrite: false,
        hostile: false,
        hostile_in_batch: false,
        unread: VecDeque::new(),
    };
    let lost_len = f.lost_record_len() as u64;
    let payload = [0x3cu8; 300];
    let pg = ring.pages();
    for op in ops {
        match op {
            Op::Write(raw) => {
                let seq = m.seq;
                m.seq += 1;
                let smp = Sample {
                    misc: 2,
                    ip: seq,
                    raw: &payload[..raw],
                    ..Default::default()
                };
                let ids = SampleId {
                    pid: 1,
                    tid: 2,
                    id: 9,
                    ..Default::default()
                };
                let out = p.write_sample(&smp, &ids).unwrap();
                let len = sample_len(&f, raw);
                let total = len + if m.lost > 0 { lost_len } else { 0 };
                let fits = m.overwrite || m.head - m.tail + total <= m.size - 8;
                if m.paused {
                    prop_assert!(!out.written);
                } else if m.hostile {
                    // Unknown tail: the producer may only write what the
                    // last sane tail leaves room for.
                    prop_assert!(!out.written || fits);
                } else {
                    prop_assert_eq!(out.written, fits);
                }
                if out.written {
                    if m.lost > 0 {
                        m.unread.push_back((m.head, lost_len, Expect::Lost(m.lost)));
                        m.head += lost_len;
                        m.lost = 0;
                    }
                    m.unread
                        .push_back((m.head, len, Expect::Sample { seq, raw }));
                    m.head += len;
                } else {
                    m.lost += 1;
                }
                if !m.batching {
                    m.published = m.head;
                }
                m.batch_wakeup |= m.batching && out.needs_wakeup;
                prop_assert_eq!(pg.load(CtrlField::DataHead, Ordering::Acquire), m.published);
                prop_assert_eq!(p.published_head(), m.published);
                prop_assert_eq!(p.pending_lost(), m.lost);
            }
            Op::Consume(k) => {
                if m.overwrite || m.hostile {
                    continue;
                }
                for _ in 0..k {
                    // The reader only sees what is published.
                    if m.unread.front().is_none_or(|r| r.0 + r.1 > m.published) {
                        break;
                    }
                    let Some((pos, len, exp)) = m.unread.pop_front() else {
                        break;
                    };
                    let mut buf = vec![0u8; len as usize];
                    pg.read_data(pos, &mut buf);
                    let rec = decode(&f, &buf).unwrap();
                    match (exp, rec.body) {
                        (Expect::Lost(n), Body::Lost { id, lost }) => {
                            prop_assert_eq!((id, lost), (9, n));
                        }
                        (Expect::Sample { seq, raw }, Body::Sample(smp)) => {
                            prop_assert_eq!(smp.ip, seq);
                            let padded = (raw + 4).div_ceil(8) * 8 - 4;
                            let want = (f.sample_type & st::RAW != 0).then_some(padded);
                            prop_assert_eq!(smp.raw.map(|r| r.len()), want);
                        }
                        (e, b) => prop_assert!(false, "expected {:?}, got {:?}", e, b),
                    }
                    m.tail = pos + len;
                }
                pg.store(CtrlField::DataTail, m.tail, Ordering::Release);
            }
            Op::Hostile(kind, v) => {
                if m.overwrite {
                    continue;
                }
                // A hostile tail must stay insane until Restore: a value
                // only a little ahead of head becomes a legitimate claim
                // once head passes it.
                let in_batch = m.published + 8 * v;
                let bad = match kind {
                    // Inside the open batch: the reader cannot have seen
                    // those bytes (data_head is still behind them). Restored
                    // before the batch ends.
                    0 if m.batching && in_batch < m.head => {
                        m.hostile_in_batch = true;
                        in_batch
                    }
                    // Ahead of head.
                    0 => m.head + (1 << 40) + 8 * v,
                    1 => m.head.wrapping_sub(m.size + 8 * v), // too far behind
                    2 => m.tail + 1 + (v % 7),                // unaligned
                    _ => m.tail.wrapping_sub(8 * v),          // backwards
                };
                pg.store(CtrlField::DataTail, bad, Ordering::Release);
                m.hostile = true;
            }
            Op::Restore => {
                if m.hostile {
                    pg.store(CtrlField::DataTail, m.tail, Ordering::Release);
                    m.hostile = false;
                    m.hostile_in_batch = false;
                }
            }
            Op::Pause(on) => {
                p.set_paused(on);
                m.paused = on;
            }
            Op::ToggleOverwrite => {
                if m.hostile {
                    continue;
                }
                m.overwrite = !m.overwrite;
                p.set_overwrite(m.overwrite);
                // A remap publishes everything written so far.
                m.published = m.head;
                // Either way the unread window restarts at head.
                m.unread.clear();
                m.tail = m.head;
                if !m.overwrite {
                    prop_assert_eq!(pg.load(CtrlField::DataTail, Ordering::Relaxed), m.head);
                } else {
                    pg.store(CtrlField::DataTail, m.head, Ordering::Release);
                }
            }
            Op::WriteMany(k, raw) => {
                if m.hostile {
                    continue;
                }
                let first = m.seq;
                m.seq += k as u64;
                let ids = SampleId {
                    pid: 1,
                    tid: 2,
                    id: 9,
                    ..Default::default()
                };
                let out = p.write_samples((first..first + k as u64).map(|seq| {
                    (
                        Sample {
                            misc: 2,
                            ip: seq,
                            raw: &payload[..raw],
                            ..Default::default()
                        },
                        ids,
                    )
                }));
                prop_assert_eq!(out.error, None);
                // Replay the model one sample at a time.
                let len = sample_len(&f, raw);
                let mut written = 0;
                for seq in first..first + k as u64 {
                    let total = len + if m.lost > 0 { lost_len } else { 0 };
                    let fits = !m.paused && (m.overwrite || m.head - m.tail + total <= m.size - 8);
                    if fits {
                        if m.lost > 0 {
                            m.unread.push_back((m.head, lost_len, Expect::Lost(m.lost)));
                            m.head += lost_len;
                            m.lost = 0;
                        }
                        m.unread
                            .push_back((m.head, len, Expect::Sample { seq, raw }));
                        m.head += len;
                        written += 1;
                    } else {
                        m.lost += 1;
                    }
                }
                prop_assert_eq!((out.written, out.dropped), (written, k as u64 - written));
                if !m.batching {
                    m.published = m.head;
                }
                m.batch_wakeup |= m.batching && out.needs_wakeup;
                prop_assert_eq!(pg.load(CtrlField::DataHead, Ordering::Acquire), m.published);
                prop_assert_eq!(p.head(), m.head);
                prop_assert_eq!(p.pending_lost(), m.lost);
            }
            Op::Batch(true) => {
                p.begin_batch();
                m.batching = true;
            }
            Op::Batch(false) => {
                if m.hostile_in_batch {
                    pg.store(CtrlField::DataTail, m.tail, Ordering::Release);
                    m.hostile = false;
                    m.hostile_in_batch = false;
                }
                let wake = p.end_batch_wakeup();
                prop_assert_eq!(wake, m.batch_wakeup);
                m.batching = false;
                m.batch_wakeup = false;
                m.published = m.head;
                prop_assert_eq!(pg.load(CtrlField::DataHead, Ordering::Acquire), m.head);
            }
        }
        prop_assert!(m.overwrite || m.head - m.tail <= m.size - 8);
    }
    // Everything the model still holds unread is intact.
    if !m.overwrite {
        for (pos, len, exp) in &m.unread {
            let mut buf = vec![0u8; *len as usize];
            pg.read_data(*pos, &mut buf);
            let rec = decode(&f, &buf).unwrap();
            match (exp, rec.body) {
                (Expect::Lost(n), Body::Lost { lost, .. }) => prop_assert_eq!(*n, lost),
                (Expect::Sample { seq, .. }, Body::Sample(smp)) => prop_assert_eq!(*seq, smp.ip),
                (e, b) => prop_assert!(false, "expected {:?}, got {:?}", e, b),
            }
        }
    }
    let st = p.stats();
    prop_assert_eq!(st.records_dropped, st.lost_reported + p.pending_lost());
    prop_assert!(s.canaries_intact());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn producer_matches_model(pages_log in 0u32..3, ops in proptest::collection::vec(op(), 1..250)) {
        run_model(fmt(), pages_log, ops)?;
    }

    #[test]
    fn fixed_format_fast_path_matches_model(pages_log in 0u32..3, ops in proptest::collection::vec(op(), 1..250)) {
        run_model(fixed_fmt(), pages_log, ops)?;
    }

    #[test]
    fn backward_overwrite_snapshot_is_the_newest_records(pages_log in 0u32..2, raws in proptest::collection::vec(0usize..200, 1..400)) {
        let pages = 1usize << pages_log;
        let s = scattered(pages, 0);
        let ring = s.ring();
        let f = fmt();
        let mut p = Producer::new(ring.clone(), ProducerConfig {
            format: f, write_backward: true, overwrite: true, ..Default::default()
        }).unwrap();
        let payload = [7u8; 200];
        for (i, raw) in raws.iter().enumerate() {
            let smp = Sample { ip: i as u64, raw: &payload[..*raw], ..Default::default() };
            prop_assert!(p.write_sample(&smp, &SampleId::default()).unwrap().written);
        }
        // A reader that has never read: previous head 0.
        let mut c = Consumer::new(ring.clone(), ReadMode::Backward);
        c.set_position(0);
        let mut chk = Checker::new(CheckerConfig {
            format: f, data_size: (pages * PAGE) as u64, mode: ReadMode::Backward,
            known_ids: vec![], strict_types: true, ip_is_sequence: true,
        });
        let mut seqs = Vec::new();
        c.read_batch(Some(&mut chk), |_, bytes| {
            if let Ok(Record { body: Body::Sample(smp), .. }) = decode(&f, bytes) {
                seqs.push(smp.ip);
            }
        }).unwrap();
        // Newest first, consecutive, ending no later than the first record.
        prop_assert_eq!(seqs.first().copied(), Some(raws.len() as u64 - 1));
        // Cross-check by walking the headers by hand.
        let head = ring.pages().load(CtrlField::DataHead, Ordering::Acquire);
        let mut pos = head;
        let size = (pages * PAGE) as u64;
        let mut expect = raws.len() as u64;
        let mut total = 0u64;
        loop {
            let mut hdr = [0u8; 8];
            ring.pages().read_data(pos, &mut hdr);
            let h = Header::parse(&hdr).unwrap();
            if h.size == 0 || total + h.size as u64 > size { break; }
            let mut buf = vec![0u8; h.size as usize];
            ring.pages().read_data(pos, &mut buf);
            let Body::Sample(smp) = decode(&f, &buf).unwrap().body else { panic!() };
            expect -= 1;
            prop_assert_eq!(smp.ip, expect);
            total += h.size as u64;
            pos = pos.wrapping_add(h.size as u64);
        }
        prop_assert!(expect < raws.len() as u64);
        prop_assert_eq!(seqs.len() as u64, raws.len() as u64 - expect);
        prop_assert!(s.canaries_intact());
    }
}
