//! boot-test harness.
