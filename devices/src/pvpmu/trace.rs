//! The pvpmu AUX trace format (version 1); see docs/pvpmu.md.
