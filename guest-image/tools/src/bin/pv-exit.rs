//! `pv-exit STATUS`: end the VM with STATUS through perfvisor's debug-exit port.
//!
//! perfvisor's debug-exit device is a one-byte write-only I/O port at 0xf4: the
//! byte written becomes perfvisor's exit status (see docs/devices.md). Under a
//! VMM without that port the write is ignored, so this tool exits 1 and the
//! caller falls back to `poweroff -f`.
//!
//! Before the write it waits until the console has sent everything queued to
//! it: a process's console writes return once the bytes are in the tty's
//! transmit buffer (up to 4 KiB for the 8250 driver), and the VM ends at the
//! port write, so without the wait the tail of a command's output is lost.

use std::process::ExitCode;

const DEBUG_EXIT_PORT: u16 = 0xf4;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "0".to_string());
    let status: u8 = match arg.parse::<i64>() {
        // Shell statuses above 255 do not exist; clamp anything odd to 255.
        Ok(v) if (0..=255).contains(&v) => v as u8,
        Ok(_) => 255,
        Err(_) => {
            eprintln!("pv-exit: usage: pv-exit STATUS (0-255), got {arg:?}");
            return ExitCode::from(2);
        }
    };
    drain_console();
    // SAFETY: ioperm only changes this process's I/O permission bitmap; the
    // arguments name one port. It fails cleanly without CAP_SYS_RAWIO.
    if unsafe { libc::ioperm(DEBUG_EXIT_PORT as libc::c_ulong, 1, 1) } != 0 {
        eprintln!(
            "pv-exit: ioperm(0x{DEBUG_EXIT_PORT:x}): {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    // SAFETY: the port was granted above; an OUT to it has no effect on this
    // process's memory. Under perfvisor the VM stops here and never returns.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") status, options(nomem, nostack, preserves_flags));
    }
    // Still running: the port is not perfvisor's debug-exit device.
    eprintln!("pv-exit: no perfvisor debug-exit device answered at port 0x{DEBUG_EXIT_PORT:x}");
    ExitCode::from(1)
}

/// Wait until stdout's and /dev/console's output queues are empty (tcdrain:
/// the tty layer waits for its buffer and then for the UART's transmitter).
/// Not a terminal, or no console: nothing to wait for. A console that stopped
/// sending does not keep the VM alive: the wait gives up after 10 s.
fn drain_console() {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // SAFETY: tcdrain only blocks until the descriptor's output is sent;
        // an fd that is not a terminal fails with ENOTTY, which is ignored.
        unsafe { libc::tcdrain(libc::STDOUT_FILENO) };
        let console = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/console");
        if let Ok(console) = console {
            // SAFETY: as above, on a descriptor this thread owns.
            unsafe { libc::tcdrain(console.as_raw_fd()) };
        }
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(std::time::Duration::from_secs(10));
}
