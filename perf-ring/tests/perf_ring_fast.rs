//! The producer's fast paths: the precomputed fixed-format sample layout
//! (checked byte for byte against the general encoder for every one of the
//! 512 fixed formats, at every page position) and batched publication
//! (`begin_batch`/`end_batch_wakeup`, `write_samples`): what is published
//! when, wakeups, equivalence with per-record writes, errors, hostile tails
//! inside a batch, and AUX records inside a batch.

mod perf_ring_common;

use std::sync::atomic::Ordering;

use perf_ring::abi::{record, sample as st};
use perf_ring::*;
use perf_ring_common::*;

/// The nine fixed-size sample fields, in `perf_output_sample` order.
const FIXED: [u64; 9] = [
    st::IDENTIFIER,
    st::IP,
    st::TID,
    st::TIME,
    st::ADDR,
    st::ID,
    st::STREAM_ID,
    st::CPU,
    st::PERIOD,
];

fn nth_ids(i: u64) -> SampleId {
    SampleId {
        pid: 0x1000_0001 ^ i as u32,
        tid: 0x2000_0002 ^ (i as u32).rotate_left(7),
        time: 0x3333_0000_0000 + i,
        id: 0x4444_0000 + (i & 3),
        stream_id: 0x5555_0000 + (i & 5),
        cpu: 0x6000_0006 ^ i as u32,
    }
}

fn nth_sample(i: u64) -> Sample<'static> {
    Sample {
        misc: (i as u16).wrapping_mul(0x1235) | 1,
        ip: 0xffff_ffff_8100_0000 + i,
        addr: 0xdead_0000_0000 + i * 3,
        period: 1000 + i * 7,
        ..Default::default()
    }
}

fn producer(
    s: &Scattered,
    format: SampleFormat,
    wakeup: Wakeup,
) -> Producer<std::sync::Arc<GuestRing<vm_memory::GuestMemoryMmap>>> {
    Producer::new(
        s.ring(),
        ProducerConfig {
            format,
            event_id: 0x77,
            wakeup,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn fast_path_bytes_match_the_encoder_for_every_fixed_format() {
    for bits in 0u32..512 {
        let t = FIXED
            .iter()
            .enumerate()
            .filter(|(k, _)| bits & (1 << k) != 0)
            .fold(0, |acc, (_, b)| acc | b);
        // sample_id_all does not change samples; alternate it anyway.
        let fmt = SampleFormat::new(t, 0, bits % 3 == 0).unwrap();
        let s = scattered(2, 0);
        let ring = s.ring();
        let mut p = producer(&s, fmt, Wakeup::default());
        let len = 8 + 8 * bits.count_ones() as u64;
        // Enough records to wrap the two-page ring twice: every record
        // position modulo the page size a multiple of 8 occurs, including
        // records split across both page ends.
        let n = 2 * 8192 / len + 3;
        let mut want = Vec::new();
        let mut got = vec![0u8; len as usize];
        for i in 0..n {
            let pos = p.head();
            let out = p.write_sample(&nth_sample(i), &nth_ids(i)).unwrap();
            assert!(out.written);
            want.clear();
            Event::Sample(nth_sample(i))
                .encode(&fmt, &nth_ids(i), &mut want)
                .unwrap();
            assert_eq!(want.len() as u64, len);
            ring.pages().read_data(pos, &mut got);
            assert_eq!(got, want, "sample_type {t:#x}, record {i} at {pos:#x}");
            assert_eq!(s.ctrl_u64(1024), p.head(), "published per record");
            // The reader keeps up.
            ring.pages()
                .store(CtrlField::DataTail, p.head(), Ordering::Release);
        }
        assert!(s.canaries_intact());
    }
}

#[test]
fn batch_publishes_once_and_reports_wakeups_after_publishing() {
    let fmt = SampleFormat::new(st::IP | st::TID, 0, false).unwrap();
    let s = scattered(1, 0);
    let mut p = producer(&s, fmt, Wakeup::Events(2));
    p.begin_batch();
    assert!(p.is_batching());
    let mut asked = 0;
    for i in 0..5 {
        let out = p.write_sample(&nth_sample(i), &nth_ids(i)).unwrap();
        assert!(out.written);
        asked += u32::from(out.needs_wakeup);
        // Nothing is visible to the reader inside the batch.
        assert_eq!(s.ctrl_u64(1024), 0);
        assert_eq!(p.published_head(), 0);
    }
    assert_eq!(asked, 2, "wakeup_events = 2: samples 2 and 4");
    assert_eq!(p.head(), 5 * 24);
    assert!(p.end_batch_wakeup(), "the batch asked for a wakeup");
    assert!(!p.is_batching());
    assert_eq!(s.ctrl_u64(1024), 5 * 24);
    assert_eq!(p.published_head(), 5 * 24);
    // Sample 6 is due, sample 7 is not; an empty batch stores nothing.
    p.begin_batch();
    let _ = p.write_sample(&nth_sample(5), &nth_ids(5)).unwrap();
    assert!(p.end_batch_wakeup());
    p.begin_batch();
    let _ = p.write_sample(&nth_sample(6), &nth_ids(6)).unwrap();
    assert!(!p.end_batch_wakeup());
    assert_eq!(s.ctrl_u64(1024), 7 * 24);
    p.begin_batch();
    assert!(!p.end_batch_wakeup());
    assert_eq!(s.ctrl_u64(1024), 7 * 24);
    // Back to per-record publication.
    let _ = p.write_sample(&nth_sample(7), &nth_ids(7)).unwrap();
    assert_eq!(s.ctrl_u64(1024), 8 * 24);
    assert_eq!(p.stats().wakeups, 4);
}

/// Feeds the same offered samples to two producers, one per record and one
/// with `write_samples` in chunks, releasing the ring at the same points;
/// the rings, heads and counters must be identical.
fn compare_batched(fmt: SampleFormat, raw: &[u8]) {
    let (a, b) = (scattered(1, 0), scattered(1, 0));
    let (mut pa, mut pb) = (
        producer(&a, fmt, Wakeup::Events(3)),
        producer(&b, fmt, Wakeup::Events(3)),
    );
    let sample = |i: u64| Sample {
        raw: &raw[..(i as usize * 5) % raw.len()],
        ..nth_sample(i)
    };
    let mut i = 0u64;
    for round in 0..40u64 {
        let chunk = 1 + (round * 37) % 90;
        let mut wake_a = false;
        for k in i..i + chunk {
            wake_a |= pa
                .write_sample(&sample(k), &nth_ids(k))
                .unwrap()
                .needs_wakeup;
        }
        let out = pb.write_samples((i..i + chunk).map(|k| (sample(k), nth_ids(k))));
        assert_eq!(out.error, None);
        assert_eq!(out.written + out.dropped, chunk);
        assert_eq!(out.needs_wakeup, wake_a, "round {round}");
        i += chunk;
        assert_eq!(a.ctrl_u64(1024), b.ctrl_u64(1024), "round {round}");
        assert_eq!(pa.stats(), pb.stats(), "round {round}");
        assert_eq!(pa.pending_lost(), pb.pending_lost());
        assert_eq!(a.data_bytes(), b.data_bytes(), "round {round}");
        // The reader drains every third round, so rings fill and LOST
        // records get injected inside batches.
        if round % 3 == 2 {
            for (s, r) in [(&a, &pa), (&b, &pb)] {
                s.ring()
                    .pages()
                    .store(CtrlField::DataTail, r.head(), Ordering::Release);
            }
        }
    }
    assert!(pa.stats().records_dropped > 0 && pa.stats().lost_records > 0);
    assert!(a.canaries_intact() && b.canaries_intact());
}

#[test]
fn write_samples_matches_per_record_writes_fixed_format() {
    let fmt =
        SampleFormat::new(st::IP | st::TID | st::TIME | st::ID | st::PERIOD, 0, true).unwrap();
    compare_batched(fmt, &[0]);
}

#[test]
fn write_samples_matches_per_record_writes_variable_format() {
    let fmt = SampleFormat::new(st::IP | st::TID | st::RAW, 0, true).unwrap();
    compare_batched(fmt, &[0x5a; 61]);
}

#[test]
fn write_samples_stops_at_the_first_bad_sample_and_publishes_the_rest() {
    let fmt = SampleFormat::new(st::IP | st::RAW, 0, false).unwrap();
    let s = scattered(4, 0);
    let mut p = producer(&s, fmt, Wakeup::default());
    let big = vec![0u8; 70_000];
    let samples = [
        Sample::default(),
        Sample::default(),
        Sample {
            raw: &big,
            ..Default::default()
        },
        Sample::default(),
    ];
    let out = p.write_samples(samples.iter().map(|s| (*s, SampleId::default())));
    assert_eq!(out.written, 2);
    assert!(matches!(out.error, Some((2, Error::RecordTooLarge(_)))));
    assert!(!p.is_batching());
    assert_eq!(s.ctrl_u64(1024), p.head());
    assert_eq!(p.head(), 2 * 24);
}

#[test]
fn write_samples_inside_an_outer_batch_leaves_publication_to_it() {
    let fmt = SampleFormat::new(st::IP, 0, false).unwrap();
    let s = scattered(1, 0);
    let mut p = producer(&s, fmt, Wakeup::Events(1));
    p.begin_batch();
    let out = p.write_samples((0..3).map(|i| (nth_sample(i), nth_ids(i))));
    assert_eq!(out.written, 3);
    assert!(out.needs_wakeup);
    assert!(p.is_batching());
    assert_eq!(s.ctrl_u64(1024), 0);
    assert!(p.end_batch_wakeup());
    assert_eq!(s.ctrl_u64(1024), 3 * 16);
}

#[test]
fn a_tail_inside_the_unpublished_batch_is_not_trusted() {
    let fmt = SampleFormat::new(st::IP | st::TID, 0, false).unwrap();
    let s = scattered(1, 0);
    let ring = s.ring();
    let mut p = producer(&s, fmt, Wakeup::default());
    // 4096 - 8 usable bytes: 170 records of 24 bytes.
    p.begin_batch();
    for i in 0..170 {
        assert!(p.write_sample(&nth_sample(i), &nth_ids(i)).unwrap().written);
    }
    // The guest cannot have read any of it (data_head is still 0), yet it
    // claims to have consumed 10 records. Adopting that tail would let the
    // producer overwrite records it has not even published.
    ring.pages()
        .store(CtrlField::DataTail, 10 * 24, Ordering::Release);
    assert!(
        !p.write_sample(&nth_sample(170), &nth_ids(170))
            .unwrap()
            .written
    );
    assert_eq!(p.stats().bad_data_tail, 1);
    assert_eq!(p.pending_lost(), 1);
    p.end_batch();
    let data = s.data_bytes();
    for i in 0..170u64 {
        let at = (i * 24) as usize;
        let ip = u64::from_ne_bytes(data[at + 8..at + 16].try_into().unwrap());
        assert_eq!(ip, nth_sample(i).ip, "record {i} intact");
    }
    // Once published, the same tail is sane and frees the space.
    assert!(
        p.write_sample(&nth_sample(171), &nth_ids(171))
            .unwrap()
            .written
    );
    assert_eq!(p.pending_lost(), 0);
    assert!(s.canaries_intact());
}

#[test]
fn aux_record_in_a_batch_is_published_before_aux_head() {
    let fmt = SampleFormat::new(st::IP, 0, false).unwrap();
    let s = scattered(2, 4);
    let ring = s.ring();
    let mut p = producer(&s, fmt, Wakeup::default());
    p.begin_batch();
    let _ = p.write_sample(&nth_sample(0), &nth_ids(0)).unwrap();
    assert_eq!(s.ctrl_u64(1024), 0);
    let out = p.aux_output(&[7u8; 100], &SampleId::default()).unwrap();
    assert!(out.record.is_some_and(|r| r.written));
    // Kernel order: PERF_RECORD_AUX visible no later than aux_head.
    assert_eq!(s.ctrl_u64(1056), 100, "aux_head");
    assert_eq!(
        s.ctrl_u64(1024),
        p.head(),
        "data_head covers the AUX record"
    );
    assert_eq!(p.head(), 16 + 32);
    let mut hdr = [0u8; 8];
    ring.pages().read_data(16, &mut hdr);
    assert_eq!(
        u32::from_ne_bytes(hdr[..4].try_into().unwrap()),
        record::AUX
    );
    p.end_batch();
    assert_eq!(s.ctrl_u64(1024), 16 + 32);
}

#[test]
fn dropping_while_full_with_lost_pending_is_exact() {
    // The cheap drop path (LOST pending, no room) must count exactly and
    // the LOST must carry the total.
    let fmt = SampleFormat::new(st::IP | st::TID | st::TIME, 0, true).unwrap();
    let s = scattered(1, 0);
    let ring = s.ring();
    let mut p = producer(&s, fmt, Wakeup::default());
    let mut i = 0;
    while p.write_sample(&nth_sample(i), &nth_ids(i)).unwrap().written {
        i += 1;
    }
    for k in 1..1000 {
        assert!(
            !p.write_sample(&nth_sample(i + k), &nth_ids(i + k))
                .unwrap()
                .written
        );
    }
    assert_eq!(p.pending_lost(), 1000);
    // Free exactly one sample's worth: still no room for LOST + sample.
    ring.pages()
        .store(CtrlField::DataTail, 32, Ordering::Release);
    assert!(!p.write_sample(&nth_sample(0), &nth_ids(0)).unwrap().written);
    assert_eq!(p.pending_lost(), 1001);
    let head = p.head();
    ring.pages()
        .store(CtrlField::DataTail, head, Ordering::Release);
    assert!(p.write_sample(&nth_sample(7), &nth_ids(7)).unwrap().written);
    let mut c = Consumer::new(ring.clone(), ReadMode::Forward);
    c.set_position(head);
    let mut recs = Vec::new();
    c.read_batch(None, |_, b| recs.push(decode(&fmt, b).unwrap().body))
        .unwrap();
    assert!(matches!(
        recs[0],
        Body::Lost {
            id: 0x77,
            lost: 1001
        }
    ));
    assert!(matches!(&recs[1], Body::Sample(smp) if smp.ip == nth_sample(7).ip));
    assert_eq!(p.stats().lost_reported, 1001);
    assert_eq!(p.stats().records_dropped, 1001);
}
