//! Ownership of guest pages: every page the guest hands over is checked
//! (in RAM, aligned, not already another object's) and recorded.
//!
//! The check and the claim happen under one hold of the `declared` lock
//! ([`Claim`]): vCPUs enter the device concurrently (it has no outer bus
//! lock), so a check released before the claim would let two vCPUs take
//! the same page.

/// The page-owner table, locked from the first check to the claim.
pub(super) struct Claim<'a>(MutexGuard<'a, BTreeMap<u64, Owner>>);

impl Claim<'_> {
    /// Give `owner` exactly `pages` (its earlier pages are released).
    pub(super) fn declare(mut self, pages: &[u64], owner: Owner) {
        self.0.retain(|_, o| *o != owner);
        for p in pages {
            self.0.insert(*p, owner);
        }
    }
}

use super::*;

impl<M: GuestMemoryBackend + Send + Sync + 'static> Pvpmu<M> {
    /// Lock the page-owner table for a check-then-claim.
    pub(super) fn claim(&self) -> Claim<'_> {
        Claim(lock(&self.inner.declared))
    }

    /// A page the guest hands over: aligned, in RAM, not owned by anything
    /// except `replacing`.
    pub(super) fn check_page(
        &self,
        claim: &Claim<'_>,
        gpa: u64,
        what: &str,
        replacing: Owner,
    ) -> Result<(), Reject> {
        if !gpa.is_multiple_of(regs::PAGE_SIZE) {
            return Err(efault(format!("{what} 0x{gpa:x} is not 4 KiB aligned")));
        }
        if !self
            .inner
            .mem
            .check_range(GuestAddress(gpa), regs::PAGE_SIZE as usize)
        {
            return Err(efault(format!("{what} 0x{gpa:x} is not guest RAM")));
        }
        match claim.0.get(&gpa) {
            Some(o) if *o != replacing => Err(efault(format!(
                "{what} 0x{gpa:x} is already declared ({o:?})"
            ))),
            _ => Ok(()),
        }
    }

    /// Read a page list of `count` u64 GPAs at `list`, checked.
    pub(super) fn read_list(&self, list: u64, count: u64, what: &str) -> Result<Vec<u64>, Reject> {
        let len = (count * 8) as usize;
        let mut raw = vec![0u8; len];
        self.inner
            .mem
            .read_slice(&mut raw, GuestAddress(list))
            .map_err(|_| {
                efault(format!(
                    "{what} page list at 0x{list:x} ({count} entries) is not in guest RAM"
                ))
            })?;
        let pages: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let mut sorted = pages.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(efault(format!("{what} page list names a page twice")));
        }
        Ok(pages)
    }
}
