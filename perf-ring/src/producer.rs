//! The producer: `perf_output_begin` / `perf_output_put_handle` of
//! kernel/events/ring_buffer.c, on a ring in guest memory.
//!
//! One [`Producer`] owns one ring and must be its only writer (the kernel's
//! nesting protocol exists because NMIs interrupt writers; the host has no
//! NMIs, so the pvpmu device keeps one producer per ring behind `&mut`).
//!
//! The consumer is untrusted. Everything it can change (data_tail,
//! aux_tail) is read once per decision, validated, and never used to form
//! an address: ring offsets are reduced modulo the ring size by
//! [`RingPages`], so the worst a hostile consumer can do is make the ring
//! look full.

use std::sync::atomic::Ordering;

use super::abi::record;
use super::memory::{CtrlField, RingMemory, RingPages};
use super::records::{misc_word, Event, FixedLayout, Sample, SampleFormat, SampleId};
use super::Error;
use rate_limited::warn_rate_limited;
use rate_limited::RateLimiter;

/// When to ask for a reader wakeup (`attr.watermark` and the
/// `wakeup_events`/`wakeup_watermark` union).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// `attr.watermark = 0`: wake every `n` samples (0: never by count);
    /// the default half-buffer watermark applies as well, as in the kernel.
    Events(u32),
    /// `attr.watermark = 1`: wake when this many bytes were written since
    /// the last wakeup (0: half the buffer; capped at the buffer size).
    Watermark(u64),
}

impl Default for Wakeup {
    fn default() -> Self {
        Wakeup::Events(0)
    }
}

/// How the guest opened the event and mapped the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerConfig {
    /// Record layouts.
    pub format: SampleFormat,
    /// `primary_event_id`, written in PERF_RECORD_LOST.
    pub event_id: u64,
    /// `attr.write_backward`: head moves down, records are written at the
    /// new head.
    pub write_backward: bool,
    /// Data ring mapped without PROT_WRITE: the tail is ignored and writes
    /// never fail.
    pub overwrite: bool,
    /// Wakeup policy.
    pub wakeup: Wakeup,
    /// AUX area mapped without PROT_WRITE (snapshot mode).
    pub aux_overwrite: bool,
    /// `attr.aux_watermark` in bytes (0: half the AUX area). Ignored in
    /// snapshot mode, as in `rb_alloc_aux`.
    pub aux_watermark: u64,
}

/// What happened to one record.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Output {
    /// The record is in the ring (and published).
    pub written: bool,
    /// The caller should wake the reader (raise the guest interrupt).
    pub needs_wakeup: bool,
}

/// What [`Producer::write_samples`] did.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SamplesOutput {
    /// Samples written.
    pub written: u64,
    /// Samples dropped for lack of room or while paused (counted lost,
    /// reported by a later PERF_RECORD_LOST).
    pub dropped: u64,
    /// Raise the reader wakeup (guest interrupt). The head covering the
    /// samples is published when `write_samples` returns, unless it was
    /// called inside a [`Producer::begin_batch`] batch: then raise it after
    /// that batch ends.
    pub needs_wakeup: bool,
    /// The first sample that could not be laid out (its index in the
    /// iterator, and why). Nothing of it, and nothing after it, was written.
    pub error: Option<(usize, Error)>,
}

/// Counters. All are monotonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerStats {
    /// Records written (PERF_RECORD_LOST records not included).
    pub records_written: u64,
    /// Records dropped for lack of room or while paused.
    pub records_dropped: u64,
    /// PERF_RECORD_LOST records written.
    pub lost_records: u64,
    /// Sum of the `lost` fields written; equals `records_dropped` minus
    /// what is still pending.
    pub lost_reported: u64,
    /// Bytes written to the data ring (records, LOST included).
    pub bytes_written: u64,
    /// Times the consumer's data_tail was nonsense (ahead of head, behind
    /// by more than the ring, unaligned or moved backwards).
    pub bad_data_tail: u64,
    /// Times aux_tail was nonsense.
    pub bad_aux_tail: u64,
    /// Wakeups requested.
    pub wakeups: u64,
    /// AUX bytes committed.
    pub aux_bytes: u64,
    /// AUX sessions ended with TRUNCATED.
    pub aux_truncated: u64,
    /// `aux_begin` refusals for lack of room.
    pub aux_full: u64,
}

/// AUX state (`rb->aux_*`).
#[derive(Debug, Default)]
pub(super) struct AuxState {
    pub(super) head: u64,
    pub(super) tail: u64,
    pub(super) wakeup: u64,
    pub(super) watermark: u64,
    pub(super) active: bool,
}

/// Writes perf records into one ring.
#[derive(Debug)]
pub struct Producer<R: RingMemory> {
    pub(super) mem: R,
    pub(super) cfg: ProducerConfig,
    size: u64,
    /// `rb->head`: the next write position (moves down in backward mode).
    head: u64,
    /// The data_head value last stored to the control page (differs from
    /// `head` only inside a batch).
    published: u64,
    /// The last data_tail that passed validation. Only a conservative
    /// bound: a sane tail never moves backwards, so space computed from it
    /// is never larger than the real space.
    tail: u64,
    /// `rb->lost`: records dropped since the last PERF_RECORD_LOST.
    lost: u64,
    paused: bool,
    /// `rb->watermark`.
    watermark: u64,
    /// `rb->wakeup`.
    wakeup: u64,
    /// `rb->events`.
    events: u32,
    /// `attr.wakeup_events` (0: not counting samples).
    wakeup_events: u32,
    /// Layout of the format's samples, if they have no variable-length
    /// fields (the fast path of `write_sample`).
    fixed: Option<FixedLayout>,
    /// Length of a PERF_RECORD_LOST with its trailer.
    lost_len: u64,
    scratch: Vec<u8>,
    batching: bool,
    /// A record inside the current batch asked for a wakeup.
    batch_wakeup: bool,
    pub(super) stats: ProducerStats,
    pub(super) log: RateLimiter,
    pub(super) aux: AuxState,
}

impl<R: RingMemory> Producer<R> {
    /// Takes over the ring in `mem`: zeroes the data (and AUX) pages,
    /// initializes the control page like `perf_event_init_userpage`
    /// (head, tail, aux_head, aux_tail = 0) and starts producing.
    pub fn new(mem: R, cfg: ProducerConfig) -> Result<Self, Error> {
        // Re-validate the format: the config may have been built by hand.
        let format = SampleFormat::new(
            cfg.format.sample_type,
            cfg.format.read_format,
            cfg.format.sample_id_all,
        )?;
        let pages = mem.pages();
        let size = pages.data_size();
        let aux_size = pages.aux_size();
        pages.zero_data();
        pages.zero_aux();
        pages.init_control();
        // ring_buffer_init()
        let watermark = match cfg.wakeup {
            Wakeup::Watermark(w) if w != 0 => w.min(size),
            _ => size / 2,
        };
        // rb_alloc_aux()
        let aux_watermark = if cfg.aux_overwrite {
            0
        } else if cfg.aux_watermark != 0 {
            cfg.aux_watermark.min(aux_size)
        } else {
            (aux_size / 2).min(u32::MAX as u64)
        };
        Ok(Producer {
            mem,
            cfg: ProducerConfig { format, ..cfg },
            size,
            head: 0,
            published: 0,
            tail: 0,
            lost: 0,
            paused: false,
            watermark,
            wakeup: 0,
            events: 0,
            wakeup_events: match cfg.wakeup {
                Wakeup::Events(n) => n,
                Wakeup::Watermark(_) => 0,
            },
            fixed: FixedLayout::new(&format),
            lost_len: format.lost_record_len() as u64,
            scratch: Vec::with_capacity(256),
            batching: false,
            batch_wakeup: false,
            stats: ProducerStats::default(),
            log: RateLimiter::default(),
            aux: AuxState {
                watermark: aux_watermark,
                ..Default::default()
            },
        })
    }

    /// The ring memory.
    pub fn memory(&self) -> &R {
        &self.mem
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProducerConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &ProducerStats {
        &self.stats
    }

    /// Records dropped and not yet reported in a PERF_RECORD_LOST.
    pub fn pending_lost(&self) -> u64 {
        self.lost
    }

    /// The current head: where the next record goes. Inside a batch it may
    /// be ahead of the published data_head ([`Producer::published_head`]).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The data_head value last published to the control page. Equal to
    /// [`Producer::head`] outside a batch.
    pub fn published_head(&self) -> u64 {
        self.published
    }

    /// Whether a batch is open ([`Producer::begin_batch`]).
    pub fn is_batching(&self) -> bool {
        self.batching
    }

    /// PERF_EVENT_IOC_PAUSE_OUTPUT: while paused every record is lost.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether output is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Switches between normal and overwrite mode, as remapping the ring
    /// with or without PROT_WRITE would. Entering normal mode takes the
    /// current head as the consumer's starting point if the tail is not
    /// sane.
    pub fn set_overwrite(&mut self, overwrite: bool) {
        // A remap is a batch boundary: everything written so far is
        // published before the tail may be reset to the head.
        self.publish_now();
        if self.cfg.overwrite && !overwrite {
            // The reader of an overwrite ring does not maintain data_tail:
            // start the normal-mode window empty.
            self.tail = self.head;
            self.mem
                .pages()
                .store(CtrlField::DataTail, self.head, Ordering::Relaxed);
        }
        self.cfg.overwrite = overwrite;
    }

    fn pages(&self) -> &RingPages {
        self.mem.pages()
    }

    /// Hands the ring to another event: records from now on use `format`
    /// and PERF_RECORD_LOST carries `event_id`. One ring serving successive
    /// events is the pvpmu device's case (one event slot per vCPU); the
    /// kernel never does this, each rb belongs to one event.
    ///
    /// Drops still pending (not yet reported in a PERF_RECORD_LOST) belong
    /// to the previous event; they are returned and forgotten, so the new
    /// event's LOST records count only its own drops. Must not be called
    /// inside a batch.
    pub fn set_format(&mut self, format: SampleFormat, event_id: u64) -> Result<u64, Error> {
        let format =
            SampleFormat::new(format.sample_type, format.read_format, format.sample_id_all)?;
        debug_assert!(!self.batching, "set_format inside a batch");
        self.cfg.format = format;
        self.cfg.event_id = event_id;
        self.fixed = FixedLayout::new(&format);
        self.lost_len = format.lost_record_len() as u64;
        Ok(std::mem::take(&mut self.lost))
    }

    /// Writes a PERF_RECORD_SAMPLE.
    ///
    /// Formats without variable-length fields (no READ, CALLCHAIN, RAW or
    /// AUX) take a fast path when no LOST is pending: the layout was
    /// computed at setup, the words are stored straight into the page when
    /// the record does not cross a page end, and data_tail is only read
    /// when the cached tail says the ring may be full. Everything else goes
    /// through [`Producer::output`]; the bytes are identical.
    #[inline]
    pub fn write_sample(&mut self, sample: &Sample<'_>, ids: &SampleId) -> Result<Output, Error> {
        if let Some(layout) = self.fixed {
            if !self.paused {
                if self.lost == 0 {
                    // Decide the direction once; both copies are inlined.
                    return Ok(if self.cfg.write_backward {
                        self.write_fixed(&layout, sample, ids, true)
                    } else {
                        self.write_fixed(&layout, sample, ids, false)
                    });
                }
                // A LOST is pending and goes in front of this sample if both
                // fit. While the ring stays full, dropping must stay cheap:
                // only a record that fits takes the general path.
                if !self.room_for(layout.len() + self.lost_len, self.cfg.write_backward) {
                    self.drop_record();
                    return Ok(Output::default());
                }
            }
        }
        self.output(&Event::Sample(*sample), ids)
    }

    #[inline(always)]
    fn write_fixed(
        &mut self,
        layout: &FixedLayout,
        sample: &Sample<'_>,
        ids: &SampleId,
        backward: bool,
    ) -> Output {
        if !self.room_for(layout.len(), backward) {
            self.drop_record();
            return Output::default();
        }
        self.put_fixed(layout, sample, ids, backward)
    }

    /// Writes a fixed-format sample that [`Producer::room_for`] said fits.
    #[inline(always)]
    fn put_fixed(
        &mut self,
        layout: &FixedLayout,
        sample: &Sample<'_>,
        ids: &SampleId,
        backward: bool,
    ) -> Output {
        let len = layout.len();
        let wakeup_before = self.wakeup;
        let offset = self.advance(len, backward);
        let src = FixedLayout::sources(ids, sample);
        self.mem.pages().write_data_gather(
            offset,
            layout.header(sample.misc),
            &src,
            layout.body_index(),
            layout.body_words(),
        );
        self.stats.records_written += 1;
        self.stats.bytes_written += len;
        self.count_sample_wakeup();
        self.publish_head();
        self.finish(wakeup_before)
    }

    /// Writes a batch of PERF_RECORD_SAMPLEs and publishes data_head once,
    /// after all of them: the fast path for a device that hands over the
    /// samples of one tick (or one VM exit) together. The records, the LOST
    /// injection and the wakeup accounting are exactly those of calling
    /// [`Producer::write_sample`] for each sample inside
    /// [`Producer::begin_batch`] / [`Producer::end_batch_wakeup`].
    ///
    /// Stops at the first sample that cannot be laid out (reported in
    /// [`SamplesOutput::error`]); the samples before it are written and
    /// published.
    pub fn write_samples<'s, I>(&mut self, samples: I) -> SamplesOutput
    where
        I: IntoIterator<Item = (Sample<'s>, SampleId)>,
    {
        let outer = self.batching;
        self.batching = true;
        let wakeups = self.stats.wakeups;
        let mut out = SamplesOutput::default();
        let mut samples = samples.into_iter();
        loop {
            let next = match self.fixed {
                Some(layout) if !self.cfg.write_backward && !self.paused && self.lost == 0 => {
                    self.write_fixed_run(&layout, &mut samples, &mut out)
                }
                _ => samples.next(),
            };
            // Anything the run did not take goes through the general path.
            let Some((sample, ids)) = next else { break };
            match self.write_sample(&sample, &ids) {
                Ok(o) if o.written => out.written += 1,
                Ok(_) => out.dropped += 1,
                Err(e) => {
                    out.error = Some(((out.written + out.dropped) as usize, e));
                    break;
                }
            }
        }
        out.needs_wakeup = self.stats.wakeups != wakeups;
        if !outer {
            let _ = self.end_batch_wakeup();
        }
        out
    }

    /// The inner loop of [`Producer::write_samples`] for a fixed format in a
    /// forward ring with no LOST pending and output not paused: writes
    /// samples while the cached tail leaves room (batch open, so nothing is
    /// published). Returns the first sample that needs the general path
    /// (the cached tail says the ring may be full), or `None` at the end.
    ///
    /// The state lives in locals for the loop and is written back once.
    /// Per sample this is exactly `room_for` (cached tail only), `advance`
    /// (forward), `count_sample_wakeup` and `finish` of [`Producer::put_fixed`]
    /// with the batch open; tests/perf_ring_fast.rs and the `WriteMany`
    /// proptest op compare the two.
    #[inline(always)]
    fn write_fixed_run<'s, I>(
        &mut self,
        layout: &FixedLayout,
        samples: &mut I,
        out: &mut SamplesOutput,
    ) -> Option<(Sample<'s>, SampleId)>
    where
        I: Iterator<Item = (Sample<'s>, SampleId)>,
    {
        debug_assert!(self.batching && !self.cfg.write_backward && !self.paused);
        debug_assert_eq!(self.lost, 0);
        let len = layout.len();
        let mask = self.size - 1;
        let overwrite = self.cfg.overwrite;
        let (tail, watermark, wakeup_events) = (self.tail, self.watermark, self.wakeup_events);
        let (mut head, mut wakeup, mut events) = (self.head, self.wakeup, self.events);
        let (mut written, mut wakeups) = (0u64, 0u64);
        let (header, idx, words) = (layout.header(0), layout.body_index(), layout.body_words());
        let pages = self.mem.pages();
        let mut rest = None;
        for (sample, ids) in samples.by_ref() {
            // has_space(len, false) with the cached tail.
            if !overwrite && tail.wrapping_sub(head).wrapping_sub(1) & mask < len {
                rest = Some((sample, ids));
                break;
            }
            let wakeup_before = wakeup;
            // advance(len, false)
            let offset = head;
            head = head.wrapping_add(len);
            if head.wrapping_sub(wakeup) > watermark {
                wakeup = wakeup.wrapping_add(watermark);
            }
            let src = FixedLayout::sources(&ids, &sample);
            pages.write_data_gather(offset, header | misc_word(sample.misc), &src, idx, words);
            // count_sample_wakeup()
            if wakeup_events != 0 {
                events += 1;
                if events >= wakeup_events {
                    events -= wakeup_events;
                    wakeup += 1;
                }
            }
            // finish()
            wakeups += u64::from(wakeup != wakeup_before);
            written += 1;
        }
        self.head = head;
        self.wakeup = wakeup;
        self.events = events;
        self.stats.records_written += written;
        self.stats.bytes_written += written * len;
        self.stats.wakeups += wakeups;
        self.batch_wakeup |= wakeups != 0;
        out.written += written;
        rest
    }

    /// Starts a batch: data_head is published once, by
    /// [`Producer::end_batch`] (or [`Producer::end_batch_wakeup`]), instead
    /// of after every record. This is the fast path for a device that
    /// writes the samples of one tick (or one VM exit) together: the
    /// control page's cache line, which a polling reader also touches, is
    /// written once per batch.
    ///
    /// Rules (docs/perf-ring.md, "Batched publication"): records in a batch
    /// are invisible to the reader until the batch ends, so keep batches
    /// well below the ring size; a wakeup reported by a record inside the
    /// batch must not be raised before the batch ends (use
    /// [`Producer::end_batch_wakeup`], which collects them). Nested
    /// `begin_batch` calls are one batch.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends the batch: publishes data_head (one Release store, after every
    /// record byte of the batch) if anything was written, and returns to
    /// per-record publishing.
    pub fn end_batch(&mut self) {
        let _ = self.end_batch_wakeup();
    }

    /// [`Producer::end_batch`], returning whether any record of the batch
    /// asked for a reader wakeup. The head covering those records is
    /// published when this returns, so the wakeup may be raised now.
    #[must_use = "raise the reader wakeup (guest interrupt) when this returns true"]
    pub fn end_batch_wakeup(&mut self) -> bool {
        self.batching = false;
        self.publish_head();
        std::mem::take(&mut self.batch_wakeup)
    }

    /// Writes any record. PERF_RECORD_LOST is refused: the producer injects
    /// those itself.
    pub fn output(&mut self, ev: &Event<'_>, ids: &SampleId) -> Result<Output, Error> {
        if matches!(ev, Event::Lost { .. }) {
            return Err(Error::LostIsInjected);
        }
        let fmt = self.cfg.format;
        if self.paused {
            // __perf_output_begin: rb->paused counts every record as lost.
            self.drop_record();
            return Ok(Output::default());
        }
        // A record that cannot be laid out is the caller's bug and must not
        // change any ring state: validate (and size) it first. Then check
        // the room before encoding, so dropping records while the ring is
        // full costs no encoding.
        let len = ev.encoded_len(&fmt)? as u64;
        let lost_len = if self.lost != 0 { self.lost_len } else { 0 };
        let total = lost_len + len;
        let backward = self.cfg.write_backward;
        if !self.room_for(total, backward) {
            self.drop_record();
            return Ok(Output::default());
        }
        self.scratch.clear();
        if lost_len != 0 {
            // Same reservation: PERF_RECORD_LOST {id, lost} + sample_id,
            // in front of the record, as __perf_output_begin does.
            Event::Lost {
                id: self.cfg.event_id,
                lost: self.lost,
            }
            .encode(&fmt, ids, &mut self.scratch)?;
        }
        ev.encode(&fmt, ids, &mut self.scratch)?;
        debug_assert_eq!(self.scratch.len() as u64, total);
        // Nothing below can fail: commit.
        if lost_len != 0 {
            let lost = std::mem::take(&mut self.lost);
            self.stats.lost_records += 1;
            self.stats.lost_reported += lost;
        }
        let wakeup_before = self.wakeup;
        let offset = self.advance(total, backward);
        self.mem.pages().write_data(offset, &self.scratch);
        self.stats.records_written += 1;
        self.stats.bytes_written += total;

        if ev.record_type() == record::SAMPLE {
            self.count_sample_wakeup();
        }
        self.publish_head();
        Ok(self.finish(wakeup_before))
    }

    fn drop_record(&mut self) {
        self.lost += 1;
        self.stats.records_dropped += 1;
    }

    /// The end of perf_output_sample(): wakeup_events counting.
    #[inline]
    fn count_sample_wakeup(&mut self) {
        let n = self.wakeup_events;
        if n != 0 {
            self.events += 1;
            if self.events >= n {
                self.events -= n;
                self.wakeup += 1;
            }
        }
    }

    #[inline]
    fn finish(&mut self, wakeup_before: u64) -> Output {
        // perf_output_put_handle: wake if rb->wakeup moved during this
        // record.
        let needs_wakeup = self.wakeup != wakeup_before;
        if needs_wakeup {
            self.stats.wakeups += 1;
            self.batch_wakeup |= self.batching;
        }
        Output {
            written: true,
            needs_wakeup,
        }
    }

    /// perf_output_put_handle: publishes `head` unless a batch is open.
    #[inline(always)]
    fn publish_head(&mut self) {
        if !self.batching {
            self.publish_now();
        }
    }

    /// Stores data_head if it moved since the last store.
    #[inline(always)]
    pub(super) fn publish_now(&mut self) {
        if self.published == self.head {
            return;
        }
        self.published = self.head;
        // Kernel (producer)                User (consumer)
        //
        //   if (LOAD ->data_tail) {          LOAD ->data_head
        //             (A)                    smp_rmb()         (C)
        //     STORE $data                    LOAD $data
        //     smp_wmb()    (B)               smp_mb()          (D)
        //     STORE ->data_head              STORE ->data_tail
        //   }
        //
        // (B): this Release orders every record byte copied before it (all
        // the records of a batch) before the new head; it pairs with the
        // consumer's Acquire load of data_head (C). (A) is the Acquire load
        // of data_tail in `refresh_tail`, pairing with the consumer's full
        // barrier before its tail store (D).
        self.pages()
            .store(CtrlField::DataHead, self.head, Ordering::Release);
    }

    #[inline]
    fn has_space(&self, len: u64, backward: bool) -> bool {
        let mask = self.size - 1;
        // CIRC_SPACE(head, tail, size) forward; CIRC_SPACE(tail, head, size)
        // backward. Both leave 8 bytes (one byte, rounded up by alignment)
        // free, so at most size - 8 bytes are unread.
        let space = if backward {
            self.head.wrapping_sub(self.tail).wrapping_sub(1) & mask
        } else {
            self.tail.wrapping_sub(self.head).wrapping_sub(1) & mask
        };
        space >= len
    }

    /// Reads data_tail and adopts it if it is sane. Returns false (and
    /// counts an error) if it is not.
    #[inline(never)]
    fn refresh_tail(&mut self) -> bool {
        // (A): Acquire pairs with the consumer's barrier (D) before its
        // data_tail store: once we see the new tail, its reads of the freed
        // bytes are done, so our stores below cannot be seen by them. The
        // kernel gets this from a control dependency; Rust has none.
        let tail = self.pages().load(CtrlField::DataTail, Ordering::Acquire);
        if tail == self.tail {
            return true;
        }
        // Published bytes the consumer claims are unread, and as they were
        // with the last sane tail. A sane tail only ever frees bytes the
        // consumer could see: it lies between the last sane tail and the
        // *published* head (never inside an unpublished batch), and it is
        // 8-aligned like every record boundary. Then head - tail <= size - 8
        // too, which the space computation needs.
        let (unread, prev_unread, pending) = if self.cfg.write_backward {
            (
                tail.wrapping_sub(self.published),
                self.tail.wrapping_sub(self.published),
                self.published.wrapping_sub(self.head),
            )
        } else {
            (
                self.published.wrapping_sub(tail),
                self.published.wrapping_sub(self.tail),
                self.head.wrapping_sub(self.published),
            )
        };
        if tail.is_multiple_of(8)
            && unread <= prev_unread
            && unread.saturating_add(pending) <= self.size - 8
        {
            self.tail = tail;
            return true;
        }
        self.stats.bad_data_tail += 1;
        warn_rate_limited!(
            self.log,
            "perf ring: ignoring data_tail {:#x} (head {:#x}, last good tail {:#x}, size {:#x}); treating the ring as full",
            tail,
            self.head,
            self.tail,
            self.size
        );
        false
    }

    /// The space check of __perf_output_begin(): whether `len` bytes fit.
    /// data_tail is read (Acquire) only when the cached tail says they may
    /// not. Changes nothing but the cached tail, which only grows the room
    /// until the next [`Producer::advance`].
    ///
    /// `backward` must be `cfg.write_backward`; callers pass a constant
    /// where they can, so the direction is decided once per record.
    #[inline(always)]
    fn room_for(&mut self, len: u64, backward: bool) -> bool {
        self.cfg.overwrite
            || self.has_space(len, backward)
            || (self.refresh_tail() && self.has_space(len, backward))
    }

    /// The rest of __perf_output_begin(): takes `len` bytes that
    /// [`Producer::room_for`] said fit, returning the ring offset to write
    /// them at, and moves the wakeup watermark.
    #[inline(always)]
    fn advance(&mut self, len: u64, backward: bool) -> u64 {
        let offset;
        let progress;
        if backward {
            self.head = self.head.wrapping_sub(len);
            offset = self.head;
            progress = self.head.wrapping_neg();
        } else {
            offset = self.head;
            self.head = self.head.wrapping_add(len);
            progress = self.head;
        }
        if progress.wrapping_sub(self.wakeup) > self.watermark {
            self.wakeup = self.wakeup.wrapping_add(self.watermark);
        }
        offset
    }

    /// Bytes the control page claims are unread right now (for
    /// diagnostics).
    pub fn unread_bytes(&self) -> u64 {
        let tail = self.pages().load(CtrlField::DataTail, Ordering::Acquire);
        if self.cfg.write_backward {
            tail.wrapping_sub(self.head)
        } else {
            self.head.wrapping_sub(tail)
        }
    }
}
