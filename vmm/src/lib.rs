//! perfvisor VMM.
