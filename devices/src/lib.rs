//! perfvisor devices.
