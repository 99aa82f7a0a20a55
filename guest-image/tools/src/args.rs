//! `pvpmu-tool`'s command line (hand-rolled: the tool is static and small).

/// Usage text.
pub const USAGE: &str = "\
usage: pvpmu-tool [options] [-- COMMAND [ARGS...]]

Opens the pvpmu sampling event (config 0, cpu-clock) through a standard
perf mmap, reads its data ring and AUX trace, checks both, and prints a
summary, one machine-readable 'pvpmu-tool: key=value ...' line and the top
symbols.

  -a, --all-cpus        one event per online CPU for every task (the default
                        without COMMAND; with COMMAND: system-wide while it runs)
  -- COMMAND ARGS       fork COMMAND, enable per-task events (inherit, one per
                        CPU), then let it exec; stop when it exits
  --duration SECS       stop after SECS (default 5 without COMMAND, else none)
  --freq HZ             sampling frequency (default 1000)
  --period NS           sample every NS ns of CPU time instead of --freq
  -g, --callchain       also sample callchains (PERF_SAMPLE_CALLCHAIN)
  --data-pages N        data ring pages, a power of two (default 64)
  --aux-pages N         AUX area pages, a power of two (default 64)
  --no-aux              do not map an AUX area
  --slow-consumer MS    sleep MS between reads (to force loss in tests)
  --top N               symbols to list (default 10)
  --pmu NAME            PMU name under /sys/bus/event_source/devices
                        (default pvpmu; 'software' tests the tool without it)
  -v, --verbose         log every PERF_RECORD_AUX and LOST, trace errors,
                        and each ring's final heads and tails, to stderr
  -h, --help            this text

Exit status: 0 OK; 1 checker violations, trace decode errors or samples on
the wrong CPU; 2 usage error; 3 setup error (no PMU, perf_event_open or mmap
failed).";

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `-a`.
    pub all_cpus: bool,
    /// `--duration` in seconds.
    pub duration: Option<f64>,
    /// `--freq`.
    pub freq: u64,
    /// `--period` (wins over freq).
    pub period: Option<u64>,
    /// `-g`.
    pub callchain: bool,
    /// `--data-pages`.
    pub data_pages: usize,
    /// `--aux-pages`.
    pub aux_pages: usize,
    /// `--no-aux`.
    pub no_aux: bool,
    /// `--slow-consumer` in ms.
    pub slow_consumer_ms: u64,
    /// `--top`.
    pub top: usize,
    /// `--pmu`.
    pub pmu: String,
    /// `-v`.
    pub verbose: bool,
    /// The workload.
    pub command: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            all_cpus: false,
            duration: None,
            freq: 1000,
            period: None,
            callchain: false,
            data_pages: 64,
            aux_pages: 64,
            no_aux: false,
            slow_consumer_ms: 0,
            top: 10,
            pmu: "pvpmu".to_string(),
            verbose: false,
            command: Vec::new(),
        }
    }
}

impl Options {
    /// System-wide events (pid -1): `-a`, or no command.
    pub fn cpu_wide(&self) -> bool {
        self.all_cpus || self.command.is_empty()
    }

    /// How long to run: `--duration`, or 5 s without a command.
    pub fn run_for(&self) -> Option<std::time::Duration> {
        match (self.duration, self.command.is_empty()) {
            (Some(d), _) => Some(std::time::Duration::from_secs_f64(d)),
            (None, true) => Some(std::time::Duration::from_secs(5)),
            (None, false) => None,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Run.
    Run(Options),
    /// Print the usage.
    Help,
}

fn num<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{opt} wants a number, got {v:?}"))
}

fn pages(opt: &str, v: &str) -> Result<usize, String> {
    let n: usize = num(opt, v)?;
    if n == 0 || !n.is_power_of_two() || n > 1 << 18 {
        return Err(format!(
            "{opt} wants a power of two from 1 to 262144, got {n}"
        ));
    }
    Ok(n)
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            o.command = it.by_ref().collect();
            if o.command.is_empty() {
                return Err("'--' must be followed by a command".into());
            }
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        if inline.is_some()
            && matches!(
                name.as_str(),
                "--help" | "--all-cpus" | "--callchain" | "--no-aux"
            )
        {
            return Err(format!("{name} takes no value"));
        }
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-a" | "--all-cpus" => o.all_cpus = true,
            "-g" | "--callchain" => o.callchain = true,
            "-v" | "--verbose" => o.verbose = true,
            "--no-aux" => o.no_aux = true,
            "--duration" => {
                let d: f64 = num(&name, &value(&name)?)?;
                if !(d > 0.0 && d < 1e7) {
                    return Err(format!("--duration wants seconds > 0, got {d}"));
                }
                o.duration = Some(d);
            }
            "--freq" => {
                let f: u64 = num(&name, &value(&name)?)?;
                if f == 0 {
                    return Err("--freq must be at least 1".into());
                }
                o.freq = f;
            }
            "--period" => {
                let p: u64 = num(&name, &value(&name)?)?;
                if p == 0 {
                    return Err("--period must be at least 1 ns".into());
                }
                o.period = Some(p);
            }
            "--data-pages" => o.data_pages = pages(&name, &value(&name)?)?,
            "--aux-pages" => o.aux_pages = pages(&name, &value(&name)?)?,
            "--slow-consumer" => o.slow_consumer_ms = num(&name, &value(&name)?)?,
            "--top" => o.top = num(&name, &value(&name)?)?,
            "--pmu" => {
                let p = value(&name)?;
                if p.is_empty() || p.contains('/') || p.starts_with('.') {
                    return Err(format!("--pmu wants a PMU name, got {p:?}"));
                }
                o.pmu = p;
            }
            _ => return Err(format!("unknown option {arg:?} (see --help)")),
        }
    }
    Ok(Parsed::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert!(o.cpu_wide());
        assert_eq!(o.run_for(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(
            (o.freq, o.data_pages, o.aux_pages, o.top),
            (1000, 64, 64, 10)
        );
        assert_eq!(o.pmu, "pvpmu");
    }

    #[test]
    fn options() {
        let o = run(&[
            "--duration",
            "2",
            "--freq=4000",
            "-g",
            "--data-pages",
            "8",
            "--aux-pages=16",
            "--no-aux",
            "--slow-consumer",
            "50",
            "--top",
            "3",
            "--pmu",
            "software",
            "-v",
        ]);
        assert_eq!(o.duration, Some(2.0));
        assert_eq!(o.freq, 4000);
        assert!(o.callchain && o.no_aux && o.verbose);
        assert_eq!(
            (o.data_pages, o.aux_pages, o.slow_consumer_ms, o.top),
            (8, 16, 50, 3)
        );
        assert_eq!(o.pmu, "software");
        assert_eq!(run(&["--period", "100000"]).period, Some(100000));
        assert_eq!(
            run(&["--duration", "0.5"]).run_for(),
            Some(std::time::Duration::from_millis(500))
        );
    }

    #[test]
    fn command() {
        let o = run(&["--freq", "10", "--", "pv-workload", "--seconds", "2", "--"]);
        assert_eq!(o.command, ["pv-workload", "--seconds", "2", "--"]);
        assert!(!o.cpu_wide());
        assert_eq!(o.run_for(), None);
        let o = run(&["-a", "--", "true"]);
        assert!(o.cpu_wide());
    }

    #[test]
    fn errors() {
        assert_eq!(p(&["-h"]), Ok(Parsed::Help));
        for bad in [
            &["--data-pages", "3"][..],
            &["--data-pages", "0"],
            &["--aux-pages", "x"],
            &["--freq", "0"],
            &["--period", "0"],
            &["--duration", "-1"],
            &["--duration"],
            &["--bogus"],
            &["--"],
            &["--pmu", "../x"],
            &["-a=1"],
            &["--no-aux=1"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert!(p(&["--bogus"]).unwrap_err().contains("--help"));
    }
}
