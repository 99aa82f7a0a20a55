//! The command line the perfvisor inside the L1 sandbox gets: the options
//! the user gave this one, re-emitted from clap's own matches, less the
//! ones that name host files or decide where the guest runs (the sandbox
//! job ships those files and rewrites those options).
//!
//! Nothing here lists the forwarded options: an option added to `run` or
//! `record` reaches the inner perfvisor as it is, unless it is added to the
//! subcommand's host-only list. The tests hold every option to one of the
//! two.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// One option as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Given {
    /// A flag (`--x`), `count` times.
    Flag {
        id: String,
        spelling: String,
        count: u8,
    },
    /// An option with values (`--x=v`, once per value).
    Values {
        id: String,
        spelling: String,
        values: Vec<String>,
    },
    /// The trailing positional values (after `--`).
    Trailing { id: String, values: Vec<String> },
}

impl Given {
    fn id(&self) -> &str {
        match self {
            Given::Flag { id, .. } | Given::Values { id, .. } | Given::Trailing { id, .. } => id,
        }
    }
}

/// The options of one subcommand that came from its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GivenArgs {
    items: Vec<Given>,
}

/// Ids clap adds itself, and the global ones the inner perfvisor gets
/// another way (`-v` travels as PERFVISOR_LOG).
const NEVER_FORWARDED: &[&str] = &["help", "version", "verbose"];

impl GivenArgs {
    /// The options `matches` (the matches of `sub`, a subcommand of `cli`)
    /// took from the command line, in `sub`'s declaration order.
    pub fn from_matches(cli: &Command, sub: &str, matches: &ArgMatches) -> GivenArgs {
        let Some(cmd) = cli.find_subcommand(sub) else {
            return GivenArgs::default();
        };
        let mut items = Vec::new();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if NEVER_FORWARDED.contains(&id)
                || matches.value_source(id) != Some(ValueSource::CommandLine)
            {
                continue;
            }
            let spelling = match (arg.get_long(), arg.get_short()) {
                (Some(l), _) => format!("--{l}"),
                (None, Some(s)) => format!("-{s}"),
                (None, None) => String::new(),
            };
            let raw = || -> Vec<String> {
                matches
                    .get_raw(id)
                    .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default()
            };
            let item = match arg.get_action() {
                ArgAction::SetTrue | ArgAction::SetFalse => Given::Flag {
                    id: id.into(),
                    spelling,
                    count: 1,
                },
                ArgAction::Count => Given::Flag {
                    id: id.into(),
                    spelling,
                    count: matches.get_count(id),
                },
                _ if arg.is_positional() => Given::Trailing {
                    id: id.into(),
                    values: raw(),
                },
                _ => Given::Values {
                    id: id.into(),
                    spelling,
                    values: raw(),
                },
            };
            items.push(item);
        }
        GivenArgs { items }
    }

    /// The command line again, without the options in `host_only`; the
    /// trailing values (the guest command) last, after `--`.
    pub fn argv_without(&self, host_only: &[&str]) -> Vec<String> {
        let mut argv = Vec::new();
        let mut trailing = Vec::new();
        for item in self.items.iter().filter(|i| !host_only.contains(&i.id())) {
            match item {
                Given::Flag {
                    spelling, count, ..
                } => argv.extend(std::iter::repeat_n(spelling.clone(), usize::from(*count))),
                // `--x=v` keeps a value that starts with '-' a value.
                Given::Values {
                    spelling, values, ..
                } => argv.extend(values.iter().map(|v| format!("{spelling}={v}"))),
                Given::Trailing { values, .. } => trailing.extend(values.iter().cloned()),
            }
        }
        if !trailing.is_empty() {
            argv.push("--".into());
            argv.extend(trailing);
        }
        argv
    }

    /// The ids given, for tests and checks.
    #[cfg(test)]
    pub fn ids(&self) -> Vec<&str> {
        self.items.iter().map(Given::id).collect()
    }
}
