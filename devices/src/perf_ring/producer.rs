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
use super::records::{Event, FixedSample, Sample, SampleFormat, SampleId};
use super::Error;
use crate::rate_limited::RateLimiter;
use crate::warn_rate_limited;

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
    scratch: Vec<u8>,
    batching: bool,
    unpublished: bool,
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
            tail: 0,
            lost: 0,
            paused: false,
            watermark,
            wakeup: 0,
            events: 0,
            scratch: Vec::with_capacity(256),
            batching: false,
            unpublished: false,
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

    /// The current (unpublished is impossible: always published) head.
    pub fn head(&self) -> u64 {
        self.head
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

    /// Writes a PERF_RECORD_SAMPLE.
    ///
    /// Samples without variable-length fields (no READ, CALLCHAIN, RAW or
    /// AUX) take a fast path: encoded on the stack, copied once, no LOST
    /// pending. Everything else goes through [`Producer::output`]; the
    /// bytes are identical.
    #[inline]
    pub fn write_sample(&mut self, sample: &Sample<'_>, ids: &SampleId) -> Result<Output, Error> {
        if self.lost == 0 && !self.paused {
            if let Some(fixed) = FixedSample::encode(&self.cfg.format, ids, sample) {
                let wakeup_before = self.wakeup;
                let len = 8 * fixed.words().len() as u64;
                let Some(offset) = self.reserve(len) else {
                    self.drop_record();
                    return Ok(Output::default());
                };
                self.mem.pages().write_data_words(offset, fixed.words());
                self.stats.records_written += 1;
                self.stats.bytes_written += len;
                self.count_sample_wakeup();
                self.publish_head();
                return Ok(self.finish(wakeup_before));
            }
        }
        self.output(&Event::Sample(*sample), ids)
    }

    /// Defers publishing data_head until [`Producer::end_batch`]: one
    /// Release store per batch instead of one per record, which keeps the
    /// control page's cache line from bouncing to a polling reader. Wakeups
    /// reported inside the batch should be raised after `end_batch`.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Publishes the head if records were written since
    /// [`Producer::begin_batch`] and returns to per-record publishing.
    pub fn end_batch(&mut self) {
        self.batching = false;
        if self.unpublished {
            self.unpublished = false;
            self.publish_head();
        }
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
        // Encode first: a record that cannot be laid out is the caller's
        // bug and must not change any ring state.
        let lost_len = if self.lost != 0 {
            fmt.lost_record_len()
        } else {
            0
        };
        self.scratch.clear();
        self.scratch.resize(lost_len, 0);
        ev.encode(&fmt, ids, &mut self.scratch)?;
        let total = self.scratch.len() as u64;

        let wakeup_before = self.wakeup;
        let Some(offset) = self.reserve(total) else {
            self.drop_record();
            return Ok(Output::default());
        };

        if lost_len != 0 {
            // Same reservation: PERF_RECORD_LOST {id, lost} + sample_id,
            // in front of the record, as __perf_output_begin does.
            let mut lost_rec = Vec::with_capacity(lost_len);
            let lost = std::mem::take(&mut self.lost);
            Event::Lost {
                id: self.cfg.event_id,
                lost,
            }
            .encode(&fmt, ids, &mut lost_rec)?;
            if let Some(dst) = self.scratch.get_mut(..lost_len) {
                dst.copy_from_slice(&lost_rec);
            }
            self.stats.lost_records += 1;
            self.stats.lost_reported += lost;
        }
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
        if let Wakeup::Events(n) = self.cfg.wakeup {
            if n != 0 {
                self.events += 1;
                if self.events >= n {
                    self.events -= n;
                    self.wakeup += 1;
                }
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
        }
        Output {
            written: true,
            needs_wakeup,
        }
    }

    #[inline]
    fn publish_head(&mut self) {
        if self.batching {
            self.unpublished = true;
            return;
        }
        // Kernel (producer)                User (consumer)
        //
        //   if (LOAD ->data_tail) {          LOAD ->data_head
        //             (A)                    smp_rmb()         (C)
        //     STORE $data                    LOAD $data
        //     smp_wmb()    (B)               smp_mb()          (D)
        //     STORE ->data_head              STORE ->data_tail
        //   }
        //
        // (B): this Release orders the record bytes copied above before
        // the new head; it pairs with the consumer's Acquire load of
        // data_head (C). (A) is the Acquire load of data_tail in
        // `refresh_tail`, pairing with the consumer's full barrier before
        // its tail store (D).
        self.pages()
            .store(CtrlField::DataHead, self.head, Ordering::Release);
    }

    #[inline]
    fn has_space(&self, len: u64) -> bool {
        let mask = self.size - 1;
        // CIRC_SPACE(head, tail, size) forward; CIRC_SPACE(tail, head, size)
        // backward. Both leave 8 bytes (one byte, rounded up by alignment)
        // free, so at most size - 8 bytes are unread.
        let space = if self.cfg.write_backward {
            self.head.wrapping_sub(self.tail).wrapping_sub(1) & mask
        } else {
            self.tail.wrapping_sub(self.head).wrapping_sub(1) & mask
        };
        space >= len
    }

    /// Reads data_tail and adopts it if it is sane. Returns false (and
    /// counts an error) if it is not.
    fn refresh_tail(&mut self) -> bool {
        // (A): Acquire pairs with the consumer's barrier (D) before its
        // data_tail store: once we see the new tail, its reads of the freed
        // bytes are done, so our stores below cannot be seen by them. The
        // kernel gets this from a control dependency; Rust has none.
        let tail = self.pages().load(CtrlField::DataTail, Ordering::Acquire);
        if tail == self.tail {
            return true;
        }
        // Unread bytes as the consumer claims them, and as they were with
        // the last sane tail. A sane tail only ever frees bytes: its unread
        // count is at most the previous one and at most size - 8, and it
        // is 8-aligned like every record boundary.
        let (unread, prev_unread) = if self.cfg.write_backward {
            (
                tail.wrapping_sub(self.head),
                self.tail.wrapping_sub(self.head),
            )
        } else {
            (
                self.head.wrapping_sub(tail),
                self.head.wrapping_sub(self.tail),
            )
        };
        if tail.is_multiple_of(8) && unread <= prev_unread && unread <= self.size - 8 {
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

    /// __perf_output_begin(): reserve `len` bytes, returning the ring
    /// offset to write them at, or None if there is no room.
    #[inline]
    fn reserve(&mut self, len: u64) -> Option<u64> {
        if !self.cfg.overwrite
            && !self.has_space(len)
            && (!self.refresh_tail() || !self.has_space(len))
        {
            return None;
        }
        let offset;
        let progress;
        if self.cfg.write_backward {
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
        Some(offset)
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
