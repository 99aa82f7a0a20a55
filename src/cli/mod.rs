//! The subcommands, one file each. They share only `crate::launch` (run
//! options, boot spec, where the guest runs), `crate::error` and
//! `crate::forward`, never each other's files.

pub(crate) mod probe;
pub(crate) mod record;
pub(crate) mod run;
