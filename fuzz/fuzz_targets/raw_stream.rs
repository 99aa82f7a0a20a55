//! Fuzzes the reader of the raw sample stream (record::raw_stream): the
//! file the perfvisor inside the L1 sandbox writes and the outer perfvisor
//! reads back, so bytes that come out of the sandbox and that a
//! compromised inner half chooses.
//!
//! Feeds: the input as a whole stream when it starts with the PVRAWSMP
//! magic (so the header check is fuzzed too), else the input as the items
//! after a valid header (so the fuzzer need not find the magic first).
//! Items are read until the end or the first error, as `perfvisor record`
//! does.
//!
//! Checks: no panic; no single heap allocation above 512 KiB while an item
//! is read (a counting global allocator: a sample holds at most 65535
//! frames and 255 comm bytes, so nothing the bytes say may make the reader
//! ask for more); every item is within the format's bounds; every item
//! written again with RawWriter reads back equal, alone and as a whole
//! stream, and that re-encoding is canonical (writing what was read back
//! gives the same bytes again).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use record::raw_stream::{RawItem, RawReader, RawWriter, MAX_COMM, MAX_FRAMES, VERSION};

/// The system allocator, remembering the largest single request.
struct Peak;

static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a relaxed atomic max on the requested size.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        PEAK.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        PEAK.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        PEAK.fetch_max(new, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// The most one item may ask for: MAX_FRAMES u64s, rounded up to the
/// power of two a growing Vec reaches.
const ITEM_ALLOC_MAX: usize = (MAX_FRAMES + 1) * 8;

fn header() -> Vec<u8> {
    let mut h = b"PVRAWSMP".to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&16u32.to_le_bytes());
    h
}

/// `items` as a stream, each written by RawWriter (a Stats item ends a
/// writer, so every item gets its own and the headers are dropped).
fn encode(items: &[RawItem]) -> Vec<u8> {
    let mut out = header();
    for item in items {
        let mut one = Vec::new();
        let mut w = RawWriter::new(&mut one).unwrap();
        match item {
            RawItem::Sample(s) => w.sample(&s.as_guest_sample()).unwrap(),
            RawItem::Stats(st) => w.finish(*st).unwrap(),
        }
        assert_eq!(one[..16], header()[..], "the writer's header");
        out.extend_from_slice(&one[16..]);
    }
    out
}

fn decode_all(bytes: &[u8]) -> Vec<RawItem> {
    let mut r = RawReader::open(bytes).expect("the writer's header reads");
    let mut out = Vec::new();
    while let Some(item) = r.next_item().expect("the writer's items read") {
        out.push(item);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let stream = if data.starts_with(b"PVRAWSMP") {
        data
    } else {
        owned = [header(), data.to_vec()].concat();
        &owned[..]
    };

    let Ok(mut reader) = RawReader::open(stream) else {
        return;
    };
    let mut items = Vec::new();
    loop {
        PEAK.store(0, Ordering::Relaxed);
        let next = reader.next_item();
        let peak = PEAK.load(Ordering::Relaxed);
        assert!(
            peak <= ITEM_ALLOC_MAX,
            "reading one item allocated {peak} bytes at once (bound {ITEM_ALLOC_MAX})"
        );
        let Ok(Some(item)) = next else { break };
        if let RawItem::Sample(s) = &item {
            assert!(s.callchain.len() <= MAX_FRAMES);
            assert!(s.task.as_ref().is_none_or(|t| t.comm.len() <= MAX_COMM));
        }
        // Alone: written again, it reads back equal, and nothing follows.
        let alone = encode(std::slice::from_ref(&item));
        let back = decode_all(&alone);
        assert_eq!(back.len(), 1, "one item re-encodes as one item");
        assert_eq!(back[0], item, "an item reads back equal after re-encoding");
        items.push(item);
    }

    // Together, in order; and the encoding of what was read is a fixed
    // point.
    let all = encode(&items);
    let back = decode_all(&all);
    assert_eq!(back, items, "the stream reads back equal after re-encoding");
    assert_eq!(encode(&back), all, "re-encoding is canonical");
});
