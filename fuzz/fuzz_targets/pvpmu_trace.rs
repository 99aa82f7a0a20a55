//! Fuzzes the pvpmu AUX trace decoder (pvpmu_abi::trace).
//!
//! The input's first byte picks chunk sizes; the rest is the stream. Checks:
//! no panic; the slice decoder and the stream decoder fed in chunks report
//! the same records and errors; every decoded record re-encodes to exactly
//! the bytes it was decoded from (the format has one encoding per record).
#![no_main]

use pvpmu_abi::trace::*;
use libfuzzer_sys::fuzz_target;

fn reencode(d: &Decoded<'_>, out: &mut [u8]) -> usize {
    let r = match d.record {
        Record::Header { host_ns } => encode_header(out, d.vcpu, host_ns),
        Record::Exit(e) => encode_exit(out, d.vcpu, &e),
        Record::Stats(s) => {
            let v: Vec<Stat> = s.iter().collect();
            encode_stats(out, d.vcpu, s.guest_ns, &v)
        }
        Record::StatsNames(n) => {
            let v: Vec<&str> = n.iter().collect();
            encode_stats_names(out, d.vcpu, &v)
        }
    };
    r.expect("a decoded record re-encodes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    let mut out = vec![0u8; MAX_RECORD_LEN];
    let mut offset = 0usize;
    for item in decode(stream) {
        if let Ok(d) = &item {
            let n = reencode(d, &mut out);
            assert_eq!(n, d.len);
            assert_eq!(&out[..n], &stream[offset..offset + n]);
        }
        match &item {
            Ok(d) => offset += d.len,
            Err(e) if e.is_recoverable() => {
                // Skipped by its (sane) size.
                let size = u16::from_le_bytes([stream[offset + 2], stream[offset + 3]]);
                offset += size as usize;
            }
            Err(_) => {}
        }
        whole.push(format!("{item:?}"));
    }

    let mut chunked = Vec::new();
    let mut d = StreamDecoder::new();
    let mut rest = stream;
    let mut step = seed as usize;
    while !rest.is_empty() {
        step = step.wrapping_mul(31).wrapping_add(7);
        let n = (step % 97 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        d.feed(a, |item| chunked.push(format!("{item:?}")));
        rest = b;
    }
    if let Some(e) = d.finish() {
        chunked.push(format!("{:?}", Err::<Decoded<'_>, _>(e)));
    }
    assert_eq!(whole, chunked);
    assert_eq!(d.stats().bytes, stream.len() as u64);
});
