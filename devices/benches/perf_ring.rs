//! perf_ring throughput, with the memcpy baselines measured in the same run.
//!
//! All `ring/*` benches write 48-byte PERF_RECORD_SAMPLEs (IP, TID, TIME,
//! ID, PERIOD) into a 64-page (256 KiB) ring whose pages are scattered in
//! guest memory. Each bench gets a fresh ring and its own consumer thread.
//!
//! - `ring/memcpy_48b` (baseline): the same 48 bytes per record (a record
//!   buffer whose IP and TIME change every record) copied into the same 64
//!   scattered pages at the same ring offsets, with the same page-end
//!   handling as the producer (one fixed-size copy when the record fits in
//!   its page, two copies across a page end). No protocol, no consumer.
//! - `ring/samples_48b` and `ring/samples_48b_batch64`: the producer with a
//!   *realistic* concurrent consumer (the headline numbers). The consumer
//!   thread behaves like tools/lib/perf under `perf record`: it blocks
//!   until the producer signals a wakeup (an eventfd, as the device's irqfd
//!   would be; the producer writes it when `Output::needs_wakeup` or
//!   `end_batch_wakeup` says so, which with the default watermark is every
//!   half ring), then drains to data_head in one burst with
//!   `Consumer::read_batch` (Acquire head, copy out, walk every header,
//!   Release tail) and blocks again. Per-record publish vs one publish per
//!   64 records (`begin_batch`/`end_batch_wakeup`).
//! - `ring/samples_48b_spin` and `ring/samples_48b_batch64_spin`: extra data
//!   points with a *spinning* consumer that polls data_head in a loop and
//!   drains whenever it moves (it bounces the control page's cache line on
//!   every publish and takes a whole core).
//! - `ring/samples_48b_batch64_noconsumer`: extra data point, no consumer
//!   thread: the producer thread itself releases the ring (stores data_tail
//!   = head every 1024 records), to show the producer's own cost.
//!
//! Every consumer verifies what it reads: each record's type and size, and
//! that the IPs (a sequence number) are consecutive, with the gaps exactly
//! covered by PERF_RECORD_LOST counts. At the end of each bench the totals
//! must match the producer's (`read + lost reported + pending = produced`)
//! and the lost count is printed. The full `Checker` (decode every record,
//! re-read the bytes before releasing them) is too slow for the bench loop;
//! the stress tests run it.
//!
//! - `aux/write_64k` vs `aux/memcpy_64k`: 64 KiB AUX chunks (session
//!   begin/write/end, PERF_RECORD_AUX, aux_head) vs a plain copy of the
//!   same bytes into the same pages.
//!
//! scripts/bench-ring.sh prints the ratios from criterion's estimates.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use devices::perf_ring::abi::{record, sample as st};
use devices::perf_ring::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const PAGE: usize = 4096;
/// Ring size of the sample benches: 64 data pages.
const DATA_PAGES: usize = 64;
/// Records per criterion iteration.
const PER_ITER: u64 = 1 << 20;
/// Records per batch in the `_batch64` benches.
const BATCH: u64 = 64;
/// Size of the sample records.
const REC: usize = 48;

type Ring = GuestRing<GuestMemoryMmap>;

/// A ring with every page at a scattered guest address.
fn scattered(data_pages: usize, aux_pages: usize) -> (Arc<GuestMemoryMmap>, GuestRingLayout) {
    let n = 1 + data_pages + aux_pages;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 * n * PAGE)]).unwrap();
    mem.write_slice(&vec![0u8; 2 * n * PAGE], GuestAddress(0))
        .unwrap();
    // Page k of the ring goes to slot (k * 7) mod n, every other page.
    let addr = |k: usize| GuestAddress((2 * ((k * 7) % n) * PAGE) as u64);
    let layout = GuestRingLayout {
        page_size: PAGE,
        control: addr(0),
        data: (1..=data_pages).map(addr).collect(),
        aux: (data_pages + 1..n).map(addr).collect(),
    };
    (Arc::new(mem), layout)
}

fn host_pages(mem: &GuestMemoryMmap, pages: &[GuestAddress]) -> Vec<*mut u8> {
    pages
        .iter()
        .map(|a| mem.get_host_address(*a).unwrap())
        .collect()
}

/// IP, TID, TIME, ID, PERIOD: 8 + 5 * 8 = 48 bytes.
fn format48() -> SampleFormat {
    SampleFormat::new(st::IP | st::TID | st::TIME | st::ID | st::PERIOD, 0, false).unwrap()
}

fn ids(seq: u64) -> SampleId {
    SampleId {
        pid: 1,
        tid: 1,
        time: seq,
        id: 7,
        stream_id: 7,
        cpu: 0,
    }
}

fn sample(seq: u64) -> Sample<'static> {
    Sample {
        misc: 1,
        ip: seq,
        period: 1,
        ..Default::default()
    }
}

/// How the consumer thread waits for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Block on the wakeup eventfd, drain once per wakeup (perf record).
    Wakeup,
    /// Poll data_head in a loop.
    Spin,
}

/// What the consumer thread saw.
#[derive(Debug, Default, Clone, Copy)]
struct ReadReport {
    /// Records of any type.
    records: u64,
    /// PERF_RECORD_SAMPLEs.
    samples: u64,
    bytes: u64,
    /// Sum of PERF_RECORD_LOST counts.
    lost: u64,
    /// Drains that found data.
    bursts: u64,
    /// Wakeups received (eventfd reads).
    wakeups: u64,
    /// Records that failed verification (wrong type, size or sequence).
    bad: u64,
    /// Times the reader fell a whole ring behind and skipped.
    skips: u64,
}

/// Checks one record: a 48-byte SAMPLE whose IP is the next sequence
/// number, or a LOST whose count covers the gap.
fn verify(bytes: &[u8], expect: &mut u64, rep: &mut ReadReport) {
    let word = |i: usize| {
        bytes
            .get(8 * i..8 * i + 8)
            .map_or(u64::MAX, |b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    let hdr = word(0);
    let ty = hdr as u32;
    let size = (hdr >> 48) as usize;
    match ty {
        record::SAMPLE if size == REC && word(1) == *expect => {
            *expect += 1;
            rep.samples += 1;
        }
        record::LOST if size == 24 => {
            *expect += word(2);
            rep.lost += word(2);
        }
        _ => rep.bad += 1,
    }
}

/// The concurrent consumer thread.
struct Reader {
    thread: JoinHandle<ReadReport>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn spawn(ring: Arc<Ring>, wait: Wait) -> Self {
        let wake = Arc::new(EventFd::new(0).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (wake2, stop2) = (wake.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut c = Consumer::new(ring, ReadMode::Forward);
            let mut rep = ReadReport::default();
            let mut expect = 0u64;
            loop {
                match wait {
                    Wait::Wakeup => {
                        // poll() + read of the wakeup: blocks until the
                        // producer signals (or the bench ends).
                        let _ = wake2.read().unwrap();
                        rep.wakeups += 1;
                    }
                    Wait::Spin => {
                        while c.read_head() == c.position() && !stop2.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    }
                }
                // The producer publishes its last head before setting stop
                // (Release), so one more drain after seeing stop gets
                // everything.
                let stopping = stop2.load(Ordering::Acquire);
                let b = c
                    .read_batch(None, |_, bytes| verify(bytes, &mut expect, &mut rep))
                    .unwrap();
                if b.records != 0 {
                    rep.bursts += 1;
                }
                rep.records += b.records;
                rep.bytes += b.bytes;
                rep.skips += u64::from(b.skipped);
                if stopping {
                    return rep;
                }
            }
        });
        Reader { thread, wake, stop }
    }

    /// Raises the wakeup (what the device does with the guest interrupt).
    #[inline]
    fn wake(&self) {
        self.wake.write(1).unwrap();
    }

    fn finish(self) -> ReadReport {
        self.stop.store(true, Ordering::Release);
        self.wake();
        self.thread.join().unwrap()
    }
}

/// One `ring/samples_48b*` bench: a fresh ring, producer and consumer.
fn bench_ring(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, wait: Option<Wait>, batch: u64) {
    let (mem, layout) = scattered(DATA_PAGES, 0);
    let ring = Arc::new(GuestRing::new(mem, layout).unwrap());
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: format48(),
            event_id: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let reader = wait.map(|w| Reader::spawn(ring.clone(), w));
    let mut seq = 0u64;
    let mut wake_time = Duration::ZERO;
    let mut wakes = 0u64;
    let mut signal = |r: &Reader| {
        let t = Instant::now();
        r.wake();
        wake_time += t.elapsed();
        wakes += 1;
    };
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // Each iteration delivers PER_ITER records into the ring; records
            // dropped because the consumer was late are offered (and counted
            // lost) on top, so the time is per delivered record.
            let start = Instant::now();
            for _ in 0..iters {
                let target = p.stats().records_written + PER_ITER;
                match (&reader, batch) {
                    (Some(r), 1) => {
                        while p.stats().records_written < target {
                            let out = p.write_sample(&sample(seq), &ids(seq)).unwrap();
                            if out.needs_wakeup {
                                signal(r);
                            }
                            seq += 1;
                        }
                    }
                    (Some(r), _) => {
                        while p.stats().records_written < target {
                            p.begin_batch();
                            for _ in 0..batch {
                                let _ = p.write_sample(&sample(seq), &ids(seq)).unwrap();
                                seq += 1;
                            }
                            if p.end_batch_wakeup() {
                                signal(r);
                            }
                        }
                    }
                    (None, _) => {
                        // No consumer: release the ring from this thread.
                        for i in 0..PER_ITER / batch {
                            p.begin_batch();
                            for _ in 0..batch {
                                let _ = p.write_sample(&sample(seq), &ids(seq)).unwrap();
                                seq += 1;
                            }
                            p.end_batch();
                            if i % 16 == 0 {
                                ring.pages().store(
                                    CtrlField::DataTail,
                                    p.head(),
                                    Ordering::Release,
                                );
                            }
                        }
                    }
                }
            }
            start.elapsed()
        })
    });
    let st = *p.stats();
    assert_eq!(st.records_written + st.records_dropped, seq);
    let Some(reader) = reader else {
        eprintln!("{name}: {seq} records, no consumer");
        return;
    };
    let rep = reader.finish();
    eprintln!(
        "{name}: {seq} offered, {} written, {} samples read and verified, {} lost ({:.2}% of \
         offered, in {} LOST records), {} bad, {} skips; {} drains ({:.0} records each), {} \
         wakeups signalled ({:.1} us each, {:.1} ns per written record), {} received",
        st.records_written,
        rep.samples,
        st.records_dropped,
        100.0 * st.records_dropped as f64 / seq.max(1) as f64,
        st.lost_records,
        rep.bad,
        rep.skips,
        rep.bursts,
        rep.records as f64 / rep.bursts.max(1) as f64,
        wakes,
        wake_time.as_secs_f64() * 1e6 / wakes.max(1) as f64,
        wake_time.as_secs_f64() * 1e9 / st.records_written.max(1) as f64,
        rep.wakeups,
    );
    assert_eq!(rep.bad, 0, "{name}: the consumer read wrong records");
    assert_eq!(rep.skips, 0, "{name}: the consumer fell a ring behind");
    assert_eq!(rep.lost, st.lost_reported, "{name}: LOST totals");
    assert_eq!(rep.samples, st.records_written, "{name}: records read");
    assert_eq!(rep.records, st.records_written + st.lost_records);
    assert_eq!(rep.samples + rep.lost + p.pending_lost(), seq);
}

/// The baseline: the same 48 bytes into the same pages, same wrap handling.
fn bench_memcpy(g: &mut BenchmarkGroup<'_, WallTime>) {
    let (mem, layout) = scattered(DATA_PAGES, 0);
    let pages = host_pages(&mem, &layout.data);
    let mask = pages.len() * PAGE - 1;
    let mut rec = [0u64; REC / 8];
    rec[0] = u64::from(record::SAMPLE) | 1 << 32 | (REC as u64) << 48;
    (rec[2], rec[4], rec[5]) = (1 | 1 << 32, 7, 1);
    let mut off = 0usize;
    let mut seq = 0u64;
    g.bench_function("memcpy_48b", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters * PER_ITER {
                (rec[1], rec[3]) = (seq, seq);
                seq += 1;
                let src = rec.as_ptr().cast::<u8>();
                let in_page = off % PAGE;
                let first = (PAGE - in_page).min(REC);
                if first == REC {
                    // SAFETY: in_page + 48 <= PAGE: inside one mapped page.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src, pages[off / PAGE].add(in_page), REC)
                    };
                } else {
                    let next = (off + first) & mask;
                    // SAFETY: the first part ends at the page end, the rest
                    // starts the next ring page; both inside mapped pages.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src, pages[off / PAGE].add(in_page), first);
                        std::ptr::copy_nonoverlapping(
                            src.add(first),
                            pages[next / PAGE],
                            REC - first,
                        );
                    }
                }
                off = (off + REC) & mask;
                black_box(&rec);
            }
            start.elapsed()
        })
    });
}

fn bench_samples(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(PER_ITER));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    bench_memcpy(&mut g);
    bench_ring(&mut g, "samples_48b", Some(Wait::Wakeup), 1);
    bench_ring(&mut g, "samples_48b_batch64", Some(Wait::Wakeup), BATCH);
    bench_ring(&mut g, "samples_48b_spin", Some(Wait::Spin), 1);
    bench_ring(&mut g, "samples_48b_batch64_spin", Some(Wait::Spin), BATCH);
    bench_ring(&mut g, "samples_48b_batch64_noconsumer", None, BATCH);
    g.finish();
}

fn bench_aux(c: &mut Criterion) {
    const CHUNK: usize = 64 * 1024;
    let (mem, layout) = scattered(8, 256);
    let ring = Arc::new(GuestRing::new(mem.clone(), layout.clone()).unwrap());
    let mut p = Producer::new(ring.clone(), ProducerConfig::default()).unwrap();
    let mut cons = Consumer::new(ring.clone(), ReadMode::Forward);
    let chunk: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let ids = SampleId::default();
    let mut g = c.benchmark_group("aux");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("write_64k", |b| {
        b.iter(|| {
            // Keep room: release AUX and data space (cheap, no copy).
            let h = ring.pages().load(CtrlField::AuxHead, Ordering::Acquire);
            ring.pages().store(CtrlField::AuxTail, h, Ordering::Release);
            let _ = cons.read_batch(None, |_, _| {});
            black_box(p.aux_output(&chunk, &ids).unwrap())
        })
    });
    let pages = host_pages(&mem, &layout.aux);
    let mut off = 0usize;
    let mask = pages.len() * PAGE - 1;
    g.bench_function("memcpy_64k", |b| {
        b.iter(|| {
            let mut done = 0;
            while done < CHUNK {
                let o = (off + done) & mask;
                let n = (PAGE - o % PAGE).min(CHUNK - done);
                // SAFETY: o % PAGE + n <= PAGE, inside one mapped page.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        chunk.as_ptr().add(done),
                        pages[o / PAGE].add(o % PAGE),
                        n,
                    )
                };
                done += n;
            }
            off = (off + CHUNK) & mask;
            black_box(&chunk);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_samples, bench_aux);
criterion_main!(benches);
