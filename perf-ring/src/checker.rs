//! Verifies the invariants of docs/perf-ring.md ("Invariants a checker can
//! verify") on a live stream, as the consumer sees it.
//!
//! The checker is fed by [`super::Consumer::read_batch`]: every head it
//! loads, every record it walks, and the end of every batch. It keeps
//! running totals so a test can finally assert
//! `records produced = records read + records counted lost`.

use super::abi::{aux_flag, record};
use super::consumer::ReadMode;
use super::decode::{decode, Body, DecodeError, Record};
use super::records::SampleFormat;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// data_head went the wrong way.
    #[error("data_head moved from {prev:#x} to {head:#x}, against the ring direction")]
    HeadNotMonotonic {
        /// Previous head.
        prev: u64,
        /// New head.
        head: u64,
    },
    /// data_head not a multiple of 8.
    #[error("data_head {0:#x} is not a multiple of 8")]
    HeadUnaligned(u64),
    /// More unread than the ring can hold.
    #[error("head {head:#x} - tail {tail:#x} exceeds data_size {size:#x} - 8")]
    TooMuchUnread {
        /// Head.
        head: u64,
        /// Tail.
        tail: u64,
        /// Ring size.
        size: u64,
    },
    /// Records do not tile the ring.
    #[error("record at {pos:#x} but the previous one ended at {expected:#x}")]
    Gap {
        /// Where the record is.
        pos: u64,
        /// Where it should be.
        expected: u64,
    },
    /// Records do not end exactly at the head.
    #[error("records end at {end:#x}, data_head is {head:#x}")]
    NotAtHead {
        /// Where the last record ended.
        end: u64,
        /// The head.
        head: u64,
    },
    /// Decoding failed: size does not match sample_type.
    #[error("record at {pos:#x}: {err}")]
    Decode {
        /// Position.
        pos: u64,
        /// Why.
        err: DecodeError,
    },
    /// Position not 8-aligned.
    #[error("record at {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
    /// Unknown record type.
    #[error("record at {pos:#x} has unknown type {ty}")]
    UnknownType {
        /// Position.
        pos: u64,
        /// Type.
        ty: u32,
    },
    /// An id that is not one of the configured event ids.
    #[error("record at {pos:#x} carries unknown event id {id:#x}")]
    UnknownId {
        /// Position.
        pos: u64,
        /// Id.
        id: u64,
    },
    /// A PERF_RECORD_LOST ended a batch.
    #[error("PERF_RECORD_LOST at {0:#x} is the last record published; it must share a reservation with the next record")]
    LostLast(u64),
    /// Unread bytes changed before the tail passed them.
    #[error("unread byte at ring position {pos:#x} changed before the tail passed it")]
    UnreadBytesChanged {
        /// Position.
        pos: u64,
    },
    /// LOST totals do not add up.
    #[error(
        "{produced} records produced but {read} read + {lost} reported lost + {pending} pending"
    )]
    LostMismatch {
        /// Produced.
        produced: u64,
        /// Read.
        read: u64,
        /// In LOST records.
        lost: u64,
        /// Still pending in the producer.
        pending: u64,
    },
    /// A bad PERF_RECORD_AUX.
    #[error("PERF_RECORD_AUX at {pos:#x} is invalid: {why}")]
    BadAux {
        /// Position.
        pos: u64,
        /// Why.
        why: &'static str,
    },
    /// aux_head broke its invariants.
    #[error(
        "aux_head {head:#x} (previous {prev:#x}, aux_tail {tail:#x}, size {size:#x}) is invalid"
    )]
    BadAuxHead {
        /// New head.
        head: u64,
        /// Previous.
        prev: u64,
        /// Tail.
        tail: u64,
        /// Size.
        size: u64,
    },
    /// Sequence numbers (caller-defined, in the sample IP) are not
    /// explained by LOST records.
    #[error("sample sequence jumped from {prev} to {next} with {lost} lost in between")]
    Sequence {
        /// Previous sequence number.
        prev: u64,
        /// This one.
        next: u64,
        /// LOST counted between them.
        lost: u64,
    },
}

/// Checker configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Record layouts.
    pub format: SampleFormat,
    /// Data ring size.
    pub data_size: u64,
    /// How the ring is read.
    pub mode: ReadMode,
    /// Event ids allowed in ID/IDENTIFIER/LOST (empty: any).
    pub known_ids: Vec<u64>,
    /// Only accept the record types this module produces (otherwise any
    /// type a 6.1 kernel defines, 1..=21).
    pub strict_types: bool,
    /// Treat the sample IP as a per-ring sequence number incremented for
    /// every record the producer was asked to write, and check that gaps
    /// are exactly the LOST counts (test streams only).
    pub ip_is_sequence: bool,
}

/// Running state.
#[derive(Debug, Clone)]
pub struct Checker {
    cfg: CheckerConfig,
    last_head: Option<u64>,
    next_pos: Option<u64>,
    last_lost_pos: Option<u64>,
    records: u64,
    lost_total: u64,
    lost_since_sample: u64,
    last_seq: Option<u64>,
    attached_lost: u64,
    aux_next: Option<u64>,
    /// A PERF_RECORD_LOST came after the last PERF_RECORD_AUX: the kernel
    /// may have dropped AUX records with it (perf_aux_output_end's record
    /// goes through the data ring like any other), so the next AUX offset
    /// may jump forward.
    lost_since_aux: bool,
    aux_head: Option<u64>,
    violations: u64,
    keep_going: bool,
    first: Option<Violation>,
    decoded: Option<Record>,
}

impl Checker {
    /// A checker for one ring.
    pub fn new(cfg: CheckerConfig) -> Self {
        Checker {
            cfg,
            last_head: None,
            next_pos: None,
            last_lost_pos: None,
            records: 0,
            lost_total: 0,
            lost_since_sample: 0,
            last_seq: None,
            attached_lost: 0,
            aux_next: None,
            lost_since_aux: false,
            aux_head: None,
            violations: 0,
            keep_going: false,
            first: None,
            decoded: None,
        }
    }

    /// Count violations instead of failing on the first (fuzzing hostile
    /// streams).
    pub fn keep_going(mut self, yes: bool) -> Self {
        self.keep_going = yes;
        self
    }

    /// Violations seen (with `keep_going`).
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// The first violation seen.
    pub fn first_violation(&self) -> Option<&Violation> {
        self.first.as_ref()
    }

    /// Non-LOST records read.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Sum of the LOST counts read.
    pub fn lost_total(&self) -> u64 {
        self.lost_total
    }

    /// The last record decoded by [`Checker::on_record`].
    pub fn last_record(&self) -> Option<&Record> {
        self.decoded.as_ref()
    }

    pub(super) fn fail(&mut self, v: Violation) -> Result<(), Violation> {
        self.violations += 1;
        if self.first.is_none() {
            self.first = Some(v.clone());
        }
        if self.keep_going {
            Ok(())
        } else {
            Err(v)
        }
    }

    fn backward(&self) -> bool {
        self.cfg.mode == ReadMode::Backward
    }

    /// The consumer skipped ahead (fell behind): restart tiling at `head`.
    pub fn resync(&mut self, head: u64) {
        self.next_pos = Some(head);
        self.last_seq = None;
        self.lost_since_sample = 0;
    }

    /// A data_head load. `tail` is the consumer's tail when it honours one.
    pub fn on_head(&mut self, head: u64, tail: Option<u64>) -> Result<(), Violation> {
        if !head.is_multiple_of(8) {
            self.fail(Violation::HeadUnaligned(head))?;
        }
        if let Some(prev) = self.last_head {
            // Monotonic: forward heads only grow, backward heads only
            // shrink (modulo 2^64, so compare the signed distance).
            let moved = head.wrapping_sub(prev) as i64;
            let wrong = if self.backward() {
                moved > 0
            } else {
                moved < 0
            };
            if wrong {
                self.fail(Violation::HeadNotMonotonic { prev, head })?;
            }
        }
        self.last_head = Some(head);
        if let Some(tail) = tail {
            let unread = head.wrapping_sub(tail);
            if unread > self.cfg.data_size - 8 {
                self.fail(Violation::TooMuchUnread {
                    head,
                    tail,
                    size: self.cfg.data_size,
                })?;
            }
        }
        Ok(())
    }

    /// One record at ring position `pos`.
    pub fn on_record(&mut self, pos: u64, bytes: &[u8]) -> Result<(), Violation> {
        if !pos.is_multiple_of(8) {
            self.fail(Violation::Unaligned(pos))?;
        }
        if !self.backward() {
            if let Some(expected) = self.next_pos {
                if expected != pos {
                    self.fail(Violation::Gap { pos, expected })?;
                }
            }
        }
        self.next_pos = Some(pos.wrapping_add(bytes.len() as u64));
        let rec = match decode(&self.cfg.format, bytes) {
            Ok(r) => r,
            Err(err) => {
                self.fail(Violation::Decode { pos, err })?;
                return Ok(());
            }
        };
        let ty = rec.header.ty;
        let known = if self.cfg.strict_types {
            matches!(
                ty,
                record::SAMPLE
                    | record::LOST
                    | record::THROTTLE
                    | record::UNTHROTTLE
                    | record::AUX
                    | record::ITRACE_START
                    | record::LOST_SAMPLES
                    | record::SWITCH
                    | record::SWITCH_CPU_WIDE
            )
        } else {
            (1..=21).contains(&ty)
        };
        if !known {
            self.fail(Violation::UnknownType { pos, ty })?;
        }
        self.check_ids(pos, &rec)?;
        self.last_lost_pos = None;
        match &rec.body {
            Body::Lost { lost, .. } => {
                self.lost_total += lost;
                self.lost_since_sample += lost;
                self.last_lost_pos = Some(pos);
                self.lost_since_aux = true;
            }
            Body::Sample(s) => {
                self.records += 1;
                if self.cfg.ip_is_sequence {
                    self.check_sequence(s.ip)?;
                }
            }
            Body::Aux {
                offset,
                size,
                flags,
            } => {
                self.records += 1;
                self.check_aux_record(pos, *offset, *size, *flags)?;
            }
            _ => self.records += 1,
        }
        self.decoded = Some(rec);
        Ok(())
    }

    fn check_sequence(&mut self, seq: u64) -> Result<(), Violation> {
        let mut lost = std::mem::take(&mut self.lost_since_sample);
        if self.backward() {
            // Walking newest first, a LOST sits just before (in read order)
            // the record it shares a reservation with, but it explains the
            // gap between that record and the next, older one.
            lost = std::mem::replace(&mut self.attached_lost, lost);
        }
        if let Some(prev) = self.last_seq {
            let (a, b) = if self.backward() {
                (seq, prev)
            } else {
                (prev, seq)
            };
            if b.wrapping_sub(a) != lost + 1 {
                self.fail(Violation::Sequence {
                    prev: a,
                    next: b,
                    lost,
                })?;
            }
        }
        self.last_seq = Some(seq);
        Ok(())
    }

    fn check_ids(&mut self, pos: u64, rec: &Record) -> Result<(), Violation> {
        if self.cfg.known_ids.is_empty() {
            return Ok(());
        }
        use super::abi::sample as st;
        let t = self.cfg.format.sample_type;
        let mut ids = Vec::new();
        match &rec.body {
            Body::Sample(s) if t & (st::ID | st::IDENTIFIER) != 0 => ids.push(s.ids.id),
            Body::Lost { id, .. } => ids.push(*id),
            _ => {}
        }
        if let Some(sid) = &rec.sample_id {
            if t & (st::ID | st::IDENTIFIER) != 0 {
                ids.push(sid.id);
            }
        }
        for id in ids {
            if !self.cfg.known_ids.contains(&id) {
                self.fail(Violation::UnknownId { pos, id })?;
            }
        }
        Ok(())
    }

    fn check_aux_record(
        &mut self,
        pos: u64,
        offset: u64,
        size: u64,
        flags: u64,
    ) -> Result<(), Violation> {
        if flags & !aux_flag::VALID != 0 {
            self.fail(Violation::BadAux {
                pos,
                why: "flags outside 0x0f | 0xff00",
            })?;
        }
        if size == 0 && flags & !aux_flag::PMU_FORMAT_TYPE_MASK == 0 {
            self.fail(Violation::BadAux {
                pos,
                why: "size 0 without a flag",
            })?;
        }
        if flags & aux_flag::OVERWRITE == 0 {
            // Normal mode: records tile the AUX area in order.
            if let Some(next) = self.aux_next {
                let forward = (offset.wrapping_sub(next) as i64) > 0;
                if offset != next && !(forward && self.lost_since_aux) {
                    self.fail(Violation::BadAux {
                        pos,
                        why: "offset is not where the previous record ended",
                    })?;
                }
            }
            self.aux_next = Some(offset.wrapping_add(size));
            self.lost_since_aux = false;
        } else if let Some(next) = self.aux_next {
            if (offset.wrapping_sub(next) as i64) < 0 {
                self.fail(Violation::BadAux {
                    pos,
                    why: "offset went backwards",
                })?;
            }
            self.aux_next = Some(offset);
        } else {
            self.aux_next = Some(offset);
        }
        Ok(())
    }

    /// The end of a forward batch at `head`: records must end exactly at
    /// the head and the last one must not be a PERF_RECORD_LOST.
    pub fn on_batch_end(&mut self, head: u64) -> Result<(), Violation> {
        if let Some(end) = self.next_pos {
            if end != head {
                self.fail(Violation::NotAtHead { end, head })?;
            }
        }
        if let Some(pos) = self.last_lost_pos.take() {
            self.fail(Violation::LostLast(pos))?;
        }
        Ok(())
    }

    /// The end of a backward snapshot: sequence checks restart (the next
    /// snapshot covers a different window).
    pub fn on_backward_snapshot_end(&mut self) {
        self.last_seq = None;
        self.attached_lost = 0;
        self.lost_since_sample = 0;
        self.next_pos = None;
    }

    /// An aux_head / aux_tail observation.
    pub fn on_aux_head(
        &mut self,
        head: u64,
        tail: u64,
        size: u64,
        overwrite: bool,
    ) -> Result<(), Violation> {
        let prev = self.aux_head.unwrap_or(0);
        let bad =
            (head.wrapping_sub(prev) as i64) < 0 || (!overwrite && head.wrapping_sub(tail) > size);
        if bad {
            self.fail(Violation::BadAuxHead {
                head,
                prev,
                tail,
                size,
            })?;
        }
        self.aux_head = Some(head);
        Ok(())
    }

    /// Final accounting (normal mode, after draining): every record the
    /// producer was asked for is either read or counted lost.
    pub fn check_totals(&mut self, produced: u64, pending_lost: u64) -> Result<(), Violation> {
        if produced != self.records + self.lost_total + pending_lost {
            self.fail(Violation::LostMismatch {
                produced,
                read: self.records,
                lost: self.lost_total,
                pending: pending_lost,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, SampleId};

    fn rec(ev: Event<'_>, fmt: &SampleFormat) -> Vec<u8> {
        let mut v = Vec::new();
        ev.encode(fmt, &SampleId::default(), &mut v).unwrap();
        v
    }

    #[test]
    fn aux_gap_is_allowed_only_after_a_lost_record() {
        let fmt = SampleFormat::new(0, 0, false).unwrap();
        let cfg = CheckerConfig {
            format: fmt,
            data_size: 4096,
            mode: ReadMode::Forward,
            known_ids: vec![],
            strict_types: false,
            ip_is_sequence: false,
        };
        let aux = |offset, size| {
            rec(
                Event::Aux {
                    offset,
                    size,
                    flags: 0,
                },
                &fmt,
            )
        };
        let lost = rec(Event::Lost { id: 0, lost: 1 }, &fmt);
        let mut c = Checker::new(cfg.clone());
        let mut pos = 0;
        for r in [
            aux(0, 64),
            aux(64, 64),
            lost.clone(),
            aux(4096, 8),
            aux(4104, 8),
        ] {
            c.on_record(pos, &r).unwrap();
            pos += r.len() as u64;
        }
        assert_eq!(c.violations(), 0);
        // Without a LOST in between, a gap is a violation; backwards always is.
        let mut c = Checker::new(cfg.clone()).keep_going(true);
        let mut pos = 0;
        for r in [aux(0, 64), aux(128, 64)] {
            let _ = c.on_record(pos, &r);
            pos += r.len() as u64;
        }
        assert_eq!(c.violations(), 1);
        let mut c = Checker::new(cfg).keep_going(true);
        let mut pos = 0;
        for r in [aux(128, 64), lost, aux(0, 64)] {
            let _ = c.on_record(pos, &r);
            pos += r.len() as u64;
        }
        assert_eq!(c.violations(), 1);
    }
}
