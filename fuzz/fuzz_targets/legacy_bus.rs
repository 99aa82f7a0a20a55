//! Fuzzes the legacy devices on a port-I/O bus as a guest drives them
//! (COM1 with its line tap and the terminal filter behind it, i8042, CMOS,
//! debug-exit, guest events), and the terminal filter on its own.
//!
//! Input: [mode: u8] then 12-byte operations [kind: u8][port: u16]
//! [width: u8][value: u64]: a read, a write, or host input to the serial
//! FIFO. Checks: no panic; an access no device covers is unclaimed; what
//! the filter passes never holds an 8-bit C1 control, nor (for a pipe) an
//! ESC.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::legacy::{Cmos, DebugExit, GuestEvents, LineTap, SerialDevice, I8042};
use libfuzzer_sys::fuzz_target;
use vmm::term_filter::{Mode, TermFilter};
use vmm_sys_util::eventfd::EventFd;

/// A Write that keeps what it is given (bounded: the input is).
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<u8>>>);

impl Write for Kept {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_filtered(out: &[u8], mode: Mode) {
    assert!(
        !out.windows(2).any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])),
        "a C1 control passed"
    );
    if mode == Mode::Plain {
        assert!(!out.contains(&0x1b), "ESC passed to a pipe");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, ops)) = data.split_first() else {
        return;
    };
    let mode = if m & 1 == 0 { Mode::Plain } else { Mode::Terminal };

    // The filter alone, over the raw input in writes of varying size.
    let kept = Kept::default();
    let mut f = TermFilter::new(kept.clone(), mode);
    for chunk in ops.chunks(usize::from(m >> 1) + 1) {
        f.write_all(chunk).unwrap();
    }
    check_filtered(&kept.0.lock().unwrap(), mode);

    // The devices on a bus.
    let ev = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let console = Kept::default();
    let lines = Arc::new(Mutex::new(0usize));
    let l2 = lines.clone();
    let tap = LineTap::new(TermFilter::new(console.clone(), mode), move |line: &str| {
        assert!(line.len() <= 3 * 4096);
        *l2.lock().unwrap() += 1;
    });
    let serial = Arc::new(Mutex::new(SerialDevice::new(ev(), ev(), tap)));
    let pio = Bus::new();
    pio.insert(serial.clone(), 0x3f8, 8).unwrap();
    pio.insert(Arc::new(Mutex::new(I8042::new(ev()))), 0x60, 5)
        .unwrap();
    pio.insert(Arc::new(Mutex::new(Cmos::new())), 0x70, 2).unwrap();
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(Box::new(|_status| {})))),
        0xf4,
        1,
    )
    .unwrap();
    pio.insert(
        Arc::new(Mutex::new(GuestEvents::new(Box::new(|_event| {})))),
        0xf5,
        1,
    )
    .unwrap();
    let covered = |p: u64, w: u64| {
        [(0x3f8u64, 8u64), (0x60, 5), (0x70, 2), (0xf4, 1), (0xf5, 1)]
            .iter()
            .any(|&(b, l)| p >= b && p + w <= b + l)
    };
    for op in ops.chunks_exact(12) {
        let port = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x3ff);
        let width = [1usize, 2, 4, 8][usize::from(op[3] & 3)];
        let value = u64::from_le_bytes(op[4..12].try_into().unwrap());
        match op[0] % 3 {
            0 => {
                let mut buf = [0u8; 8];
                let claimed = pio.read(port, &mut buf[..width]);
                assert_eq!(claimed, covered(port, width as u64));
            }
            1 => {
                let claimed = pio.write(port, &value.to_le_bytes()[..width]);
                assert_eq!(claimed, covered(port, width as u64));
            }
            _ => {
                let mut s = serial.lock().unwrap();
                let room = s.input_capacity();
                let n = s.enqueue_input(&value.to_le_bytes()[..width]);
                assert!(n <= room.min(width));
            }
        }
    }
    check_filtered(&console.0.lock().unwrap(), mode);
});
