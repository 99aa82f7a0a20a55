//! Byte-exact golden tests. Every expected byte string below is written out
//! by hand from Linux 6.1 kernel/events/core.c (perf_output_sample,
//! perf_output_read_one/_group, __perf_event__output_id_sample,
//! perf_log_throttle, perf_event_aux_event, perf_log_itrace_start,
//! perf_log_lost_samples, perf_event_switch_output) and
//! kernel/events/ring_buffer.c (__perf_output_begin's lost_event), field by
//! field, never from the encoder under test.

mod perf_ring_common;

use perf_ring::abi::{aux_flag, context, misc, read_format as rf, record, sample as st};
use perf_ring::*;
use perf_ring_common::*;

fn ids() -> SampleId {
    SampleId {
        pid: 0x1111,
        tid: 0x2222,
        time: 0x3333_4444_5555,
        id: 0x77,
        stream_id: 0x78,
        cpu: 3,
    }
}

/// Writes `events` into a fresh scattered ring and returns the data bytes
/// from offset 0 up to the published head.
fn produce(fmt: SampleFormat, events: &[Event<'_>]) -> Vec<u8> {
    let s = scattered(4, 0);
    let mut p = Producer::new(
        s.ring(),
        ProducerConfig {
            format: fmt,
            event_id: 0x77,
            ..Default::default()
        },
    )
    .unwrap();
    for e in events {
        assert!(p.output(e, &ids()).unwrap().written);
    }
    let head = s.ctrl_u64(1024) as usize;
    assert!(s.canaries_intact());
    s.data_bytes()[..head].to_vec()
}

#[test]
fn control_page_matches_perf_event_init_userpage() {
    let s = scattered(8, 4);
    let _p = Producer::new(s.ring(), ProducerConfig::default()).unwrap();
    // capabilities at 40: cap_bit0_is_deprecated (bit 1).
    assert_eq!(s.ctrl_u64(40), 1 << 1);
    // size (u32) at 72 = offsetof(__reserved) = 96.
    assert_eq!(s.ctrl_u64(72) & 0xffff_ffff, 96);
    assert_eq!(s.ctrl_u64(1024), 0, "data_head");
    assert_eq!(s.ctrl_u64(1032), 0, "data_tail");
    assert_eq!(s.ctrl_u64(1040), 4096, "data_offset = PAGE_SIZE");
    assert_eq!(s.ctrl_u64(1048), 8 * 4096, "data_size");
    assert_eq!(s.ctrl_u64(1056), 0, "aux_head");
    assert!(s.canaries_intact());
}

#[test]
fn sample_all_scalar_fields_in_perf_output_sample_order() {
    let t = st::IDENTIFIER
        | st::IP
        | st::TID
        | st::TIME
        | st::ADDR
        | st::ID
        | st::STREAM_ID
        | st::CPU
        | st::PERIOD;
    let fmt = SampleFormat::new(t, 0, false).unwrap();
    let sample = Sample {
        misc: misc::KERNEL | misc::EXACT_IP,
        ip: 0xffff_ffff_8100_1234,
        addr: 0xdead_beef,
        period: 100_003,
        ..Default::default()
    };
    let got = produce(fmt, &[Event::Sample(sample)]);
    // header: 8 + 9 fields * 8 = 80 bytes.
    let want = Bytes8::default()
        .header(9, 0x4001, 80)
        .u64(0x77) // IDENTIFIER
        .u64(0xffff_ffff_8100_1234) // IP
        .u32(0x1111)
        .u32(0x2222) // TID: pid, tid
        .u64(0x3333_4444_5555) // TIME
        .u64(0xdead_beef) // ADDR
        .u64(0x77) // ID
        .u64(0x78) // STREAM_ID
        .u32(3)
        .u32(0) // CPU: cpu, reserved
        .u64(100_003) // PERIOD
        .done();
    assert_eq!(got, want);
}

#[test]
fn sample_read_one_value_then_times_then_id_then_lost() {
    let fmt = SampleFormat::new(
        st::IP | st::READ,
        rf::TOTAL_TIME_ENABLED | rf::TOTAL_TIME_RUNNING | rf::ID | rf::LOST,
        false,
    )
    .unwrap();
    let values = [ReadValue {
        value: 500,
        id: 0x77,
        lost: 2,
    }];
    let sample = Sample {
        misc: misc::USER,
        ip: 0x40_1000,
        read: ReadData {
            time_enabled: 1000,
            time_running: 900,
            values: &values,
        },
        ..Default::default()
    };
    let got = produce(fmt, &[Event::Sample(sample)]);
    let want = Bytes8::default()
        .header(9, 2, 8 + 8 + 5 * 8)
        .u64(0x40_1000)
        .u64(500) // perf_event_count
        .u64(1000) // enabled
        .u64(900) // running
        .u64(0x77) // primary_event_id
        .u64(2) // lost_samples
        .done();
    assert_eq!(got, want);
}

#[test]
fn sample_read_group_nr_times_then_entries() {
    let fmt = SampleFormat::new(
        st::READ,
        rf::GROUP | rf::TOTAL_TIME_ENABLED | rf::ID | rf::LOST,
        false,
    )
    .unwrap();
    let values = [
        ReadValue {
            value: 10,
            id: 0x77,
            lost: 0,
        },
        ReadValue {
            value: 20,
            id: 0x79,
            lost: 1,
        },
    ];
    let sample = Sample {
        read: ReadData {
            time_enabled: 55,
            time_running: 0,
            values: &values,
        },
        ..Default::default()
    };
    let got = produce(fmt, &[Event::Sample(sample)]);
    let want = Bytes8::default()
        .header(9, 0, 8 + 8 + 8 + 2 * 24)
        .u64(2) // nr = 1 + nr_siblings
        .u64(55) // enabled
        .u64(10)
        .u64(0x77)
        .u64(0) // leader: value, id, lost
        .u64(20)
        .u64(0x79)
        .u64(1) // sibling
        .done();
    assert_eq!(got, want);
}

#[test]
fn sample_callchain_raw_padding_and_aux() {
    let fmt = SampleFormat::new(st::TID | st::CALLCHAIN | st::RAW | st::AUX, 0, false).unwrap();
    let chain = [
        context::KERNEL,
        0xffff_ffff_8100_0000,
        context::USER,
        0x40_0000,
    ];
    let sample = Sample {
        misc: misc::KERNEL,
        callchain: &chain,
        raw: &[1, 2, 3, 4, 5],
        aux: &[9, 8, 7],
        ..Default::default()
    };
    let got = produce(fmt, &[Event::Sample(sample)]);
    // RAW: round_up(5 + 4, 8) = 16 -> raw->size = 12, pad 7.
    // AUX: aux_size = ALIGN(3, 8) = 8, pad 5 zeros.
    let want = Bytes8::default()
        .header(9, 1, 8 + 8 + (8 + 32) + 16 + (8 + 8))
        .u32(0x1111)
        .u32(0x2222)
        .u64(4)
        .u64(0xffff_ffff_ffff_ff80)
        .u64(0xffff_ffff_8100_0000)
        .u64(0xffff_ffff_ffff_fe00)
        .u64(0x40_0000)
        .u32(12)
        .bytes(&[1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0])
        .u64(8)
        .bytes(&[9, 8, 7, 0, 0, 0, 0, 0])
        .done();
    assert_eq!(got, want);
}

#[test]
fn sample_raw_exact_fit_and_empty_raw() {
    let fmt = SampleFormat::new(st::RAW, 0, false).unwrap();
    let a = Sample {
        raw: &[0xaa, 0xbb, 0xcc, 0xdd],
        ..Default::default()
    };
    // Empty payload: the kernel's "no raw" path writes {size = 4, data = 0}.
    let b = Sample::default();
    let got = produce(fmt, &[Event::Sample(a), Event::Sample(b)]);
    let want = Bytes8::default()
        .header(9, 0, 16)
        .u32(4)
        .bytes(&[0xaa, 0xbb, 0xcc, 0xdd])
        .header(9, 0, 16)
        .u32(4)
        .u32(0)
        .done();
    assert_eq!(got, want);
}

fn trailer_fmt() -> SampleFormat {
    SampleFormat::new(
        st::TID | st::TIME | st::ID | st::STREAM_ID | st::CPU | st::IDENTIFIER | st::IP,
        0,
        true,
    )
    .unwrap()
}

/// sample_id trailer in __perf_event__output_id_sample order: TID, TIME,
/// ID, STREAM_ID, CPU, IDENTIFIER.
fn trailer(b: Bytes8) -> Bytes8 {
    b.u32(0x1111)
        .u32(0x2222)
        .u64(0x3333_4444_5555)
        .u64(0x77)
        .u64(0x78)
        .u32(3)
        .u32(0)
        .u64(0x77)
}

#[test]
fn non_sample_records_with_sample_id_trailer() {
    let fmt = trailer_fmt();
    let got = produce(
        fmt,
        &[
            Event::Throttle {
                time: 5,
                id: 0x77,
                stream_id: 0x78,
            },
            Event::Unthrottle {
                time: 6,
                id: 0x77,
                stream_id: 0x78,
            },
            Event::Aux {
                offset: 0x1000,
                size: 0x200,
                flags: aux_flag::TRUNCATED | aux_flag::PARTIAL,
            },
            Event::ItraceStart { pid: 7, tid: 8 },
            Event::LostSamples { lost: 42 },
            Event::Switch {
                out: true,
                preempt: true,
            },
            Event::SwitchCpuWide {
                out: false,
                preempt: false,
                next_prev_pid: 9,
                next_prev_tid: 10,
            },
        ],
    );
    let t = 48u16; // trailer length
    let mut b = Bytes8::default()
        .header(5, 0, 32 + t)
        .u64(5)
        .u64(0x77)
        .u64(0x78);
    b = trailer(b);
    b = b.header(6, 0, 32 + t).u64(6).u64(0x77).u64(0x78);
    b = trailer(b);
    b = b.header(11, 0, 32 + t).u64(0x1000).u64(0x200).u64(0x05);
    b = trailer(b);
    b = b.header(12, 0, 16 + t).u32(7).u32(8);
    b = trailer(b);
    b = b.header(13, 0, 16 + t).u64(42);
    b = trailer(b);
    // SWITCH_OUT (1 << 13) | SWITCH_OUT_PREEMPT (1 << 14); header only.
    b = b.header(14, 0x6000, 8 + t);
    b = trailer(b);
    b = b.header(15, 0, 16 + t).u32(9).u32(10);
    b = trailer(b);
    assert_eq!(got, b.done());
}

#[test]
fn lost_record_is_injected_in_the_same_reservation() {
    // One-page ring; the trailer makes samples 8 + 8 (IP) + 48 = 64 bytes
    // ... but samples carry no trailer: their fields are inline.
    let fmt = trailer_fmt();
    let s = scattered(1, 0);
    let ring = s.ring();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt,
            event_id: 0x77,
            ..Default::default()
        },
    )
    .unwrap();
    let sample = Sample {
        misc: misc::USER,
        ip: 0xabc,
        ..Default::default()
    };
    // sample: 8 header + IDENTIFIER, IP, TID, TIME, ID, STREAM_ID, CPU = 64.
    let mut written = 0;
    while p.write_sample(&sample, &ids()).unwrap().written {
        written += 1;
    }
    // CIRC_SPACE leaves 8 bytes: 4096 - 8 = 4088 usable -> 63 samples.
    assert_eq!(written, 63);
    assert!(!p.write_sample(&sample, &ids()).unwrap().written);
    assert_eq!(p.pending_lost(), 2);
    // Free everything: tail = head.
    let head = s.ctrl_u64(1024);
    assert_eq!(head, 63 * 64);
    ring.pages().store(
        CtrlField::DataTail,
        head,
        std::sync::atomic::Ordering::Release,
    );
    assert!(p.write_sample(&sample, &ids()).unwrap().written);
    assert_eq!(p.pending_lost(), 0);
    let new_head = s.ctrl_u64(1024);
    // LOST (8 + 16 + 48 = 72) then the sample (64).
    assert_eq!(new_head - head, 72 + 64);
    let data = s.data_bytes();
    let mut got = Vec::new();
    for i in head..new_head {
        got.push(data[(i % 4096) as usize]);
    }
    let mut want = Bytes8::default().header(2, 0, 72).u64(0x77).u64(2);
    want = trailer(want);
    let want = want
        .header(9, 2, 64)
        .u64(0x77) // IDENTIFIER
        .u64(0xabc) // IP
        .u32(0x1111)
        .u32(0x2222)
        .u64(0x3333_4444_5555)
        .u64(0x77)
        .u64(0x78)
        .u32(3)
        .u32(0)
        .done();
    assert_eq!(got, want);
    assert!(s.canaries_intact());
}

#[test]
fn record_wrapping_the_ring_end_is_split_across_scattered_pages() {
    let fmt = SampleFormat::new(st::IP | st::RAW, 0, false).unwrap();
    let s = scattered(2, 0);
    let ring = s.ring();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt,
            ..Default::default()
        },
    )
    .unwrap();
    // Fill to 8184 - 16 = 8176, consume everything, then write a 64-byte
    // record that starts 16 bytes before the end of the 8 KiB ring.
    let filler = Sample {
        ip: 1,
        raw: &[0u8; 4084], // 8 + 8 + 4 + 4084 = 4104 -> round 4104
        ..Default::default()
    };
    assert!(
        p.write_sample(&filler, &SampleId::default())
            .unwrap()
            .written
    );
    let pad = Sample {
        ip: 2,
        raw: &[0u8; 4052], // 8 + 8 + 4 + 4052 = 4072
        ..Default::default()
    };
    ring.pages().store(
        CtrlField::DataTail,
        s.ctrl_u64(1024),
        std::sync::atomic::Ordering::Release,
    );
    assert!(p.write_sample(&pad, &SampleId::default()).unwrap().written);
    assert_eq!(s.ctrl_u64(1024), 8176);
    ring.pages().store(
        CtrlField::DataTail,
        8176,
        std::sync::atomic::Ordering::Release,
    );
    let payload: Vec<u8> = (0u8..44).collect();
    let rec = Sample {
        ip: 0x1234_5678,
        raw: &payload, // 8 + 8 + 4 + 44 = 64
        ..Default::default()
    };
    assert!(p.write_sample(&rec, &SampleId::default()).unwrap().written);
    let want = Bytes8::default()
        .header(9, 0, 64)
        .u64(0x1234_5678)
        .u32(44)
        .bytes(&payload)
        .done();
    let data = s.data_bytes();
    assert_eq!(
        &data[8176..8192],
        &want[..16],
        "first 16 bytes at the end of the last page"
    );
    assert_eq!(
        &data[..48],
        &want[16..],
        "the rest at the start of the first page"
    );
    assert!(s.canaries_intact());
}

#[test]
fn aux_record_is_emitted_before_aux_head_moves_and_is_exact() {
    let fmt = SampleFormat::new(st::TID, 0, true).unwrap();
    let s = scattered(2, 2);
    let ring = s.ring();
    let mut p = Producer::new(
        ring.clone(),
        ProducerConfig {
            format: fmt,
            ..Default::default()
        },
    )
    .unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let out = p.aux_output(&data, &ids()).unwrap();
    assert_eq!((out.offset, out.size, out.flags), (0, 5000, 0));
    assert_eq!(s.ctrl_u64(1056), 5000, "aux_head");
    let got = &s.data_bytes()[..s.ctrl_u64(1024) as usize];
    let want = Bytes8::default()
        .header(11, 0, 32 + 8)
        .u64(0)
        .u64(5000)
        .u64(0)
        .u32(0x1111)
        .u32(0x2222)
        .done();
    assert_eq!(got, &want[..]);
    // The bytes cross from AUX page 0 into page 1, which live at scattered
    // guest addresses.
    let mut back = vec![0u8; 5000];
    let mut first = vec![0u8; 4096];
    use vm_memory::Bytes;
    s.mem.read_slice(&mut first, s.layout.aux[0]).unwrap();
    back[..4096].copy_from_slice(&first);
    s.mem
        .read_slice(&mut back[4096..], s.layout.aux[1])
        .unwrap();
    assert_eq!(back, data);
    // Room is CIRC_SPACE(5000, 0, 8192) = 3191: a bigger write truncates.
    let out = p.aux_output(&data, &ids()).unwrap();
    assert_eq!((out.offset, out.size), (5000, 3191));
    assert_eq!(out.flags, aux_flag::TRUNCATED);
    assert!(out.disable && out.needs_wakeup);
    // Full now: begin refuses.
    assert_eq!(p.aux_begin().unwrap_err(), AuxRefused::Full);
    assert_eq!(record::AUX, 11);
    assert!(s.canaries_intact());
}
