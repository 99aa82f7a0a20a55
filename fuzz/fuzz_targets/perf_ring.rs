//! Fuzzes the perf ring producer with arbitrary layouts, hostile tails and
//! record streams, and the decoder with arbitrary bytes.
//!
//! Checks: no panic; nothing outside the declared pages changes; with a
//! sane tail the reader's view passes the checker; a hostile tail never
//! lets the producer overwrite bytes the last sane tail left unread.
#![no_main]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use perf_ring::abi::sample as st;
use perf_ring::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PAGE: usize = 4096;
const SLOTS: usize = 24;
const CANARY: u8 = 0xC3;

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, i| acc | (u64::from(self.u8()) << (8 * i)))
    }
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = In(data);
    // Arbitrary bytes through the decoder.
    let fmt_bits = inp.u64() & (st::SUPPORTED | 0xff_0000_0000);
    let fmt = match SampleFormat::new(fmt_bits, inp.u64() & 0x3f, inp.u8() & 1 == 1) {
        Ok(f) => f,
        Err(_) => SampleFormat::new(fmt_bits & st::SUPPORTED, 0, true).unwrap(),
    };
    let _ = decode(&fmt, inp.0.get(..64.min(inp.0.len())).unwrap_or(&[]));

    // Arbitrary layout: slot numbers (some out of range or misaligned).
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10000), SLOTS * PAGE)]).unwrap(),
    );
    mem.write_slice(&vec![CANARY; SLOTS * PAGE], GuestAddress(0x10000))
        .unwrap();
    let addr = |b: u8| -> GuestAddress {
        let slot = u64::from(b % 32); // 24..31 are outside guest memory
        let misalign = if b & 0x80 != 0 { 8 } else { 0 };
        GuestAddress(0x10000 + slot * PAGE as u64 + misalign)
    };
    let control = addr(inp.u8());
    let nd = 1 + (inp.u8() % 9) as usize;
    let na = (inp.u8() % 5) as usize;
    let data_pages: Vec<GuestAddress> = (0..nd).map(|_| addr(inp.u8())).collect();
    let aux_pages: Vec<GuestAddress> = (0..na).map(|_| addr(inp.u8())).collect();
    let layout = GuestRingLayout {
        page_size: PAGE,
        control,
        data: data_pages,
        aux: aux_pages,
    };
    let Ok(ring) = GuestRing::new(mem.clone(), layout.clone()) else {
        return;
    };
    let ring = Arc::new(ring);
    let flags = inp.u8();
    let cfg = ProducerConfig {
        format: fmt,
        event_id: 1,
        write_backward: flags & 1 != 0,
        overwrite: flags & 2 != 0,
        wakeup: if flags & 4 != 0 {
            Wakeup::Watermark(u64::from(inp.u16()))
        } else {
            Wakeup::Events(u32::from(inp.u8() % 4))
        },
        aux_overwrite: flags & 8 != 0,
        aux_watermark: u64::from(inp.u16()),
    };
    let mut p = Producer::new(ring.clone(), cfg).unwrap();
    let pg = ring.pages();
    let size = pg.data_size();
    let normal_fwd = !cfg.overwrite && !cfg.write_backward;
    let mut consumer = Consumer::new(ring.clone(), ReadMode::Forward);
    let mut chk = Checker::new(CheckerConfig {
        format: fmt,
        data_size: size,
        mode: ReadMode::Forward,
        known_ids: vec![],
        strict_types: true,
        ip_is_sequence: false,
    });
    let mut hostile = false;
    let payload = [0x11u8; 512];
    let chain = [1u64; 64];
    let values = [ReadValue::default(); 4];
    let mut aux_handle: Option<AuxHandle> = None;
    let ids = SampleId {
        id: 1,
        stream_id: 1,
        ..Default::default()
    };
    let mut snapshot = Vec::new();
    let mut snap_tail = 0u64;
    // Every tail stored under the current hostile episode.
    let mut stored_tails: Vec<u64> = Vec::new();
    // The producer adopted a tail ahead of `consumer` (one that was out of
    // range when stored, but that the head has since passed, so it looks
    // like a reader that read further): from then on the consumer is out of
    // step by the guest's own doing, and its reads prove nothing.
    let mut desynced = false;
    for _ in 0..200 {
        if inp.empty() {
            break;
        }
        match inp.u8() % 10 {
            0..=3 => {
                let raw = (inp.u8() as usize) * 2;
                let s = Sample {
                    misc: 1,
                    ip: inp.u64(),
                    raw: &payload[..raw.min(512)],
                    callchain: &chain[..(inp.u8() % 64) as usize],
                    read: ReadData {
                        values: &values[..1 + (inp.u8() % 4) as usize],
                        ..Default::default()
                    },
                    aux: &payload[..(inp.u8() as usize)],
                    ..Default::default()
                };
                let _ = p.write_sample(&s, &ids);
            }
            4 => {
                let _ = p.output(
                    &Event::Throttle {
                        time: 1,
                        id: 1,
                        stream_id: 1,
                    },
                    &ids,
                );
            }
            5 => {
                // Hostile tail; remember what is unread now.
                let v = inp.u64();
                let pos = consumer.position();
                let unread = p.head().wrapping_sub(pos).min(size);
                // A tail inside [position, head] is not hostile: it is a
                // consumer that read further, and the producer may reuse
                // the bytes before it (which this oracle would call an
                // overwrite, and the consumer here would then find too much
                // unread). Only tails outside that window are attacks.
                if v.wrapping_sub(pos) <= unread {
                    continue;
                }
                if hostile {
                    // Already under a hostile tail: keep the first snapshot.
                    pg.store(CtrlField::DataTail, v, Ordering::Release);
                    pg.store(CtrlField::AuxTail, inp.u64(), Ordering::Release);
                    stored_tails.push(v);
                    continue;
                }
                hostile = true;
                stored_tails.clear();
                stored_tails.push(v);
                snap_tail = pos;
                snapshot = vec![0u8; unread as usize];
                pg.read_data(snap_tail, &mut snapshot);
                pg.store(CtrlField::DataTail, v, Ordering::Release);
                pg.store(CtrlField::AuxTail, inp.u64(), Ordering::Release);
            }
            6 => {
                // (Once desynced, the consumer's position no longer says
                // what is unread, so later episodes are not checked.)
                if hostile && normal_fwd && !desynced {
                    // A stored tail the head has passed since is one the
                    // producer may have adopted (it cannot tell it from a
                    // reader that read that far): the bytes before it are
                    // free. The bytes after the furthest such tail must be
                    // as they were.
                    let ahead = p.head().wrapping_sub(snap_tail);
                    let adopted = stored_tails
                        .iter()
                        .map(|v| v.wrapping_sub(snap_tail))
                        .filter(|&d| d <= ahead && d % 8 == 0)
                        .max()
                        .unwrap_or(0);
                    let freed = adopted.min(snapshot.len() as u64) as usize;
                    let mut now = vec![0u8; snapshot.len()];
                    pg.read_data(snap_tail, &mut now);
                    assert_eq!(
                        now[freed..],
                        snapshot[freed..],
                        "producer overwrote unread bytes under a hostile tail"
                    );
                    desynced |= adopted > 0;
                }
                hostile = false;
                pg.store(CtrlField::DataTail, consumer.position(), Ordering::Release);
                pg.store(CtrlField::AuxTail, p.aux_head(), Ordering::Release);
            }
            7 => {
                if !hostile && normal_fwd && !desynced {
                    consumer.read_batch(Some(&mut chk), |_, _| {}).unwrap();
                }
            }
            8 => {
                p.set_paused(inp.u8() & 1 == 1);
            }
            _ => match aux_handle.take() {
                None => aux_handle = p.aux_begin().ok(),
                Some(mut h) => {
                    let n = inp.u16() as usize;
                    let chunk = vec![0x22u8; n];
                    let _ = p.aux_write(&mut h, &chunk);
                    if inp.u8() & 1 == 0 {
                        let _ = p.aux_end(h, &ids);
                    } else {
                        aux_handle = Some(h);
                    }
                }
            },
        }
    }
    if let Some(h) = aux_handle {
        let _ = p.aux_end(h, &ids);
    }
    if normal_fwd && !hostile && !desynced {
        consumer.read_batch(Some(&mut chk), |_, _| {}).unwrap();
    }
    // Nothing outside the declared pages changed.
    let mut declared: Vec<u64> = std::iter::once(layout.control)
        .chain(layout.data.iter().copied())
        .chain(layout.aux.iter().copied())
        .map(|a| (a.0 - 0x10000) / PAGE as u64)
        .collect();
    declared.sort_unstable();
    let mut buf = vec![0u8; PAGE];
    for slot in 0..SLOTS as u64 {
        if declared.binary_search(&slot).is_ok() {
            continue;
        }
        mem.read_slice(&mut buf, GuestAddress(0x10000 + slot * PAGE as u64))
            .unwrap();
        assert!(
            buf.iter().all(|b| *b == CANARY),
            "write outside the ring in slot {slot}"
        );
    }
});
