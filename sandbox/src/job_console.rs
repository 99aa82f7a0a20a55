//! What the L1's console says about the job: a small state machine over
//! its lines. The L1 boots (its lines are logged, `sandbox:` lines shown),
//! the job runs (its lines are the job's output), then the job ends with
//! the exit marker or the L1 finds no /dev/kvm; afterwards lines are only
//! logged. Marker lines carry a per-run nonce, so the job cannot forge
//! them. Every text kept is bounded (`console.rs`).

use std::time::Duration;

use crate::console::{clean_line, KeptText, Tail};

/// Marker lines printed by the L1 /init; the nonce keeps job output from forging them.
pub(crate) struct Markers {
    pub(crate) start: String,
    pub(crate) exit_prefix: String,
    pub(crate) no_kvm: String,
    /// Written to the L1's console input to stop a stoppable job.
    pub(crate) stop: String,
}

impl Markers {
    pub(crate) fn new(nonce: &str) -> Markers {
        Markers {
            start: format!("@@sandbox-{nonce}-start@@"),
            exit_prefix: format!("@@sandbox-{nonce}-exit="),
            no_kvm: format!("@@sandbox-{nonce}-no-kvm@@"),
            stop: format!("@@sandbox-{nonce}-stop@@"),
        }
    }

    /// Text before the start marker, if `line` has it.
    fn start<'a>(&self, line: &'a str) -> Option<&'a str> {
        line.find(&self.start).map(|i| &line[..i])
    }

    /// (text before the marker, status) if `line` has the exit marker.
    fn exit<'a>(&self, line: &'a str) -> Option<(&'a str, i32)> {
        let i = line.find(&self.exit_prefix)?;
        let rest = &line[i + self.exit_prefix.len()..];
        let status = rest
            .strip_suffix("@@")
            .or_else(|| rest.split("@@").next())?
            .trim()
            .parse()
            .ok()?;
        Some((&line[..i], status))
    }
}

/// Where the job is, as far as the console has told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The L1 kernel and /init before the job's start marker.
    Booting,
    /// Between the start and the exit marker.
    Running,
    /// The exit marker came, with the job's status.
    Ended(i32),
    /// /init found no /dev/kvm and powered off.
    NoKvm,
}

/// The console's state machine and the text it keeps.
pub(crate) struct JobConsole {
    markers: Markers,
    phase: Phase,
    l1_boot: Option<Duration>,
    /// Every line (bounded), for the outcome's `console`.
    pub(crate) all: KeptText,
    /// The job's own lines (bounded).
    pub(crate) output: KeptText,
    /// The last lines, for error messages.
    pub(crate) tail: Tail,
}

impl JobConsole {
    pub(crate) fn new(markers: Markers, max_kept: usize, tail_lines: usize) -> JobConsole {
        JobConsole {
            markers,
            phase: Phase::Booting,
            l1_boot: None,
            all: KeptText::new(max_kept),
            output: KeptText::new(max_kept),
            tail: Tail::new(tail_lines),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// How long the L1 took to reach the job's start, once it has.
    pub(crate) fn l1_boot(&self) -> Option<Duration> {
        self.l1_boot
    }

    /// True once the job ended or the L1 found no KVM: what is left is
    /// the L1 powering off.
    pub(crate) fn finished(&self) -> bool {
        matches!(self.phase, Phase::Ended(_) | Phase::NoKvm)
    }

    /// The job started and has not ended: the phase a silence limit
    /// applies to.
    pub(crate) fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Take one raw console line, `elapsed` after QEMU started; the lines
    /// the user should see go to `console`. True when this line finished
    /// the job (the caller starts the shutdown grace period).
    pub(crate) fn line(
        &mut self,
        raw: &str,
        elapsed: Duration,
        console: &mut dyn FnMut(&str),
    ) -> bool {
        let line = clean_line(raw);
        // The host's own stop request, echoed back by the L1's tty.
        if line.contains(&self.markers.stop) {
            return false;
        }
        self.all.push_line(&line);
        self.tail.push(&line);
        if self.finished() {
            log::debug!("L1: {line}");
            return false;
        }
        if let Some((before, status)) = self.markers.exit(&line) {
            if !before.is_empty() {
                console(before);
                self.output.push_line(before);
            }
            self.phase = Phase::Ended(status);
            return true;
        }
        if line.contains(&self.markers.no_kvm) {
            self.phase = Phase::NoKvm;
            return true;
        }
        if let Some(before) = self.markers.start(&line) {
            self.l1_boot = Some(elapsed);
            self.phase = Phase::Running;
            if !before.is_empty() {
                console(before);
            }
        } else if self.phase == Phase::Running {
            console(&line);
            self.output.push_line(&line);
        } else if line.starts_with("sandbox:") {
            console(&line);
        } else {
            log::debug!("L1: {line}");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_and_survive_missing_newlines() {
        let m = Markers::new("abc");
        assert_eq!(m.exit("@@sandbox-abc-exit=3@@"), Some(("", 3)));
        assert_eq!(
            m.exit("partial line@@sandbox-abc-exit=0@@"),
            Some(("partial line", 0))
        );
        assert_eq!(m.exit("@@sandbox-xyz-exit=3@@"), None);
        assert_eq!(m.start("x@@sandbox-abc-start@@"), Some("x"));
    }

    fn feed(c: &mut JobConsole, lines: &[&str]) -> (Vec<String>, Vec<bool>) {
        let mut shown = Vec::new();
        let mut ends = Vec::new();
        for l in lines {
            ends.push(c.line(l, Duration::from_secs(2), &mut |s| {
                shown.push(s.to_string())
            }));
        }
        (shown, ends)
    }

    #[test]
    fn a_job_boots_runs_and_ends() {
        let mut c = JobConsole::new(Markers::new("n"), 1 << 20, 4);
        let (shown, ends) = feed(
            &mut c,
            &[
                "[    0.1] Linux version 6.1",
                "sandbox: insmod kvm.ko failed: x",
                "@@sandbox-n-start@@",
                "hello",
                "@@sandbox-n-stop@@",
                "bye@@sandbox-n-exit=3@@",
                "reboot: Power down",
            ],
        );
        assert_eq!(shown, ["sandbox: insmod kvm.ko failed: x", "hello", "bye"]);
        assert_eq!(ends, [false, false, false, false, false, true, false]);
        assert_eq!(c.phase(), Phase::Ended(3));
        assert_eq!(c.l1_boot(), Some(Duration::from_secs(2)));
        assert!(c.finished() && !c.running());
        let out = std::mem::replace(&mut c.output, KeptText::new(1));
        assert_eq!(out.into_string(), "hello\nbye\n");
        // The host's stop line is not part of the console.
        assert!(!c.tail.text().contains("stop@@"));
    }

    #[test]
    fn forged_markers_and_late_lines_change_nothing() {
        let mut c = JobConsole::new(Markers::new("n"), 1 << 20, 4);
        let (shown, _) = feed(
            &mut c,
            &[
                "@@sandbox-n-start@@",
                "@@sandbox-other-exit=0@@",
                "@@sandbox-n-exit=0@@",
            ],
        );
        assert_eq!(shown, ["@@sandbox-other-exit=0@@"]);
        assert_eq!(c.phase(), Phase::Ended(0));
        let (shown, ends) = feed(&mut c, &["@@sandbox-n-exit=9@@", "@@sandbox-n-no-kvm@@"]);
        assert!(shown.is_empty());
        assert_eq!(ends, [false, false]);
        assert_eq!(c.phase(), Phase::Ended(0));
    }

    #[test]
    fn no_kvm_finishes_before_the_job_starts() {
        let mut c = JobConsole::new(Markers::new("n"), 1 << 20, 4);
        let (_, ends) = feed(&mut c, &["boot", "@@sandbox-n-no-kvm@@"]);
        assert_eq!(ends, [false, true]);
        assert_eq!(c.phase(), Phase::NoKvm);
        assert_eq!(c.l1_boot(), None);
    }
}
