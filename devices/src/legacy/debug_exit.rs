//! perfvisor's debug-exit port: the guest writes one byte, the VM ends and
//! perfvisor exits with that byte as its status. The guest image's `/init`
//! reports its command's status this way (`pv-exit`).

use crate::bus::BusDevice;

/// Called with the status byte the guest wrote.
pub type ExitHandler = Box<dyn FnMut(u8) + Send>;

/// The debug-exit device (one byte wide, write-only; reads return 0xff).
pub struct DebugExit {
    on_exit: ExitHandler,
}

impl DebugExit {
    /// A device that calls `on_exit(status)` on every one-byte write.
    pub fn new(on_exit: ExitHandler) -> Self {
        Self { on_exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a byte write at the port itself counts; wider writes are ignored
        // so a stray `outl` cannot end the VM with a truncated value.
        if offset == 0 && data.len() == 1 {
            (self.on_exit)(data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn byte_write_reports_status() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut dev = DebugExit::new(Box::new(move |s| g.lock().unwrap().push(s)));
        dev.write(0, &[3, 0]);
        dev.write(0, &[42]);
        let mut b = [0u8; 2];
        dev.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(*got.lock().unwrap(), vec![42]);
    }
}
