//! What `pvpmu-tool` counts, and how it prints it: a human summary, the
//! machine-readable `pvpmu-tool: key=value ...` line, and the top symbols.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use perf_abi::aux_flag;
use pvpmu_abi::trace::{DecodeError, Decoded, ExitReason, Record};

/// The prefix of the machine-readable line.
pub const MACHINE_PREFIX: &str = "pvpmu-tool: ";

/// Counters of one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// "cpu-wide" or "task".
    pub mode: &'static str,
    /// PMU name.
    pub pmu: String,
    /// Events (one per CPU).
    pub cpus: usize,
    /// Requested frequency in Hz (0 in period mode).
    pub freq: u64,
    /// Requested period in ns (0 in frequency mode).
    pub period: u64,
    /// Wall time from enable to disable.
    pub duration_ms: u64,

    /// PERF_RECORD_SAMPLE.
    pub samples: u64,
    /// Sum of PERF_RECORD_LOST counts.
    pub lost: u64,
    /// Sum of PERF_RECORD_LOST_SAMPLES counts.
    pub lost_samples: u64,
    /// Records the kernel dropped for lack of room, read from the events
    /// themselves at the end (`PERF_FORMAT_LOST`): exact, unlike the
    /// PERF_RECORD_LOST sum, which misses drops after the last record that
    /// fitted.
    pub lost_counted: u64,
    /// The events' own counts at the end (pvpmu cpu-clock: ns the sampled
    /// tasks or CPUs ran while the event was on), summed.
    pub count_ns: u64,
    /// PERF_RECORD_THROTTLE.
    pub throttles: u64,
    /// PERF_RECORD_UNTHROTTLE.
    pub unthrottles: u64,
    /// Every record read from the data rings.
    pub records: u64,
    /// Records of other types.
    pub other_records: u64,
    /// Times a reader fell behind and skipped to the head.
    pub ring_skips: u64,

    /// PERF_RECORD_AUX.
    pub aux_records: u64,
    /// Sum of their sizes.
    pub aux_bytes: u64,
    /// With PERF_AUX_FLAG_TRUNCATED.
    pub aux_truncated: u64,
    /// With PERF_AUX_FLAG_PARTIAL.
    pub aux_partial: u64,
    /// With PERF_AUX_FLAG_COLLISION.
    pub aux_collision: u64,
    /// AUX records whose offset was not where the previous one ended (the
    /// trace decoder restarted there).
    pub aux_gaps: u64,
    /// PERF_RECORD_AUX with a size larger than the AUX area.
    pub aux_bad: u64,
    /// Times an event was re-enabled after a TRUNCATED AUX record (the
    /// perf core disables it when the AUX area fills).
    pub reenables: u64,

    /// Protocol violations the perf_ring checker found (after excusing
    /// `aux_gaps_after_lost`).
    pub checker_violations: u64,
    /// Checker complaints about an AUX record not following the previous
    /// one when a PERF_RECORD_LOST came in between (the AUX record may have
    /// been lost): not counted as violations.
    pub aux_gaps_after_lost: u64,
    /// The first violation, for the message.
    pub first_violation: Option<String>,
    /// Samples whose CPU field is not the CPU of their ring.
    pub cpu_mismatch: u64,

    /// Trace records decoded.
    pub trace_records: u64,
    /// Trace decode errors.
    pub trace_decode_errors: u64,
    /// The first one.
    pub first_trace_error: Option<String>,
    /// Partial trace records dropped at a gap.
    pub trace_dropped_bytes: u64,
    /// HEADER records.
    pub trace_headers: u64,
    /// EXIT records per reason (index = reason - 1).
    pub exits: [u64; 6],
    /// Sum of the EXIT host handling ns.
    pub exit_host_ns: u64,
    /// STATS records.
    pub stats_records: u64,
    /// STATS entries whose id has no name.
    pub stats_unnamed: u64,
    /// Last value of each (vcpu, stat name).
    pub stats: BTreeMap<(u32, String), u64>,

    /// Samples per symbol.
    pub symbols: HashMap<Arc<str>, u64>,
    /// Samples per folded stack ("root;...;leaf").
    pub stacks: HashMap<String, u64>,
    /// (samples, lost) per CPU ring.
    pub per_cpu: BTreeMap<u32, (u64, u64)>,

    /// The workload's exit, if one was spawned.
    pub workload_status: Option<String>,
    /// Notes for the human summary (symbol problems, ...).
    pub notes: Vec<String>,
}

/// Per-stream trace state (one AUX stream per ring).
#[derive(Debug, Default, Clone)]
pub struct TraceNames {
    names: Vec<String>,
}

impl Report {
    /// Total EXIT records.
    pub fn exits_total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// Counts a PERF_RECORD_AUX's flags and size.
    pub fn on_aux_record(&mut self, size: u64, flags: u64) {
        self.aux_records += 1;
        self.aux_bytes += size;
        if flags & aux_flag::TRUNCATED != 0 {
            self.aux_truncated += 1;
        }
        if flags & aux_flag::PARTIAL != 0 {
            self.aux_partial += 1;
        }
        if flags & aux_flag::COLLISION != 0 {
            self.aux_collision += 1;
        }
    }

    /// One item from the trace decoder.
    pub fn on_trace(&mut self, item: Result<Decoded<'_>, DecodeError>, names: &mut TraceNames) {
        let d = match item {
            Ok(d) => d,
            Err(e) => {
                self.trace_decode_errors += 1;
                if self.first_trace_error.is_none() {
                    self.first_trace_error = Some(e.to_string());
                }
                return;
            }
        };
        self.trace_records += 1;
        match d.record {
            Record::Header { .. } => self.trace_headers += 1,
            Record::Exit(e) => {
                if let Some(slot) = self.exits.get_mut(e.reason.as_u32() as usize - 1) {
                    *slot += 1;
                }
                self.exit_host_ns = self.exit_host_ns.saturating_add(e.host_ns);
            }
            Record::StatsNames(n) => {
                names.names = n.iter().map(str::to_string).collect();
            }
            Record::Stats(s) => {
                self.stats_records += 1;
                for st in s.iter() {
                    match usize::try_from(st.id).ok().and_then(|i| names.names.get(i)) {
                        Some(name) => {
                            self.stats.insert((d.vcpu, name.clone()), st.value);
                        }
                        None => self.stats_unnamed += 1,
                    }
                }
            }
        }
    }

    /// Counts one sample on `symbol` (and its folded stack, if any).
    pub fn on_sample_symbol(&mut self, symbol: Arc<str>, stack: Option<String>) {
        *self.symbols.entry(symbol).or_default() += 1;
        if let Some(s) = stack {
            *self.stacks.entry(s).or_default() += 1;
        }
    }

    /// The `n` most sampled symbols, most first (ties by name).
    pub fn top(&self, n: usize) -> Vec<(Arc<str>, u64)> {
        top_of(self.symbols.iter().map(|(k, v)| (k.clone(), *v)), n)
    }

    /// The `n` most sampled folded stacks.
    pub fn top_stacks(&self, n: usize) -> Vec<(String, u64)> {
        top_of(self.stacks.iter().map(|(k, v)| (k.clone(), *v)), n)
    }

    /// What makes the exit status non-zero.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.checker_violations > 0 {
            f.push(format!(
                "{} perf ring checker violation(s); first: {}",
                self.checker_violations,
                self.first_violation.as_deref().unwrap_or("?")
            ));
        }
        if self.trace_decode_errors > 0 {
            f.push(format!(
                "{} trace decode error(s); first: {}",
                self.trace_decode_errors,
                self.first_trace_error.as_deref().unwrap_or("?")
            ));
        }
        if self.cpu_mismatch > 0 {
            f.push(format!(
                "{} sample(s) name a CPU other than their ring's",
                self.cpu_mismatch
            ));
        }
        f
    }

    /// The machine-readable line.
    pub fn machine_line(&self) -> String {
        let mut s = String::from(MACHINE_PREFIX);
        let mut kv = |k: &str, v: &dyn std::fmt::Display| {
            let _ = write!(s, "{k}={v} ");
        };
        kv("samples", &self.samples);
        kv("lost", &self.lost);
        kv("throttles", &self.throttles);
        kv("checker_violations", &self.checker_violations);
        kv("records", &self.records);
        kv("aux_bytes", &self.aux_bytes);
        kv("aux_records", &self.aux_records);
        kv("aux_truncated", &self.aux_truncated);
        kv("trace_records", &self.trace_records);
        kv("trace_decode_errors", &self.trace_decode_errors);
        kv("exits_total", &self.exits_total());
        for r in ExitReason::ALL {
            kv(
                &format!("exits_{}", r.name()),
                &self.exits[r.as_u32() as usize - 1],
            );
        }
        let top = self
            .top(1)
            .first()
            .map(|(n, _)| sanitize(n))
            .unwrap_or_else(|| "none".to_string());
        kv("top", &top);
        if let Some((stack, _)) = self.top_stacks(1).first() {
            kv("top_stack", &sanitize(stack));
        }
        kv("duration_ms", &self.duration_ms);
        kv("freq", &self.freq);
        kv("period", &self.period);
        kv("cpus", &self.cpus);
        kv("mode", &self.mode);
        kv("lost_samples", &self.lost_samples);
        kv("lost_counted", &self.lost_counted);
        kv("count_ns", &self.count_ns);
        // Samples a perfect sampler would have taken in that time.
        let expected = match (self.freq, self.period) {
            (f, _) if f > 0 => self.count_ns * f / 1_000_000_000,
            (_, p) if p > 0 => self.count_ns / p,
            _ => 0,
        };
        kv("expected", &expected);
        kv("unthrottles", &self.unthrottles);
        kv("aux_partial", &self.aux_partial);
        kv("aux_collision", &self.aux_collision);
        kv("aux_gaps", &self.aux_gaps);
        kv("aux_gaps_after_lost", &self.aux_gaps_after_lost);
        kv("cpu_mismatch", &self.cpu_mismatch);
        kv("ring_skips", &self.ring_skips);
        kv("reenables", &self.reenables);
        s.truncate(s.trim_end().len());
        s
    }

    /// The human summary, the machine line, then the top symbols.
    pub fn render(&self, top_n: usize) -> String {
        let mut o = String::new();
        let secs = self.duration_ms as f64 / 1000.0;
        let rate = if self.duration_ms > 0 && self.cpus > 0 {
            self.samples as f64 / secs / self.cpus as f64
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "pvpmu-tool summary: {} PMU, {} mode, {} event(s), {}, {:.2} s",
            self.pmu,
            self.mode,
            self.cpus,
            if self.period > 0 {
                format!("period {} ns", self.period)
            } else {
                format!("{} Hz", self.freq)
            },
            secs
        );
        let _ = writeln!(
            o,
            "  data rings: {} records: {} samples ({:.0}/s per event), {} lost, {} lost_samples, {} throttle, {} unthrottle, {} other, {} skip(s)",
            self.records,
            self.samples,
            rate,
            self.lost,
            self.lost_samples,
            self.throttles,
            self.unthrottles,
            self.other_records,
            self.ring_skips
        );
        for (cpu, (s, l)) in &self.per_cpu {
            let _ = writeln!(o, "    cpu{cpu}: {s} samples, {l} lost");
        }
        let _ = writeln!(
            o,
            "  checker: {} violation(s){}{}",
            self.checker_violations,
            match &self.first_violation {
                Some(v) if self.checker_violations > 0 => format!(", first: {v}"),
                _ => String::new(),
            },
            if self.aux_gaps_after_lost > 0 {
                format!(
                    " ({} AUX gap(s) after PERF_RECORD_LOST excused)",
                    self.aux_gaps_after_lost
                )
            } else {
                String::new()
            }
        );
        if self.cpu_mismatch > 0 {
            let _ = writeln!(
                o,
                "  {} sample(s) carry a CPU other than their ring's",
                self.cpu_mismatch
            );
        }
        let _ = writeln!(
            o,
            "  aux: {} bytes in {} PERF_RECORD_AUX ({} truncated, {} partial, {} collision, {} gap(s)), {} re-enable(s)",
            self.aux_bytes,
            self.aux_records,
            self.aux_truncated,
            self.aux_partial,
            self.aux_collision,
            self.aux_gaps,
            self.reenables
        );
        let _ = writeln!(
            o,
            "  trace: {} records ({} HEADER, {} EXIT, {} STATS), {} decode error(s){}",
            self.trace_records,
            self.trace_headers,
            self.exits_total(),
            self.stats_records,
            self.trace_decode_errors,
            match &self.first_trace_error {
                Some(e) => format!(", first: {e}"),
                None => String::new(),
            }
        );
        if self.exits_total() > 0 {
            let parts: Vec<String> = ExitReason::ALL
                .iter()
                .map(|r| format!("{} {}", r.name(), self.exits[r.as_u32() as usize - 1]))
                .collect();
            let _ = writeln!(
                o,
                "  exits: {} ({}), mean host handling {} ns",
                self.exits_total(),
                parts.join(", "),
                self.exit_host_ns / self.exits_total()
            );
        }
        if !self.stats.is_empty() {
            let _ = writeln!(o, "  host stats (last STATS per vCPU, nonzero only):");
            let mut line = String::new();
            let mut cur = None;
            for ((vcpu, name), v) in &self.stats {
                if cur != Some(*vcpu) {
                    if !line.is_empty() {
                        let _ = writeln!(o, "{line}");
                    }
                    line = format!("    vcpu{vcpu}:");
                    cur = Some(*vcpu);
                }
                if *v != 0 {
                    let _ = write!(line, " {name}={v}");
                }
            }
            if !line.is_empty() {
                let _ = writeln!(o, "{line}");
            }
        }
        if let Some(w) = &self.workload_status {
            let _ = writeln!(o, "  workload: {w}");
        }
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        let _ = writeln!(o, "{}", self.machine_line());
        let top = self.top(top_n);
        let _ = writeln!(o, "top {} symbols ({} samples):", top.len(), self.samples);
        for (i, (name, n)) in top.iter().enumerate() {
            let pct = if self.samples > 0 {
                100.0 * *n as f64 / self.samples as f64
            } else {
                0.0
            };
            let _ = writeln!(o, "  {:2}. {:6.2}% {:>8}  {}", i + 1, pct, n, name);
        }
        let stacks = self.top_stacks(5);
        if !stacks.is_empty() {
            let _ = writeln!(o, "top {} stacks (root;...;leaf):", stacks.len());
            for (s, n) in stacks {
                let _ = writeln!(o, "  {n:>8}  {s}");
            }
        }
        o
    }
}

fn top_of<K: Ord + Clone>(it: impl Iterator<Item = (K, u64)>, n: usize) -> Vec<(K, u64)> {
    let mut v: Vec<(K, u64)> = it.collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// A symbol as one token of the machine line: whitespace and `=` become
/// `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvpmu_abi::trace::{self, Exit, Stat};

    fn report() -> Report {
        let mut r = Report {
            mode: "cpu-wide",
            pmu: "pvpmu".into(),
            cpus: 2,
            freq: 1000,
            duration_ms: 2000,
            ..Default::default()
        };
        for _ in 0..3 {
            r.on_sample_symbol(
                Arc::from("workload_hot"),
                Some("main;workload_a;workload_b;workload_hot".into()),
            );
        }
        r.on_sample_symbol(Arc::from("do idle"), None);
        r.samples = 4;
        r.records = 5;
        r
    }

    #[test]
    fn machine_line_format() {
        let mut r = report();
        r.exits[1] = 2;
        r.exits[4] = 1;
        let line = r.machine_line();
        assert!(line.starts_with("pvpmu-tool: samples=4 lost=0 throttles=0 checker_violations=0 records=5 aux_bytes=0 aux_records=0 aux_truncated=0 trace_records=0 trace_decode_errors=0 exits_total=3 exits_io_in=0 exits_io_out=2 exits_mmio_read=0 exits_mmio_write=0 exits_kick=1 exits_other=0 top=workload_hot top_stack=main;workload_a;workload_b;workload_hot duration_ms=2000 freq=1000 "), "{line}");
        // Every token after the prefix is key=value, keys unique.
        let mut keys = std::collections::HashSet::new();
        for tok in line.trim_start_matches(MACHINE_PREFIX).split(' ') {
            let (k, v) = tok.split_once('=').expect(tok);
            assert!(!v.is_empty(), "{tok}");
            assert!(keys.insert(k.to_string()), "duplicate {k}");
        }
        for k in [
            "samples",
            "lost",
            "throttles",
            "checker_violations",
            "records",
            "aux_bytes",
            "aux_records",
            "aux_truncated",
            "trace_decode_errors",
            "exits_total",
            "top",
            "duration_ms",
            "freq",
        ] {
            assert!(keys.contains(k), "{k} missing");
        }
        assert!(!line.ends_with(' '));
    }

    #[test]
    fn empty_report() {
        let r = Report::default();
        assert!(r.machine_line().contains(" top=none "));
        assert!(r.failures().is_empty());
        let text = r.render(10);
        assert!(text.contains("top 0 symbols"));
    }

    #[test]
    fn top_symbols_and_render() {
        let r = report();
        assert_eq!(r.top(1)[0], (Arc::from("workload_hot"), 3));
        assert_eq!(r.top(10).len(), 2);
        let text = r.render(10);
        let lines: Vec<&str> = text.lines().collect();
        let m = lines
            .iter()
            .position(|l| l.starts_with(MACHINE_PREFIX))
            .unwrap();
        assert_eq!(lines[m + 1], "top 2 symbols (4 samples):");
        assert_eq!(lines[m + 2], "   1.  75.00%        3  workload_hot");
        assert_eq!(lines[m + 3], "   2.  25.00%        1  do idle");
        assert!(text.contains("main;workload_a;workload_b;workload_hot"));
        assert_eq!(sanitize("do idle=x"), "do_idle_x");
    }

    #[test]
    fn aux_flags() {
        let mut r = Report::default();
        r.on_aux_record(100, aux_flag::TRUNCATED | aux_flag::PARTIAL);
        r.on_aux_record(8, aux_flag::COLLISION);
        assert_eq!(
            (
                r.aux_records,
                r.aux_bytes,
                r.aux_truncated,
                r.aux_partial,
                r.aux_collision
            ),
            (2, 108, 1, 1, 1)
        );
    }

    #[test]
    fn trace_items() {
        let mut buf = vec![0u8; 1024];
        let mut at = 0;
        at += trace::encode_header(&mut buf[at..], 0, 1).unwrap();
        at += trace::encode_stats_names(&mut buf[at..], 0, &["exits", "kicks"]).unwrap();
        for reason in [ExitReason::IoOut, ExitReason::IoOut, ExitReason::MmioRead] {
            let e = Exit {
                guest_ns: 1,
                rip: 2,
                addr: 3,
                reason,
                size: 1,
                host_ns: 100,
            };
            at += trace::encode_exit(&mut buf[at..], 1, &e).unwrap();
        }
        at += trace::encode_stats(
            &mut buf[at..],
            1,
            9,
            &[Stat { id: 1, value: 77 }, Stat { id: 5, value: 1 }],
        )
        .unwrap();
        buf[at..at + 8].copy_from_slice(&[9, 0, 8, 0, 0, 0, 0, 0]); // unknown type 9
        at += 8;
        let mut r = Report::default();
        let mut names = TraceNames::default();
        for item in trace::decode(&buf[..at]) {
            r.on_trace(item, &mut names);
        }
        assert_eq!(r.trace_records, 6);
        assert_eq!(r.trace_headers, 1);
        assert_eq!(r.exits_total(), 3);
        assert_eq!(r.exits[1], 2);
        assert_eq!(r.exits[2], 1);
        assert_eq!(r.exit_host_ns, 300);
        assert_eq!(r.stats.get(&(1, "kicks".to_string())), Some(&77));
        assert_eq!(r.stats_unnamed, 1);
        assert_eq!(r.trace_decode_errors, 1);
        assert!(r
            .first_trace_error
            .as_deref()
            .unwrap()
            .contains("unknown type 9"));
        let f = r.failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("1 trace decode error"));
        let text = r.render(10);
        assert!(text.contains("exits: 3 (io_in 0, io_out 2, mmio_read 1, mmio_write 0, kick 0, other 0), mean host handling 100 ns"), "{text}");
        assert!(text.contains("    vcpu1: kicks=77\n"), "{text}");
    }

    #[test]
    fn failures_listed() {
        let mut r = Report {
            checker_violations: 2,
            first_violation: Some("x".into()),
            cpu_mismatch: 1,
            ..Default::default()
        };
        assert_eq!(r.failures().len(), 2);
        r.checker_violations = 0;
        r.cpu_mismatch = 0;
        assert!(r.failures().is_empty());
    }
}
