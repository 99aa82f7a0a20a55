//! Per-vCPU tally of the exits perfvisor handled, by kind and port or
//! guest-physical address, for the `-v` summary at the end of a run.
//!
//! The address is the guest's choice: a guest that touches fresh unmapped
//! MMIO addresses in a loop would grow an unbounded map without limit. The
//! tally keeps at most [`MAX_KEYS`] distinct (kind, address) keys; exits
//! at any further key count in one overflow bucket per kind.

use std::collections::HashMap;

use crate::vcpu::ExitKind;

/// Distinct (kind, address) keys kept. Real guests use a few dozen ports
/// and a handful of MMIO windows.
pub const MAX_KEYS: usize = 256;

/// The bounded tally.
#[derive(Debug, Default)]
pub struct ExitCounts {
    by_key: HashMap<(ExitKind, u64), u64>,
    /// Exits at keys that arrived after the map was full, by kind.
    overflow: HashMap<ExitKind, u64>,
}

impl ExitCounts {
    /// Count one exit.
    pub fn add(&mut self, kind: ExitKind, addr: u64) {
        if let Some(n) = self.by_key.get_mut(&(kind, addr)) {
            *n = n.saturating_add(1);
        } else if self.by_key.len() < MAX_KEYS {
            self.by_key.insert((kind, addr), 1);
        } else {
            let n = self.overflow.entry(kind).or_default();
            *n = n.saturating_add(1);
        }
    }

    /// All exits counted.
    pub fn total(&self) -> u64 {
        self.by_key
            .values()
            .chain(self.overflow.values())
            .fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// Distinct keys held (at most [`MAX_KEYS`]).
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// One line: the `top` most frequent keys, then the overflow buckets.
    pub fn summary(&self, top: usize) -> String {
        let mut counts: Vec<_> = self.by_key.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1));
        let mut parts: Vec<String> = counts
            .iter()
            .take(top)
            .map(|((k, a), n)| format!("{k:?}@0x{a:x}={n}"))
            .collect();
        let mut over: Vec<_> = self.overflow.iter().collect();
        over.sort_by(|a, b| b.1.cmp(a.1));
        parts.extend(
            over.iter()
                .map(|(k, n)| format!("{k:?}@<{MAX_KEYS}+ other addresses>={n}")),
        );
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_fresh_addresses_keep_the_tally_bounded() {
        let mut c = ExitCounts::default();
        for i in 0..1_000_000u64 {
            c.add(ExitKind::MmioRead, 0xd000_0000 + i * 8);
        }
        c.add(ExitKind::IoOut, 0x3f8);
        assert_eq!(c.keys(), MAX_KEYS);
        assert_eq!(c.total(), 1_000_001);
        let s = c.summary(2);
        assert!(s.contains("MmioRead@<256+ other addresses>="), "{s}");
        assert_eq!(c.overflow.len(), 2, "{:?}", c.overflow);
    }

    #[test]
    fn known_keys_keep_counting_after_the_map_is_full() {
        let mut c = ExitCounts::default();
        c.add(ExitKind::IoOut, 0x3f8);
        for i in 0..10_000u64 {
            c.add(ExitKind::MmioWrite, i);
        }
        for _ in 0..5 {
            c.add(ExitKind::IoOut, 0x3f8);
        }
        assert_eq!(c.by_key[&(ExitKind::IoOut, 0x3f8)], 6);
        let s = c.summary(MAX_KEYS);
        assert!(s.contains("IoOut@0x3f8=6"), "{s}");
    }
}
