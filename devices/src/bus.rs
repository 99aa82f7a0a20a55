//! A bus that dispatches port I/O or MMIO accesses to devices by address range.
//!
//! The vCPU threads call [`Bus::read`]/[`Bus::write`] on every PIO or MMIO exit,
//! so lookups take a read lock only and each device does its own locking.
//! Most devices are plain state behind one `Mutex` ([`BusDevice`], put on the
//! bus as `Arc<Mutex<D>>`); a device that locks finer than that (pvpmu: one
//! lock per vCPU slot) implements [`BusDeviceSync`] itself, so vCPUs that
//! touch different parts of it do not serialise on an outer lock.

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

/// A device that takes accesses through a shared reference and does its own
/// locking. Every `Mutex<D>` of a [`BusDevice`] is one (the lock is taken
/// for the access; a poisoned lock is taken over, as a device's state stays
/// consistent between accesses).
pub trait BusDeviceSync: Send + Sync {
    /// The guest reads `data.len()` bytes at `offset`. Fill `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

impl<D: BusDevice + ?Sized> BusDeviceSync for Mutex<D> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data)
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data)
    }
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

type SharedDevice = Arc<dyn BusDeviceSync>;

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
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.write(offset, data);
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

    /// A device with its own locking goes on the bus as it is: two threads
    /// can be inside it at once, which an outer lock would forbid.
    #[test]
    fn a_self_locking_device_is_entered_without_an_outer_lock() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Barrier;

        struct Rendezvous {
            inside: AtomicU32,
            both: Barrier,
        }
        impl BusDeviceSync for Rendezvous {
            fn read(&self, _offset: u64, data: &mut [u8]) {
                self.inside.fetch_add(1, Ordering::SeqCst);
                // Returns only once both readers are inside read().
                self.both.wait();
                data[0] = self.inside.load(Ordering::SeqCst) as u8;
            }
            fn write(&self, _offset: u64, _data: &[u8]) {}
        }
        let bus = Bus::new();
        let dev = Arc::new(Rendezvous {
            inside: AtomicU32::new(0),
            both: Barrier::new(2),
        });
        bus.insert(dev, 0x1000, 0x10).unwrap();
        let other = bus.clone();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            assert!(other.read(0x1000, &mut b));
            b[0]
        });
        let mut b = [0u8; 1];
        assert!(bus.read(0x1004, &mut b));
        assert_eq!(b[0], 2);
        assert_eq!(t.join().unwrap(), 2);
    }
}
