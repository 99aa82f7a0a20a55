//! perf_ring throughput, with the memcpy baselines measured in the same run.
//!
//! All `ring/*` benches write 48-byte PERF_RECORD_SAMPLEs (IP, TID, TIME,
//! ID, PERIOD) into a 64-page (256 KiB) ring whose pages are scattered in
//! guest memory. Each bench gets a fresh ring and its own consumer thread.
//! Each criterion iteration *delivers* 2^20 records: records dropped
//! because the consumer was late are offered on top (and counted lost), so
//! the reported rate is delivered records per second and includes the time
//! the ring was full.
//!
//! - `ring/memcpy_48b` (the baseline): the same 48 bytes per
//!   record (a record buffer whose IP and TIME change every record) copied
//!   into the same 64 scattered pages at the same ring offsets, with the
//!   same page-end handling as the producer (one fixed-size copy when the
//!   record fits in its page, two copies across a page end). No protocol,
//!   and nobody reads the ring.
//! - `ring/memcpy_48b_read` (the same baseline with the same reader): the
//!   same copy loop while the realistic consumer described below reads and
//!   verifies the ring from the other CPU. The loop does only what that
//!   consumer needs: at every half ring (the producer's default watermark)
//!   it stores data_head and writes the eventfd, and before a record that
//!   would overwrite unread bytes it waits for data_tail (where the
//!   producer would drop the record). No per-record publish and no LOST or
//!   wakeup bookkeeping. This separates what the producer adds from what
//!   any writer pays when another CPU reads what it writes: each cache
//!   line moves to the reader's core and back once per lap, and the
//!   reader's own speed bounds both.
//! - `ring/stores_48b_read` (extra baseline): as `memcpy_48b_read`, but
//!   each record is six 8-byte stores straight into the page, the
//!   producer's own store pattern. Under the reader this was the fastest
//!   plain copy found (a `memcpy` of the 48-byte buffer does 16-byte
//!   stores and is slower there).
//! - `ring/samples_48b` and `ring/samples_48b_batch64`: the producer with a
//!   *realistic* concurrent consumer (the headline numbers). The consumer
//!   thread behaves like `perf record` over tools/lib/perf: it blocks until
//!   the producer signals a wakeup (an eventfd, as the device's irqfd would
//!   be; the producer writes it when `Output::needs_wakeup` or
//!   `SamplesOutput::needs_wakeup` says so, which with the default
//!   watermark is every half ring), then drains to data_head in one burst
//!   with `Consumer::read_batch` (Acquire head, copy out, walk every
//!   header, Release tail) and blocks again. `samples_48b` publishes
//!   data_head per record (`write_sample`, which the pvpmu device calls
//!   once per sample today); `samples_48b_batch64` hands 64 samples at a
//!   time to `write_samples` (one publish per batch).
//! - `ring/samples_48b_spin`: extra data point (the previous bench's
//!   setup) with a *spinning* consumer that polls data_head in a loop and
//!   drains whenever it moves. It bounces the control page's cache line on
//!   every publish and keeps a vCPU busy; when other work shares the vCPUs
//!   it is descheduled for whole time slices while the ring overflows.
//! - `ring/samples_48b_batch64_noconsumer`: extra data point, no consumer
//!   thread: the producer thread itself releases the ring (stores data_tail
//!   every 512 records), to show the producer's own cost.
//!
//! Every consumer verifies what it reads: each record's type and size, and
//! that the IPs (a sequence number) are consecutive, with the gaps exactly
//! covered by PERF_RECORD_LOST counts. At the end of each bench the totals
//! must match the producer's (`read + lost reported + pending = offered`);
//! the lost count, the time the ring was full and the time spent in the
//! wakeup syscall are printed. The full `Checker` (decode every record,
//! re-read the bytes before releasing them) is too slow for the bench loop;
//! the stress tests run it.
//!
//! Criterion's thread (the writer) is pinned to CPU 0 and every reader or
//! consumer thread to CPU 1 (`pin_to`).
//!
//! - `aux/write_64k` vs `aux/memcpy_64k`: 64 KiB AUX chunks (session
//!   begin/write/end, PERF_RECORD_AUX, aux_head) vs a plain copy of the
//!   same bytes into the same pages.
//!
//! scripts/bench-ring.sh prints the ratios from criterion's estimates:
//! each bench with a reader against each baseline, in the same run.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use perf_ring::abi::{record, sample as st};
use perf_ring::*;
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

/// The CPU of the writing (criterion's) thread.
const WRITER_CPU: usize = 0;
/// The CPU of every reader and consumer thread.
const READER_CPU: usize = 1;

/// Pins the calling thread to `cpu`, so that writer and reader always run
/// on different CPUs: left to the scheduler, a woken reader sometimes
/// lands on the writer's CPU, the two time-share with no cache line
/// crossing, and the figures swing by 2x between runs. Does nothing (and
/// says so once) on a machine with fewer CPUs.
fn pin_to(cpu: usize) {
    // SAFETY: CPU_ZERO/CPU_SET write into a cpu_set_t we own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; cpu < CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity(2) on the calling thread (pid 0) with a
    // valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            eprintln!(
                "perf_ring bench: cannot pin a thread to CPU {cpu} ({}); writer and reader \
                 may share a CPU and the figures will vary",
                std::io::Error::last_os_error()
            )
        });
    }
}

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
            pin_to(READER_CPU);
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

/// How the producer hands records over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// `write_sample`, data_head published after every record.
    PerRecord,
    /// `write_samples` of 64 samples: one publish per batch.
    Batch64,
}

/// Producer-side bookkeeping of one bench, outside the timed work where
/// possible.
#[derive(Default)]
struct Clock {
    /// Time in the wakeup syscall (eventfd write).
    wake: Duration,
    wakes: u64,
    /// Time the ring was full (records dropped until the consumer caught
    /// up), from the first drop to the next successful write.
    full: Duration,
    full_since: Option<Instant>,
}

impl Clock {
    fn signal(&mut self, r: Option<&Reader>) {
        if let Some(r) = r {
            let t = Instant::now();
            r.wake();
            self.wake += t.elapsed();
            self.wakes += 1;
        }
    }

    /// Called when a write (batch) dropped records or wrote some.
    #[inline]
    fn dropped(&mut self, dropped: bool) {
        match (dropped, self.full_since) {
            (true, None) => self.full_since = Some(Instant::now()),
            (false, Some(t)) => {
                self.full += t.elapsed();
                self.full_since = None;
            }
            _ => {}
        }
    }
}

/// One `ring/samples_48b*` bench: a fresh ring, producer and consumer.
///
/// Each criterion iteration delivers `PER_ITER` records into the ring.
/// Records the producer has to drop because the consumer is late are
/// offered on top (and counted lost), so the time is per *delivered*
/// record and includes the time the ring was full.
fn bench_ring(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    wait: Option<Wait>,
    publish: Publish,
) {
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
    let mut clock = Clock::default();
    let mut release = 0u32;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let target = p.stats().records_written + PER_ITER;
                while p.stats().records_written < target {
                    match publish {
                        Publish::PerRecord => {
                            let out = p.write_sample(&sample(seq), &ids(seq)).unwrap();
                            seq += 1;
                            clock.dropped(!out.written);
                            if out.needs_wakeup {
                                clock.signal(reader.as_ref());
                            }
                        }
                        Publish::Batch64 => {
                            let out =
                                p.write_samples((seq..seq + BATCH).map(|i| (sample(i), ids(i))));
                            seq += BATCH;
                            clock.dropped(out.written == 0);
                            if out.needs_wakeup {
                                clock.signal(reader.as_ref());
                            }
                        }
                    }
                    if reader.is_none() {
                        // No consumer thread: release the ring from this
                        // thread every 16 KiB or so.
                        release += 1;
                        if release.is_multiple_of(if publish == Publish::Batch64 { 8 } else { 512 })
                        {
                            ring.pages().store(
                                CtrlField::DataTail,
                                p.published_head(),
                                Ordering::Release,
                            );
                        }
                    }
                }
            }
            start.elapsed()
        })
    });
    clock.dropped(false);
    let st = *p.stats();
    assert_eq!(st.records_written + st.records_dropped, seq);
    let Some(reader) = reader else {
        eprintln!(
            "{name}: {seq} records, no consumer thread, {} lost",
            st.records_dropped
        );
        assert_eq!(st.records_dropped, 0);
        return;
    };
    let rep = reader.finish();
    eprintln!(
        "{name}: {seq} offered, {} written, {} samples read and verified ({} bad, {} skips), \
         {} lost ({:.2}% of offered, {} LOST records); ring full for {:.0} ms; {} drains \
         ({:.0} records each); {} wakeups ({:.1} us each in write(2), {:.1} ns per written \
         record; {} received)",
        st.records_written,
        rep.samples,
        rep.bad,
        rep.skips,
        st.records_dropped,
        100.0 * st.records_dropped as f64 / seq.max(1) as f64,
        st.lost_records,
        clock.full.as_secs_f64() * 1e3,
        rep.bursts,
        rep.records as f64 / rep.bursts.max(1) as f64,
        clock.wakes,
        clock.wake.as_secs_f64() * 1e6 / clock.wakes.max(1) as f64,
        clock.wake.as_secs_f64() * 1e9 / st.records_written.max(1) as f64,
        rep.wakeups,
    );
    assert_eq!(rep.bad, 0, "{name}: the consumer read wrong records");
    assert_eq!(rep.skips, 0, "{name}: the consumer fell a ring behind");
    assert_eq!(rep.lost, st.lost_reported, "{name}: LOST totals");
    assert_eq!(rep.samples, st.records_written, "{name}: records read");
    assert_eq!(rep.records, st.records_written + st.lost_records);
    assert_eq!(rep.samples + rep.lost + p.pending_lost(), seq);
}

/// How a baseline copies each 48-byte record into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyBy {
    /// `memcpy` of a record buffer (`copy_nonoverlapping`), split in two at
    /// a page end. The baseline.
    Memcpy,
    /// Six 8-byte stores straight into the page (the producer's own store
    /// pattern, without any protocol); memcpy at a page end.
    Words,
}

/// A baseline: the same 48 bytes per record (IP and TIME change every
/// record) into the same pages at the same ring offsets, with the same
/// page-end handling as the producer.
///
/// With `read`, the realistic consumer of the producer benches ([`Reader`]
/// with [`Wait::Wakeup`]) reads and verifies the ring from the other CPU,
/// and the loop does only what that consumer needs: it stores data_head
/// and writes the eventfd each time it passes a half ring (the producer's
/// default watermark), and before a record that would overwrite unread
/// bytes it waits for data_tail (where the producer would drop the record
/// instead). No per-record publish, no LOST accounting, no wakeup
/// bookkeeping.
fn bench_copy(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, copy: CopyBy, read: bool) {
    let (mem, layout) = scattered(DATA_PAGES, 0);
    let pages = host_pages(&mem, &layout.data);
    let ring = Arc::new(GuestRing::new(mem, layout).unwrap());
    let size = (pages.len() * PAGE) as u64;
    let mask = pages.len() * PAGE - 1;
    let reader = read.then(|| Reader::spawn(ring.clone(), Wait::Wakeup));
    let ctrl = ring.pages();
    let mut rec = [0u64; REC / 8];
    rec[0] = u64::from(record::SAMPLE) | 1 << 32 | (REC as u64) << 48;
    (rec[2], rec[4], rec[5]) = (1 | 1 << 32, 7, 1);
    let mut seq = 0u64;
    // The next half-ring mark and the last data_tail seen.
    let (mut mark, mut tail) = (size / 2, 0u64);
    let mut waits = 0u64;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters * PER_ITER {
                // Bytes before this record: its ring offset and data_head.
                let head = seq * REC as u64;
                if reader.is_some() && head + REC as u64 - tail > size {
                    tail = ctrl.load(CtrlField::DataTail, Ordering::Acquire);
                    while head + REC as u64 - tail > size {
                        waits += 1;
                        std::thread::yield_now();
                        tail = ctrl.load(CtrlField::DataTail, Ordering::Acquire);
                    }
                }
                (rec[1], rec[3]) = (seq, seq);
                seq += 1;
                let off = head as usize & mask;
                let in_page = off % PAGE;
                let first = (PAGE - in_page).min(REC);
                // SAFETY: in_page < PAGE, so the pointer stays inside the
                // mapped page.
                let dst = unsafe { pages[off / PAGE].add(in_page) };
                match (copy, first == REC) {
                    (CopyBy::Memcpy, true) => {
                        // SAFETY: in_page + 48 <= PAGE: inside one page.
                        unsafe { std::ptr::copy_nonoverlapping(rec.as_ptr().cast(), dst, REC) };
                    }
                    (CopyBy::Words, true) => {
                        let dst = dst.cast::<u64>();
                        for (k, w) in rec.iter().enumerate() {
                            // SAFETY: in_page + 48 <= PAGE and `off` is a
                            // multiple of 8: an aligned word in the page.
                            unsafe { dst.add(k).write(*w) };
                        }
                    }
                    (_, false) => {
                        let src = rec.as_ptr().cast::<u8>();
                        let next = (off + first) & mask;
                        // SAFETY: the first part ends at the page end, the
                        // rest starts the next ring page; both inside
                        // mapped pages.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src, dst, first);
                            std::ptr::copy_nonoverlapping(
                                src.add(first),
                                pages[next / PAGE],
                                REC - first,
                            );
                        }
                    }
                }
                if let Some(r) = &reader {
                    let end = head + REC as u64;
                    if end >= mark {
                        // Release: the records before `end` are written.
                        ctrl.store(CtrlField::DataHead, end, Ordering::Release);
                        r.wake();
                        mark += size / 2;
                    }
                }
                black_box(&rec);
            }
            start.elapsed()
        })
    });
    if let Some(r) = reader {
        ctrl.store(CtrlField::DataHead, seq * REC as u64, Ordering::Release);
        let rep = r.finish();
        eprintln!(
            "{name}: {seq} records copied, {} read and verified ({} bad); the copy loop \
             waited for data_tail {waits} times",
            rep.samples, rep.bad
        );
        assert_eq!(rep.bad, 0, "{name}: the consumer read wrong records");
        assert_eq!(rep.skips, 0, "{name}: the consumer fell a ring behind");
        assert_eq!(rep.samples, seq, "{name}: records read");
    }
}

fn bench_samples(c: &mut Criterion) {
    pin_to(WRITER_CPU);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(PER_ITER));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    bench_copy(&mut g, "memcpy_48b", CopyBy::Memcpy, false);
    bench_copy(&mut g, "memcpy_48b_read", CopyBy::Memcpy, true);
    bench_copy(&mut g, "stores_48b_read", CopyBy::Words, true);
    use Publish::*;
    bench_ring(&mut g, "samples_48b", Some(Wait::Wakeup), PerRecord);
    bench_ring(&mut g, "samples_48b_batch64", Some(Wait::Wakeup), Batch64);
    bench_ring(&mut g, "samples_48b_batch64_noconsumer", None, Batch64);
    // The spinning consumer loses most records on a busy 2-vCPU machine,
    // and each iteration takes long: fewer samples.
    g.sample_size(10);
    bench_ring(&mut g, "samples_48b_spin", Some(Wait::Spin), PerRecord);
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
