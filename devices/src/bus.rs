//! A bus that dispatches port I/O or MMIO accesses to devices by address range.
//!
//! The vCPU threads call [`Bus::read`]/[`Bus::write`] on every PIO or MMIO exit,
//! so lookups take a read lock only and each device has its own lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

/// A device that answers accesses at offsets within its range on a [`Bus`].
///
/// `offset` is relative to the base the device was inserted at. `data.len()` is
/// the access width (1, 2, 4 or 8 bytes). A device must handle any offset and
/// width: the guest chooses both.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`. Fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("bus range 0x{base:x}+0x{len:x} overlaps a device already at 0x{other:x}; pick a free range")]
    Overlap { base: u64, len: u64, other: u64 },
    /// A range of length zero or one that wraps the address space.
    #[error("bus range 0x{base:x}+0x{len:x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address-range to device map.
#[derive(Default, Clone)]
pub struct Bus {
    // base -> (len, device)
    devices: Arc<RwLock<BTreeMap<u64, (u64, SharedDevice)>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        // The closest device at or below the new range's last byte is the only one that can overlap.
        if let Some((&other, &(other_len, _))) = map.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        map.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64, width: usize) -> Option<(SharedDevice, u64)> {
        let map = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (&base, (len, dev)) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(width as u64)? <= *len {
            Some((dev.clone(), offset))
        } else {
            None
        }
    }

    /// Dispatch a read. Returns false when no device covers the access; the
    /// caller decides what an unclaimed read returns.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9,
                other: 0x3f8
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3ff, 1),
            Err(BusError::Overlap {
                base: 0x3ff,
                len: 1,
                other: 0x3f8
            })
        );
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x400, 1)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(vec![]))), 0x3f7, 1)
            .unwrap();
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(vec![]))), u64::MAX, 2)
            .is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(vec![]))), 0x10, 0)
            .is_err());

        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
        // An access straddling the end of the range is unclaimed.
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w));
        assert!(!bus.read(0x500, &mut b));
        assert!(!bus.write(u64::MAX, &[1]));
    }
}
