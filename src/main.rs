//! The `perfvisor` command line.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;
mod error;
mod forward;
mod include;
mod launch;

use forward::GivenArgs;
use launch::RunArgs;

#[derive(Parser)]
#[command(
    name = "perfvisor",
    version,
    about = "A small KVM VMM that gives Linux guests a host-produced sampling PMU"
)]
struct Cli {
    /// More log output (-v info, -vv debug); PERFVISOR_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest. With no --kernel, boots the project's default guest image.
    Run(Box<RunArgs>),
    /// Profile a guest from the host for its whole run (no guest driver
    /// needed): perf.data, folded stacks, a flame graph.
    Record(Box<cli::record::RecordArgs>),
    /// Check whether this host's /dev/kvm can run guest user space.
    Probe,
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    // One line: clap's first line, without its own "error: " prefix.
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    eprintln!(
                        "perfvisor: {} (see perfvisor --help)",
                        first.trim_start_matches("error: ")
                    );
                    ExitCode::from(2)
                }
            };
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("PERFVISOR_LOG", level))
        .format_timestamp(None)
        .format_target(false)
        .init();
    // What the user gave, for a perfvisor the run is forwarded to.
    let given = matches
        .subcommand()
        .map(|(name, m)| GivenArgs::from_matches(&Cli::command(), name, m))
        .unwrap_or_default();
    let result = match cli.command {
        Command::Run(args) => cli::run::run(*args, &given),
        Command::Record(args) => cli::record::record(*args, &given),
        Command::Probe => cli::probe::probe_cmd(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perfvisor: error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{KvmChoice, RUN_HOST_ONLY};
    use std::path::PathBuf;

    /// The options the user gave, as the sandboxed perfvisor gets them.
    fn forwarded(line: &[&str], host_only: &[&str]) -> (GivenArgs, Vec<String>) {
        let cmd = Cli::command();
        let m = cmd
            .clone()
            .try_get_matches_from(line)
            .expect("the test line parses");
        let (name, sub) = m.subcommand().expect("a subcommand");
        let given = GivenArgs::from_matches(&cmd, name, sub);
        let skip: Vec<&str> = RUN_HOST_ONLY.iter().chain(host_only).copied().collect();
        let argv = given.argv_without(&skip);
        (given, argv)
    }

    /// Every option of `sub` is in `line` (so a new option must be added
    /// to the round-trip test, and to a host-only list if the sandbox job
    /// must rewrite it).
    fn covers_every_option(sub: &str, given: &GivenArgs) {
        let cmd = Cli::command();
        let sub = cmd.find_subcommand(sub).expect("subcommand");
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                ["help", "version", "verbose"].contains(&id) || given.ids().contains(&id),
                "option {id} is not in the forwarding test: add it, and to RUN_HOST_ONLY or \
                 RECORD_HOST_ONLY if the sandbox job must not pass it on as given"
            );
        }
    }

    const RUN_LINE: &[&str] = &[
        "perfvisor",
        "run",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
        "--cmdline",
        "console=ttyS0 x",
        "--append=-weird=1",
        "--memory",
        "512M",
        "--cpus",
        "3",
        "--timeout",
        "9",
        "--kvm",
        "sandbox",
        "--pmu-freq",
        "500",
        "--pmu-budget",
        "900",
        "--pmu-backend",
        "host-timer",
        "--guest-orc",
        "/o",
        "--include",
        "/etc/hostname:/h",
        "--include-archive",
        "/a",
        "--",
        "echo",
        "hi -x",
        "--not-an-option",
    ];

    #[test]
    fn run_options_reach_the_sandboxed_perfvisor() {
        let (given, argv) = forwarded(RUN_LINE, &[]);
        covers_every_option("run", &given);
        let inner = ["perfvisor", "run"]
            .iter()
            .map(|s| s.to_string())
            .chain(argv.clone());
        let Command::Run(mut got) = Cli::try_parse_from(inner)
            .expect("inner line parses")
            .command
        else {
            panic!("not run: {argv:?}");
        };
        let Command::Run(mut want) = Cli::try_parse_from(RUN_LINE).expect("parses").command else {
            panic!("not run");
        };
        for a in [&mut got, &mut want] {
            (a.kernel, a.initrd, a.kvm, a.guest_orc) = (None, None, KvmChoice::Auto, None);
            (a.include, a.include_archive) = (Vec::new(), None);
        }
        assert_eq!(
            format!("{got:?}"),
            format!("{want:?}"),
            "inner line {argv:?}"
        );
        for host in ["--kernel", "--initrd", "--kvm", "--guest-orc", "--include"] {
            assert!(
                !argv.iter().any(|a| a.starts_with(host)),
                "{host} forwarded: {argv:?}"
            );
        }
    }

    #[test]
    fn record_options_reach_the_sandboxed_perfvisor() {
        let mut line = vec!["perfvisor", "record"];
        line.extend(&RUN_LINE[2..RUN_LINE.len() - 4]);
        line.extend([
            "-F",
            "250",
            "--call-graph",
            "fp",
            "-o",
            "/out.data",
            "--flamegraph",
            "/f.svg",
            "--folded",
            "/f.folded",
            "--guest-system-map",
            "/m",
            "--guest-binary",
            "/b1",
            "--guest-binary",
            "/b2",
            "--raw-out",
            "/r",
            "--guest-info",
            "/g",
            "--",
            "true",
        ]);
        let (given, argv) = forwarded(&line, cli::record::RECORD_HOST_ONLY);
        covers_every_option("record", &given);
        let inner = ["perfvisor", "record"]
            .iter()
            .map(|s| s.to_string())
            .chain(argv.clone());
        let Command::Record(got) = Cli::try_parse_from(inner)
            .expect("inner line parses")
            .command
        else {
            panic!("not record: {argv:?}");
        };
        let Command::Record(want) = Cli::try_parse_from(&line).expect("parses").command else {
            panic!("not record");
        };
        assert_eq!((got.freq, &got.call_graph), (want.freq, &want.call_graph));
        assert_eq!(got.run.pmu_budget, want.run.pmu_budget);
        assert_eq!(got.run.guest_command, want.run.guest_command);
        assert!(
            got.guest_binaries.is_empty() && got.raw_out.is_none() && got.run.guest_orc.is_none(),
            "{argv:?}"
        );
        assert_eq!(
            got.output,
            PathBuf::from("perf.data"),
            "the outer perfvisor writes -o"
        );
    }
}
