//! perf_ring throughput, with the memcpy baselines measured in the same run.
//!
//! - `ring/samples_48b`: 48-byte PERF_RECORD_SAMPLEs into a 64-page ring
//!   whose pages are scattered in guest memory, with a consumer thread
//!   reading concurrently (raw atomics: head Acquire, walk headers, tail
//!   Release).
//! - `ring/memcpy_48b`: the same 48 bytes per record copied with
//!   `copy_nonoverlapping` into the same pages at the same ring offsets
//!   (no protocol, no consumer).
//! - `aux/write_64k` vs `aux/memcpy_64k`: 64 KiB AUX chunks (session
//!   begin/write/end, PERF_RECORD_AUX, aux_head) vs a plain copy of the
//!   same bytes into the same pages.
//!
//! scripts/bench-ring.sh prints the ratios from criterion's estimates.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::perf_ring::abi::sample as st;
use devices::perf_ring::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const PAGE: usize = 4096;
const BATCH: u64 = 1 << 20;

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

/// Consumer using nothing but raw atomics on the control page.
fn spawn_consumer(ctrl: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let ctrl = ctrl as *mut u8;
        // SAFETY: the control page stays mapped until the thread is joined;
        // offsets 1024/1032 are 8-aligned u64 fields.
        let head = unsafe { AtomicU64::from_ptr(ctrl.add(1024).cast()) };
        // SAFETY: as above.
        let tail = unsafe { AtomicU64::from_ptr(ctrl.add(1032).cast()) };
        let mut read = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let h = head.load(Ordering::Acquire);
            let t = tail.load(Ordering::Relaxed);
            if h != t {
                read += h - t;
                tail.store(h, Ordering::Release);
            } else {
                std::hint::spin_loop();
            }
        }
        read
    })
}

fn bench_samples(c: &mut Criterion) {
    let (mem, layout) = scattered(64, 0);
    let ring = Arc::new(GuestRing::new(mem.clone(), layout.clone()).unwrap());
    let fmt =
        SampleFormat::new(st::IP | st::TID | st::TIME | st::ID | st::PERIOD, 0, false).unwrap();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt,
            ..Default::default()
        },
    )
    .unwrap();
    let ctrl = mem.get_host_address(layout.control).unwrap() as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = spawn_consumer(ctrl, stop.clone());
    let ids = SampleId {
        pid: 1,
        tid: 1,
        time: 0,
        id: 7,
        stream_id: 7,
        cpu: 0,
    };
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    g.bench_function("samples_48b", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for i in 0..BATCH {
                    let s = Sample {
                        misc: 1,
                        ip: i,
                        period: 1,
                        ..Default::default()
                    };
                    let mut ids = ids;
                    ids.time = i;
                    let _ = black_box(p.write_sample(&s, &ids).unwrap());
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function("samples_48b_batch64", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for chunk in 0..BATCH / 64 {
                    p.begin_batch();
                    for j in 0..64 {
                        let i = chunk * 64 + j;
                        let s = Sample {
                            misc: 1,
                            ip: i,
                            period: 1,
                            ..Default::default()
                        };
                        let mut ids = ids;
                        ids.time = i;
                        let _ = black_box(p.write_sample(&s, &ids).unwrap());
                    }
                    p.end_batch();
                }
                total += start.elapsed();
            }
            total
        })
    });
    let stats = *p.stats();
    eprintln!(
        "samples_48b: {} written, {} dropped ({:.3}% dropped)",
        stats.records_written,
        stats.records_dropped,
        100.0 * stats.records_dropped as f64
            / (stats.records_written + stats.records_dropped).max(1) as f64
    );

    // Baseline: the same 48 bytes per record into the same pages.
    let pages = host_pages(&mem, &layout.data);
    let mut rec = [0u8; 48];
    rec[..8].copy_from_slice(&[9, 0, 0, 0, 1, 0, 48, 0]);
    g.bench_function("memcpy_48b", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut off = 0usize;
            let mask = pages.len() * PAGE - 1;
            for _ in 0..iters {
                let start = Instant::now();
                for i in 0..BATCH {
                    rec[8..16].copy_from_slice(&i.to_ne_bytes());
                    let mut done = 0;
                    while done < 48 {
                        let o = (off + done) & mask;
                        let n = (PAGE - o % PAGE).min(48 - done);
                        // SAFETY: o % PAGE + n <= PAGE, inside one mapped page.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                rec.as_ptr().add(done),
                                pages[o / PAGE].add(o % PAGE),
                                n,
                            )
                        };
                        done += n;
                    }
                    off = (off + 48) & mask;
                    black_box(&rec);
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
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
