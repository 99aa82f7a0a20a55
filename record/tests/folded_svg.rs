//! Folded stacks and the SVG flame graph from the same synthetic guest
//! samples: guest kernel frames from System.map, user frames from the static
//! pv-workload binary (scripts/build-guest-image.sh builds both).

mod common;

use common::*;
use quick_xml::events::Event;
use record::{flamegraph, Folded, GuestBinary, GuestSample, RecordMeta, Symbolizer};

fn symbolizer() -> Symbolizer {
    let meta = RecordMeta {
        guest_system_map: Some(system_map()),
        guest_binaries: vec![GuestBinary {
            path: pv_workload(),
            name: Some("pv-workload".into()),
        }],
        ..RecordMeta::new(1, 1000)
    };
    Symbolizer::from_meta(&meta).expect("symbolizer")
}

fn base(ip: u64, user: bool, chain: &[u64]) -> GuestSample<'_> {
    GuestSample {
        cpu: 0,
        vcpu_tid: 10,
        guest_pid: Some(77),
        guest_tid: Some(77),
        comm: Some("pv-workload"),
        start_code: None,
        time_ns: 1,
        ip,
        user,
        callchain: chain,
        period: 1,
    }
}

#[test]
fn symbolizer_resolves_kernel_and_user() {
    let s = symbolizer();
    let (start, _) = kernel_fn("do_syscall_64");
    let sym = s.symbolize(start + 3, false, None).expect("kernel symbol");
    assert_eq!((sym.name, sym.offset), ("do_syscall_64", 3));
    let (hot, _) = user_fn("workload_hot");
    let sym = s
        .symbolize(hot + 5, true, Some("pv-workload"))
        .expect("user symbol");
    assert_eq!((sym.name, sym.offset), ("workload_hot", 5));
    // Another program's user addresses are not pv-workload's.
    assert_eq!(s.symbolize(hot + 5, true, Some("bash")), None);
    // A kernel address is not looked up as user and vice versa.
    assert_eq!(s.symbolize(start, true, Some("pv-workload")), None);
    assert_eq!(s.symbolize(hot, false, None), None);
}

#[test]
fn folded_a_b_hot_and_svg() {
    let s = symbolizer();
    let a = inside(user_fn("workload_a"), 0x10, true);
    let b = inside(user_fn("workload_b"), 0x20, true);
    let hot = user_fn("workload_hot");
    let hot_ip = inside(hot, 8, true);
    let hot_ret = inside(hot, 0x18, true);
    let sys_ret = inside(kernel_fn("do_syscall_64"), 0x30, false);
    let sched = inside(kernel_fn("schedule"), 0x10, false);

    let mut f = Folded::new();
    let user_chain = [b, a];
    let kernel_chain = [sys_ret, hot_ret, b, a];
    for _ in 0..5 {
        f.add(&base(hot_ip, true, &user_chain), &s);
    }
    for _ in 0..2 {
        f.add(&base(sched, false, &kernel_chain), &s);
    }
    // Unidentified guest task, address nothing covers.
    let unknown = GuestSample {
        guest_pid: None,
        guest_tid: None,
        start_code: None,
        comm: None,
        ..base(0xffff_ffff_f000_0000, false, &[])
    };
    f.add(&unknown, &s);
    assert_eq!(f.total(), 8);
    assert_eq!(
        f.lines(),
        [
            "[vcpu0];[unknown] 1",
            "pv-workload;workload_a;workload_b;workload_hot 5",
            "pv-workload;workload_a;workload_b;workload_hot;do_syscall_64_[k];schedule_[k] 2",
        ]
    );
    assert_eq!(
        f.top(2),
        [
            ("workload_hot".to_string(), 5),
            ("schedule_[k]".to_string(), 2)
        ]
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let folded = dir.path().join("perf.folded");
    f.write(&folded).expect("write folded");
    let text = std::fs::read_to_string(&folded).expect("read folded");
    assert!(text.ends_with("schedule_[k] 2\n"), "{text}");

    let svg = dir.path().join("perf.svg");
    flamegraph(&folded, &svg, "guest profile").expect("flame graph from file");
    let svg_text = std::fs::read_to_string(&svg).expect("read svg");
    let titles = parse_svg_titles(&svg_text);
    assert!(
        titles.iter().any(|t| t.starts_with("workload_hot (")),
        "{titles:?}"
    );
    // inferno's java palette paints `_[k]` frames as kernel and drops the
    // suffix from the label.
    assert!(
        titles.iter().any(|t| t.starts_with("schedule (")),
        "{titles:?}"
    );
    assert!(
        titles.iter().any(|t| t.starts_with("do_syscall_64 (")),
        "{titles:?}"
    );
    assert!(svg_text.contains("guest profile"));

    // From lines in memory too.
    let svg2 = dir.path().join("perf2.svg");
    flamegraph(&f.lines(), &svg2, "guest profile").expect("flame graph from lines");
    parse_svg_titles(&std::fs::read_to_string(&svg2).expect("read svg"));
}

#[test]
fn flamegraph_without_samples_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err =
        flamegraph(&Vec::<String>::new(), dir.path().join("x.svg"), "t").expect_err("empty input");
    assert!(err.to_string().contains("no samples"), "{err}");
}

/// Parses the whole SVG (fails on malformed XML) and returns the frame
/// tooltips (`<title>` texts).
fn parse_svg_titles(svg: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut titles = Vec::new();
    let mut in_title = false;
    let mut depth = 0i64;
    let mut saw_svg = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                if e.name().as_ref() == b"svg" {
                    saw_svg = true;
                }
                in_title = e.name().as_ref() == b"title";
            }
            Ok(Event::End(_)) => {
                depth -= 1;
                in_title = false;
            }
            Ok(Event::Text(t)) if in_title => {
                let raw = String::from_utf8_lossy(&t).into_owned();
                titles.push(unescape(&raw));
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("malformed SVG at {}: {e}", reader.buffer_position()),
        }
    }
    assert!(saw_svg, "no <svg> element");
    assert_eq!(depth, 0, "unbalanced elements");
    titles
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
