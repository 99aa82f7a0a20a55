//! 16550 UART on the PIO bus, backed by vm-superio, with an irqfd trigger and
//! input flow control.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::{Serial, SerialEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// An `EventFd` used as an interrupt line (the VMM registers it as an irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial events perfvisor cares about: when the guest has drained the input
/// FIFO, `input_space` is signalled so the VMM resumes reading its stdin.
pub struct InputFlow {
    input_space: EventFd,
}

impl SerialEvents for InputFlow {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Nothing to do on failure: the counter saturating still leaves it readable.
        let _ = self.input_space.write(1);
    }
}

/// COM1 as seen by the bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<EventFdTrigger, Arc<InputFlow>, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART that raises `irq` and writes the guest's output to `out`.
    /// `input_space` is signalled whenever the guest empties the input FIFO.
    pub fn new(irq: EventFd, input_space: EventFd, out: W) -> Self {
        let flow = Arc::new(InputFlow { input_space });
        Self {
            uart: Serial::with_events(EventFdTrigger(irq), flow, out),
        }
    }

    /// Queue host input for the guest. Returns how many bytes fit; the rest
    /// must be offered again after `input_space` fires.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free space in the input FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The output sink.
    pub fn writer_mut(&mut self) -> &mut W {
        self.uart.writer_mut()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            // A failed host write loses that byte of console output; the UART
            // still raises THRE so the guest never blocks on us.
            if let Err(e) = self.uart.write(off, data[0]) {
                log::debug!("serial: {e:?}");
            }
        }
    }
}

/// A console sink that passes bytes through to `inner` and hands every
/// complete line (without the newline, carriage returns stripped) to `on_line`.
/// The VMM uses it to notice guest kernel panics and power-off messages.
pub struct LineTap<W: Write, F: FnMut(&str)> {
    inner: W,
    line: Vec<u8>,
    on_line: F,
}

/// Lines longer than this are handed over in pieces.
const MAX_LINE: usize = 4096;

impl<W: Write, F: FnMut(&str)> LineTap<W, F> {
    /// Wrap `inner`.
    pub fn new(inner: W, on_line: F) -> Self {
        Self {
            inner,
            line: Vec::with_capacity(256),
            on_line,
        }
    }

    fn push(&mut self, byte: u8) {
        match byte {
            b'\n' => self.emit(),
            b'\r' => {}
            _ => {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        (self.on_line)(&text);
        self.line.clear();
    }
}

impl<W: Write, F: FnMut(&str)> Write for LineTap<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.push(b);
        }
        // The tap must see every byte even when the sink is gone (e.g. a
        // closed stdout pipe): report success for the tap, ignore the sink.
        let _ = self.inner.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn output_reaches_sink_and_raises_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let space = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), space, Vec::new());
        dev.write(1, &[0x02]); // IER: THRE interrupt
        for &b in b"hi\n" {
            dev.write(0, &[b]);
        }
        assert_eq!(dev.writer_mut().as_slice(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
        // Odd widths and offsets are harmless.
        let mut w = [0u8; 4];
        dev.read(0, &mut w);
        assert_eq!(w, [0xff; 4]);
        dev.write(0x1000, &[1]);
    }

    #[test]
    fn input_flow_control() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let space = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, space.try_clone().unwrap(), Vec::new());
        let big = [b'x'; 100];
        let n = dev.enqueue_input(&big);
        assert!(n > 0 && n < 100, "FIFO takes part of the input, took {n}");
        assert_eq!(dev.enqueue_input(&big), 0);
        // The guest drains the FIFO through RBR.
        let mut b = [0u8; 1];
        for _ in 0..n {
            dev.read(0, &mut b);
        }
        assert!(space.read().unwrap() >= 1, "draining signals input space");
        assert_eq!(dev.input_capacity(), n);
    }

    #[test]
    fn line_tap_sees_lines() {
        let lines = Mutex::new(Vec::new());
        let mut tap = LineTap::new(Vec::new(), |l: &str| {
            lines.lock().unwrap().push(l.to_string())
        });
        tap.write_all(b"Kernel panic - not syncing: x\r\nab")
            .unwrap();
        tap.write_all(b"c\n").unwrap();
        drop(tap);
        assert_eq!(
            *lines.lock().unwrap(),
            vec!["Kernel panic - not syncing: x", "abc"]
        );
    }
}
