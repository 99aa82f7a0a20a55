//! The guest console on the host side: serial output to the user's terminal
//! (through a line tap that shows `crate::end` the kernel's end-of-run
//! lines), and the
//! user's terminal input to the serial FIFO, with flow control and the
//! `Ctrl-A x` escape.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::{LineTap, SerialDevice};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::console_queue::DrainHandle;
use crate::end::{VmEnd, VmOutcome, END_GRACE};
use crate::term_filter::{Mode, TermFilter};

/// The serial output sink: the user's writer behind a line tap.
pub type ConsoleSink = LineTap<Box<dyn Write + Send>, Box<dyn FnMut(&str) + Send>>;
/// COM1 as perfvisor builds it.
pub type Serial = SerialDevice<ConsoleSink>;

/// Wrap `out` so every console line is checked by `end` (the raw text),
/// and what reaches `out` has passed the terminal filter
/// (`crate::term_filter`: no string sequences or C1 controls ever, and no
/// escape sequences at all unless stdout is a terminal).
///
/// The filtered bytes go through a bounded queue to `out` (one writer
/// thread; `crate::console_queue`), so a terminal that stops reading does
/// not stall the printing vCPUs. The returned handle waits, bounded, for
/// the queue at the end of a run.
pub fn sink(out: Box<dyn Write + Send>, end: Arc<VmEnd>) -> io::Result<(ConsoleSink, DrainHandle)> {
    let (queued, drain) = crate::console_queue::queued(out)?;
    let out: Box<dyn Write + Send> = Box::new(TermFilter::new(queued, Mode::for_stdout()));
    let on_line: Box<dyn FnMut(&str) + Send> = Box::new(move |line: &str| {
        if end.observe_console_line(line) {
            end.request_after(END_GRACE, VmOutcome::Halt);
        }
    });
    Ok((LineTap::new(out, on_line), drain))
}

const CTRL_A: u8 = 0x01;

/// Terminal input to the guest. Registered with the event manager only when
/// stdin is a terminal.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    space: EventFd,
    end: Arc<VmEnd>,
    pending: Vec<u8>,
    escape: bool,
    reading: bool,
}

impl ConsoleInput {
    /// `space` is the eventfd the serial device signals when its input FIFO
    /// drains.
    pub fn new(serial: Arc<Mutex<Serial>>, space: EventFd, end: Arc<VmEnd>) -> Self {
        Self {
            serial,
            space,
            end,
            pending: Vec::new(),
            escape: false,
            reading: true,
        }
    }

    /// Apply the escape sequence: `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one
    /// Ctrl-A, anything else after Ctrl-A is passed through.
    fn filter(&mut self, input: &[u8]) {
        for &b in input {
            if self.escape {
                self.escape = false;
                match b {
                    b'x' | b'X' => {
                        self.end.request(VmOutcome::UserQuit);
                        return;
                    }
                    CTRL_A => self.pending.push(CTRL_A),
                    other => self.pending.extend_from_slice(&[CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.escape = true;
            } else {
                self.pending.push(b);
            }
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..n);
    }

    fn set_reading(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.reading {
            return;
        }
        let stdin = io::stdin();
        let ev = Events::new(&stdin, EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        if r.is_ok() {
            self.reading = on;
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let stdin = io::stdin();
        if ops.add(Events::new(&stdin, EventSet::IN)).is_err() {
            self.reading = false;
        }
        let _ = ops.add(Events::new(&self.space, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.space.as_raw_fd() {
            let _ = self.space.read();
        } else if events.event_set().contains(EventSet::IN) {
            let mut buf = [0u8; 64];
            match io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    // EOF or a dead terminal: stop reading for good.
                    self.set_reading(ops, false);
                    return;
                }
                Ok(n) => self.filter(&buf[..n]),
            }
        } else {
            // HUP/ERR on stdin.
            self.set_reading(ops, false);
            return;
        }
        self.flush();
        // Backpressure: stop reading the terminal while input is queued.
        let want = self.pending.is_empty();
        self.set_reading(ops, want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> (ConsoleInput, Arc<VmEnd>, Arc<Mutex<Serial>>) {
        let end = Arc::new(VmEnd::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let space = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            space.try_clone().unwrap(),
            sink(Box::new(io::sink()), end.clone()).unwrap().0,
        )));
        (
            ConsoleInput::new(serial.clone(), space, end.clone()),
            end,
            serial,
        )
    }

    #[test]
    fn escape_quits_and_passes_ctrl_a() {
        let (mut c, end, _) = input();
        c.filter(b"ab\x01\x01c\x01z");
        assert_eq!(c.pending, b"ab\x01c\x01z");
        assert!(!end.stopping());
        c.filter(b"\x01x");
        assert_eq!(end.outcome(), Some(VmOutcome::UserQuit));
    }

    #[test]
    fn flush_respects_fifo() {
        let (mut c, _, serial) = input();
        c.filter(&[b'y'; 200]);
        c.flush();
        assert!(!c.pending.is_empty());
        assert_eq!(serial.lock().unwrap().input_capacity(), 0);
    }
}
