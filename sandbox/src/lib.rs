//! L1 sandbox.
