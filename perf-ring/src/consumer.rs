//! The consumer side of the protocol, after tools/lib/perf/mmap.c.
//!
//! Forward rings: load data_head with Acquire, copy out [tail, head),
//! walk the records, then store data_tail with Release. Backward rings are
//! read from head towards older records (`overwrite_rb_find_range`),
//! after the producer was paused. Forward rings mapped read-only are read
//! optimistically and validated against the head afterwards.
//!
//! The consumer copies the whole unread range out in one pass, so a record
//! that wraps the end of the ring needs no special case and the callback
//! sees contiguous bytes. Nothing in the ring is trusted: sizes are checked
//! before use.

use std::sync::atomic::{fence, Ordering};

use super::abi::{HEADER_LEN, MAX_RECORD_LEN};
use super::checker::{Checker, Violation};
use super::decode::Header;
use super::memory::{CtrlField, RingMemory};

/// How the ring is mapped and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Writable mapping: the consumer owns data_tail.
    Forward,
    /// Read-only forward ring: the tail is not written; records the
    /// producer may already be overwriting are discarded.
    ForwardOverwrite,
    /// `write_backward` ring (read-only, as `perf record --overwrite`):
    /// read from head towards older records while the producer is paused.
    Backward,
}

/// Why reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A header that cannot be right: the producer is broken or the ring
    /// was not zeroed. The reader should resynchronise at the head.
    #[error(
        "corrupt record header at ring position {pos:#x} (size {size}); resync with skip_to_head()"
    )]
    Corrupt {
        /// Ring position.
        pos: u64,
        /// The bad `header.size`.
        size: u16,
    },
    /// An invariant of the protocol does not hold.
    #[error(transparent)]
    Check(#[from] Violation),
}

/// One batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batch {
    /// Records delivered.
    pub records: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// The reader fell behind (more than the ring unread, or overwritten
    /// while copying) and skipped to the head.
    pub skipped: bool,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Records delivered.
    pub records: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Times the reader skipped to the head.
    pub skips: u64,
}

/// Reads one ring.
#[derive(Debug)]
pub struct Consumer<R: RingMemory> {
    mem: R,
    mode: ReadMode,
    /// `map->prev`: where the last read ended.
    prev: u64,
    /// Largest record the producer may have in flight past the published
    /// head (ForwardOverwrite validation).
    max_record: u64,
    buf: Vec<u8>,
    stats: ConsumerStats,
    aux_prev: u64,
    aux_buf: Vec<u8>,
}

impl<R: RingMemory> Consumer<R> {
    /// Starts reading at the current data_tail (Forward) or data_head
    /// (the other modes).
    pub fn new(mem: R, mode: ReadMode) -> Self {
        let pages = mem.pages();
        let prev = match mode {
            ReadMode::Forward => pages.load(CtrlField::DataTail, Ordering::Relaxed),
            _ => pages.load(CtrlField::DataHead, Ordering::Acquire),
        };
        let aux_prev = pages.load(CtrlField::AuxTail, Ordering::Relaxed);
        Consumer {
            mem,
            mode,
            prev,
            max_record: (MAX_RECORD_LEN + 64) as u64,
            buf: Vec::new(),
            stats: ConsumerStats::default(),
            aux_prev,
            aux_buf: Vec::new(),
        }
    }

    /// For [`ReadMode::ForwardOverwrite`]: the largest record (LOST
    /// included) the producer writes, to bound what it may be writing
    /// past the published head. Defaults to 65535 + 64.
    pub fn set_max_record_len(&mut self, len: u64) {
        self.max_record = len.max(HEADER_LEN as u64);
    }

    /// The memory.
    pub fn memory(&self) -> &R {
        &self.mem
    }

    /// Counters.
    pub fn stats(&self) -> &ConsumerStats {
        &self.stats
    }

    /// Where the next read starts.
    pub fn position(&self) -> u64 {
        self.prev
    }

    /// `ring_buffer_read_head`: Acquire, pairs with the producer's Release
    /// store of data_head (C pairs with B).
    pub fn read_head(&self) -> u64 {
        self.mem
            .pages()
            .load(CtrlField::DataHead, Ordering::Acquire)
    }

    /// Sets where the next read starts (`map->prev`): for a backward ring,
    /// the head of the previous read (0 for a ring never read).
    pub fn set_position(&mut self, pos: u64) {
        self.prev = pos;
    }

    /// Drops everything unread and continues at the head.
    pub fn skip_to_head(&mut self) {
        self.prev = self.read_head();
        self.stats.skips += 1;
        if self.mode == ReadMode::Forward {
            self.write_tail(self.prev);
        }
    }

    fn write_tail(&self, tail: u64) {
        // (D): the reads of the record bytes above must complete before the
        // producer can see the space freed. A Release store orders every
        // earlier load and store before it (tools' ring_buffer_write_tail
        // uses smp_store_release too); it pairs with the producer's Acquire
        // load of data_tail (A).
        self.mem
            .pages()
            .store(CtrlField::DataTail, tail, Ordering::Release);
    }

    /// Reads everything published, calling `f(position, record_bytes)` for
    /// each record in ring order (newest first for backward rings), and
    /// (Forward) releases the space. With a checker, every record and head
    /// is verified and the unread bytes are re-read before the tail is
    /// released to prove they did not change.
    pub fn read_batch<F>(
        &mut self,
        mut checker: Option<&mut Checker>,
        mut f: F,
    ) -> Result<Batch, ReadError>
    where
        F: FnMut(u64, &[u8]),
    {
        match self.mode {
            ReadMode::Forward | ReadMode::ForwardOverwrite => {
                self.read_forward(&mut checker, &mut f)
            }
            ReadMode::Backward => self.read_backward(&mut checker, &mut f),
        }
    }

    fn read_forward<F>(
        &mut self,
        checker: &mut Option<&mut Checker>,
        f: &mut F,
    ) -> Result<Batch, ReadError>
    where
        F: FnMut(u64, &[u8]),
    {
        let pages = self.mem.pages();
        let size = pages.data_size();
        let head = self.read_head();
        if let Some(c) = checker.as_deref_mut() {
            let tail = if self.mode == ReadMode::Forward {
                Some(self.prev)
            } else {
                None
            };
            c.on_head(head, tail)?;
        }
        let mut start = self.prev;
        let avail = head.wrapping_sub(start);
        if avail == 0 {
            return Ok(Batch::default());
        }
        let mut batch = Batch::default();
        if avail > size {
            // __perf_mmap__read_init: "failed to keep up with mmap data".
            if self.mode == ReadMode::Forward {
                if let Some(c) = checker.as_deref_mut() {
                    c.fail(Violation::TooMuchUnread {
                        head,
                        tail: start,
                        size,
                    })?;
                }
            }
            self.prev = head;
            self.stats.skips += 1;
            if let Some(c) = checker.as_deref_mut() {
                c.resync(head);
            }
            if self.mode == ReadMode::Forward {
                self.write_tail(head);
            }
            batch.skipped = true;
            return Ok(batch);
        }
        // The buffer only grows (to at most the ring size): no zeroing per
        // batch.
        let avail = avail as usize;
        if self.buf.len() < avail {
            self.buf.resize(avail, 0);
        }
        let buf = self.buf.get_mut(..avail).unwrap_or_default();
        pages.read_data(start, buf);
        let buf = &*buf;
        let mut valid_from = 0usize;
        if self.mode == ReadMode::ForwardOverwrite {
            // Seqlock-style validation: order the copies above before the
            // head re-read, then keep only bytes the producer cannot have
            // reached yet (it may be writing up to max_record bytes past the
            // published head).
            fence(Ordering::Acquire);
            let now = pages.load(CtrlField::DataHead, Ordering::Relaxed);
            let safe_from = now.wrapping_add(self.max_record).wrapping_sub(size);
            if safe_from.wrapping_sub(start) as i64 > 0 {
                // Part of the copy may be torn: the walk would need a
                // record boundary inside it that we cannot trust. Skip.
                self.stats.skips += 1;
                batch.skipped = true;
                self.prev = head;
                if let Some(c) = checker.as_deref_mut() {
                    c.resync(head);
                }
                return Ok(batch);
            }
            valid_from = 0;
        }
        let mut off = valid_from;
        while off < buf.len() {
            let pos = start;
            let rest = buf.get(off..).unwrap_or(&[]);
            let hdr = match Header::parse(rest) {
                Ok(h) => h,
                Err(_) => return Err(ReadError::Corrupt { pos, size: 0 }),
            };
            let len = hdr.size as usize;
            if len < HEADER_LEN || !len.is_multiple_of(8) || len > rest.len() {
                return Err(ReadError::Corrupt {
                    pos,
                    size: hdr.size,
                });
            }
            let rec = rest.get(..len).unwrap_or(&[]);
            if let Some(c) = checker.as_deref_mut() {
                c.on_record(pos, rec)?;
            }
            f(pos, rec);
            batch.records += 1;
            batch.bytes += len as u64;
            off += len;
            start = start.wrapping_add(len as u64);
        }
        if let Some(c) = checker.as_deref_mut() {
            c.on_batch_end(head)?;
            if self.mode == ReadMode::Forward {
                // Stable unread bytes: re-read the range we are about to
                // release; the producer must not have touched it.
                let mut again = vec![0u8; buf.len()];
                pages.read_data(self.prev, &mut again);
                if again != buf {
                    let at = again.iter().zip(buf).position(|(a, b)| a != b).unwrap_or(0);
                    c.fail(Violation::UnreadBytesChanged {
                        pos: self.prev.wrapping_add(at as u64),
                    })?;
                }
            }
        }
        self.prev = head;
        if self.mode == ReadMode::Forward {
            self.write_tail(head);
        }
        self.stats.records += batch.records;
        self.stats.bytes += batch.bytes;
        Ok(batch)
    }

    fn read_backward<F>(
        &mut self,
        checker: &mut Option<&mut Checker>,
        f: &mut F,
    ) -> Result<Batch, ReadError>
    where
        F: FnMut(u64, &[u8]),
    {
        let pages = self.mem.pages();
        let size = pages.data_size();
        let head = self.read_head();
        if let Some(c) = checker.as_deref_mut() {
            c.on_head(head, None)?;
        }
        // __perf_mmap__read_init with overwrite: start = head, end = prev.
        let start = head;
        let mut end = self.prev;
        let mut hdr_buf = [0u8; HEADER_LEN];
        if end.wrapping_sub(start) > size {
            // overwrite_rb_find_range(): walk forward from head until a
            // zero-size header or a whole ring's worth of records.
            let mut evt = start;
            let mut last = 0u64;
            loop {
                if evt.wrapping_sub(start) >= size {
                    if evt.wrapping_sub(start) > size {
                        evt = evt.wrapping_sub(last);
                    }
                    break;
                }
                pages.read_data(evt, &mut hdr_buf);
                let h = Header::parse(&hdr_buf).unwrap_or_default();
                if h.size == 0 {
                    break;
                }
                if (h.size as usize) < HEADER_LEN || !h.size.is_multiple_of(8) {
                    return Err(ReadError::Corrupt {
                        pos: evt,
                        size: h.size,
                    });
                }
                last = h.size as u64;
                evt = evt.wrapping_add(last);
            }
            end = evt;
        }
        let mut batch = Batch::default();
        let mut pos = start;
        let mut rec = Vec::new();
        while end.wrapping_sub(pos) >= HEADER_LEN as u64 && end.wrapping_sub(pos) <= size {
            pages.read_data(pos, &mut hdr_buf);
            let h = Header::parse(&hdr_buf).unwrap_or_default();
            let len = h.size as u64;
            if h.size == 0 {
                break;
            }
            if len < HEADER_LEN as u64 || !len.is_multiple_of(8) || len > end.wrapping_sub(pos) {
                return Err(ReadError::Corrupt { pos, size: h.size });
            }
            rec.resize(len as usize, 0);
            pages.read_data(pos, &mut rec);
            if let Some(c) = checker.as_deref_mut() {
                c.on_record(pos, &rec)?;
            }
            f(pos, &rec);
            batch.records += 1;
            batch.bytes += len;
            pos = pos.wrapping_add(len);
        }
        if let Some(c) = checker.as_deref_mut() {
            c.on_backward_snapshot_end();
        }
        // perf_mmap__read_done(): the next read ends where this head was.
        self.prev = head;
        self.stats.records += batch.records;
        self.stats.bytes += batch.bytes;
        Ok(batch)
    }

    /// AUX: loads aux_head (Acquire, pairs with the producer's Release
    /// store after the AUX bytes), copies [aux_tail, aux_head) out (at most
    /// the area size), calls `f(aux_offset, bytes)`, then releases the
    /// space with a Release store of aux_tail (normal mode).
    pub fn read_aux<F>(&mut self, release: bool, f: F) -> u64
    where
        F: FnOnce(u64, &[u8]),
    {
        let pages = self.mem.pages();
        let size = pages.aux_size();
        let head = pages.load(CtrlField::AuxHead, Ordering::Acquire);
        let avail = head.wrapping_sub(self.aux_prev);
        let take = avail.min(size);
        let from = head.wrapping_sub(take);
        self.aux_buf.resize(take as usize, 0);
        pages.read_aux(from, &mut self.aux_buf);
        f(from, &self.aux_buf);
        self.aux_prev = head;
        if release {
            // Pairs with the producer's Acquire load of aux_tail.
            pages.store(CtrlField::AuxTail, head, Ordering::Release);
        }
        take
    }

    /// Copies `len` AUX bytes at AUX offset `offset` (as named by a
    /// PERF_RECORD_AUX) into `dst`.
    pub fn copy_aux(&self, offset: u64, dst: &mut [u8]) {
        self.mem.pages().read_aux(offset, dst)
    }

    /// Releases AUX space up to `tail` (Release store of aux_tail).
    pub fn set_aux_tail(&mut self, tail: u64) {
        self.aux_prev = tail;
        self.mem
            .pages()
            .store(CtrlField::AuxTail, tail, Ordering::Release);
    }
}
