//! Guest-side tools of the perfvisor image: `pvpmu-tool` (the pvpmu
//! consumer) and its pieces, unit-tested on the build host.

pub mod args;
pub mod perf;
pub mod report;
pub mod session;
pub mod symbols;
