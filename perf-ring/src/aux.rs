//! The AUX area: `perf_aux_output_begin` / `perf_aux_output_end` /
//! `perf_aux_output_skip` of kernel/events/ring_buffer.c.
//!
//! A session is `aux_begin` (room from aux_head and aux_tail), any number
//! of `aux_write`s of arbitrary byte streams (copied across page ends),
//! then `aux_end`, which emits PERF_RECORD_AUX into the data ring and only
//! then publishes aux_head, in the kernel's order.

use std::sync::atomic::Ordering;

use super::abi::aux_flag;
use super::memory::{CtrlField, RingMemory};
use super::producer::{Output, Producer};
use super::records::{Event, SampleId};
use super::Error;
use rate_limited::warn_rate_limited;

/// An open AUX session (`struct perf_output_handle` between begin and
/// end). Obtained from [`Producer::aux_begin`], consumed by
/// [`Producer::aux_end`].
#[must_use = "an AUX session must be ended with Producer::aux_end"]
#[derive(Debug)]
pub struct AuxHandle {
    /// aux_head when the session started (after skips).
    head: u64,
    /// Bytes committed to this session so far.
    written: u64,
    /// Room granted by aux_begin (normal mode); u64::MAX in snapshot mode.
    room: u64,
    flags: u64,
    wakeup: u64,
}

impl AuxHandle {
    /// Bytes that may still be written in this session.
    pub fn room(&self) -> u64 {
        self.room.saturating_sub(self.written)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flags collected so far.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// AUX offset at which the next wakeup is due (`handle->wakeup`),
    /// for a device that programs an interrupt threshold.
    pub fn wakeup_at(&self) -> u64 {
        self.wakeup
    }
}

/// Why no AUX session could start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxRefused {
    /// No AUX pages were declared.
    NoAuxArea,
    /// A session is already open (AUX does not nest).
    Busy,
    /// No room (or a nonsense aux_tail): the kernel disables the event and
    /// wakes the reader; the caller should stop tracing and raise a wakeup.
    Full,
}

/// What `aux_end` did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuxOutput {
    /// AUX offset in the PERF_RECORD_AUX (old head normally; new head in
    /// snapshot mode).
    pub offset: u64,
    /// Size in the PERF_RECORD_AUX.
    pub size: u64,
    /// Flags in the PERF_RECORD_AUX.
    pub flags: u64,
    /// Whether a PERF_RECORD_AUX was needed, and what happened to it.
    pub record: Option<Output>,
    /// Wake the reader (AUX watermark crossed, TRUNCATED, or the record
    /// asked for it).
    pub needs_wakeup: bool,
    /// TRUNCATED: the kernel sets pending_disable; stop tracing until the
    /// reader drains the AUX area.
    pub disable: bool,
}

impl<R: RingMemory> Producer<R> {
    fn aux_size(&self) -> u64 {
        self.mem.pages().aux_size()
    }

    /// `rb_need_aux_wakeup`.
    fn aux_need_wakeup(&mut self) -> bool {
        if self.cfg.aux_overwrite || self.aux.watermark == 0 {
            return false;
        }
        if self.aux.head.wrapping_sub(self.aux.wakeup) >= self.aux.watermark {
            self.aux.wakeup = self.aux.head - self.aux.head % self.aux.watermark;
            return true;
        }
        false
    }

    /// Reads aux_tail (Acquire, pairing with the consumer's barrier before
    /// its aux_tail store) and returns the room, 0 when full or nonsense.
    fn aux_room(&mut self) -> u64 {
        let size = self.aux_size();
        let tail = self.mem.pages().load(CtrlField::AuxTail, Ordering::Acquire);
        let head = self.aux.head;
        // A sane aux_tail lies in [last good tail, head]: anything else is
        // ahead of head, more than the area behind, or moved backwards.
        let unread = head.wrapping_sub(tail);
        let prev_unread = head.wrapping_sub(self.aux.tail);
        if unread > prev_unread || unread > size {
            self.stats.bad_aux_tail += 1;
            warn_rate_limited!(
                self.log,
                "perf ring: ignoring aux_tail {:#x} (aux_head {:#x}, last good {:#x}, size {:#x}); treating the AUX area as full",
                tail,
                head,
                self.aux.tail,
                size
            );
            return 0;
        }
        self.aux.tail = tail;
        // perf_aux_output_begin: room only if head - tail < size, then
        // CIRC_SPACE(head, tail, size).
        if unread < size {
            tail.wrapping_sub(head).wrapping_sub(1) & (size - 1)
        } else {
            0
        }
    }

    /// `perf_aux_output_begin`: opens a session. In normal mode the room is
    /// what aux_tail leaves; zero room refuses with [`AuxRefused::Full`].
    pub fn aux_begin(&mut self) -> Result<AuxHandle, AuxRefused> {
        if self.aux_size() == 0 {
            return Err(AuxRefused::NoAuxArea);
        }
        if self.aux.active {
            return Err(AuxRefused::Busy);
        }
        let room = if self.cfg.aux_overwrite {
            // Snapshot mode: stores do not depend on aux_tail.
            u64::MAX
        } else {
            let room = self.aux_room();
            if room == 0 {
                self.stats.aux_full += 1;
                self.stats.wakeups += 1;
                return Err(AuxRefused::Full);
            }
            room
        };
        self.aux.active = true;
        Ok(AuxHandle {
            head: self.aux.head,
            written: 0,
            room,
            flags: 0,
            wakeup: self.aux.wakeup.wrapping_add(self.aux.watermark),
        })
    }

    /// Copies `bytes` into the AUX area after what the session already
    /// wrote. In normal mode at most [`AuxHandle::room`] bytes are taken and
    /// a short write sets TRUNCATED; in snapshot mode everything is taken
    /// and older data is overwritten. Returns the bytes taken.
    pub fn aux_write(&mut self, handle: &mut AuxHandle, bytes: &[u8]) -> usize {
        let size = self.aux_size();
        if size == 0 {
            return 0;
        }
        let n = (bytes.len() as u64).min(handle.room()) as usize;
        if n < bytes.len() {
            handle.flags |= aux_flag::TRUNCATED;
        }
        let take = bytes.get(..n).unwrap_or(&[]);
        // Only the last `size` bytes can survive a wrap of the area.
        let skip = (take.len() as u64).saturating_sub(size) as usize;
        let tail_part = take.get(skip..).unwrap_or(&[]);
        let pos = handle
            .head
            .wrapping_add(handle.written)
            .wrapping_add(skip as u64);
        self.mem.pages().write_aux(pos, tail_part);
        handle.written += n as u64;
        n
    }

    /// `perf_aux_output_flag`: adds PARTIAL, COLLISION, TRUNCATED or a PMU
    /// format type. OVERWRITE is decided by the mode and refused here.
    pub fn aux_flag(&mut self, handle: &mut AuxHandle, flags: u64) -> Result<(), Error> {
        if flags & aux_flag::OVERWRITE != 0 || flags & !aux_flag::VALID != 0 {
            return Err(Error::AuxFlags(flags));
        }
        handle.flags |= flags;
        Ok(())
    }

    /// `perf_aux_output_skip`: advances aux_head by `bytes` without data
    /// (alignment padding). Only before any write in this session.
    pub fn aux_skip(&mut self, handle: &mut AuxHandle, bytes: u64) -> Result<bool, Error> {
        if handle.written != 0 {
            return Err(Error::AuxSkipAfterWrite);
        }
        if bytes > handle.room() {
            return Err(Error::AuxSkipTooLarge {
                skip: bytes,
                room: handle.room(),
            });
        }
        self.aux.head = self.aux.head.wrapping_add(bytes);
        // Release: nothing new to order, but keep every aux_head store a
        // Release so the consumer's Acquire pairs uniformly.
        self.mem
            .pages()
            .store(CtrlField::AuxHead, self.aux.head, Ordering::Release);
        let wake = self.aux_need_wakeup();
        if wake {
            handle.wakeup = self.aux.wakeup.wrapping_add(self.aux.watermark);
            self.stats.wakeups += 1;
        }
        handle.head = self.aux.head;
        if handle.room != u64::MAX {
            handle.room -= bytes;
        }
        Ok(wake)
    }

    /// `perf_aux_output_end`: commits the session, emits PERF_RECORD_AUX
    /// into the data ring (with `ids` as its sample_id trailer), then
    /// publishes aux_head.
    pub fn aux_end(&mut self, handle: AuxHandle, ids: &SampleId) -> AuxOutput {
        let mut flags = handle.flags;
        let mut wakeup = flags & aux_flag::TRUNCATED != 0;
        let size = self.aux_size();
        let (offset, rec_size) = if self.cfg.aux_overwrite {
            // Snapshot mode: the new head is the offset; the size is what
            // this session left in the area.
            flags |= aux_flag::OVERWRITE;
            self.aux.head = handle.head.wrapping_add(handle.written);
            (self.aux.head, handle.written.min(size))
        } else {
            flags &= !aux_flag::OVERWRITE;
            let old = self.aux.head;
            self.aux.head = old.wrapping_add(handle.written);
            (old, handle.written)
        };
        self.stats.aux_bytes += handle.written;
        // Only send PERF_RECORD_AUX if it says something: data, or a flag
        // other than OVERWRITE and the PMU format type.
        let record = if rec_size != 0
            || flags & !(aux_flag::PMU_FORMAT_TYPE_MASK | aux_flag::OVERWRITE) != 0
        {
            let out = self
                .output(
                    &Event::Aux {
                        offset,
                        size: rec_size,
                        flags,
                    },
                    ids,
                )
                // An AUX record always fits in a header (fixed size).
                .unwrap_or_default();
            wakeup |= out.needs_wakeup;
            Some(out)
        } else {
            None
        };
        // Kernel order: the PERF_RECORD_AUX is published before aux_head
        // moves, and a wakeup is never raised before the head covering its
        // record. Inside a batch that means publishing the data head now.
        if record.is_some() {
            self.publish_now();
        }
        // The AUX bytes were copied before this point, and the
        // PERF_RECORD_AUX (if any) is already published. This Release pairs
        // with the consumer's Acquire load of aux_head: a reader that sees
        // the new aux_head sees the bytes below it. (In the kernel this
        // ordering is the PMU driver's job; here the host is the driver.)
        self.mem
            .pages()
            .store(CtrlField::AuxHead, self.aux.head, Ordering::Release);
        if self.aux_need_wakeup() {
            wakeup = true;
        }
        let disable = flags & aux_flag::TRUNCATED != 0;
        if disable {
            self.stats.aux_truncated += 1;
        }
        if wakeup && !record.is_some_and(|r| r.needs_wakeup) {
            self.stats.wakeups += 1;
        }
        self.aux.active = false;
        AuxOutput {
            offset,
            size: rec_size,
            flags,
            record,
            needs_wakeup: wakeup,
            disable,
        }
    }

    /// Current aux_head.
    pub fn aux_head(&self) -> u64 {
        self.aux.head
    }

    /// Convenience: one whole session writing `bytes`.
    pub fn aux_output(&mut self, bytes: &[u8], ids: &SampleId) -> Result<AuxOutput, AuxRefused> {
        let mut h = self.aux_begin()?;
        let _ = self.aux_write(&mut h, bytes);
        Ok(self.aux_end(h, ids))
    }
}
