//! The guest console's way to the user's terminal without blocking the
//! guest: a vCPU that prints only appends to a bounded queue, and one
//! writer thread moves it to the terminal. A terminal that stops reading
//! (a paused pager, a stopped `less`, a full pipe nobody drains) no longer
//! stalls the vCPUs that print, and so the guest: past [`CAPACITY`] queued
//! bytes the guest's output is dropped and counted, and the writer says how
//! much when the terminal reads again. At the end of the run perfvisor
//! waits at most [`DrainHandle::drain`]'s bound for the queue to empty.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes waiting for the terminal (about a minute of a chatty boot).
pub const CAPACITY: usize = 4 << 20;
/// Most bytes one terminal write takes.
const CHUNK: usize = 64 << 10;

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// Bytes dropped since the writer last reported.
    dropped: u64,
    /// The writer holds bytes it has not finished writing.
    writing: bool,
    /// The terminal failed (a closed pipe): discard from now on.
    failed: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vCPU side: `Write` that never blocks on the terminal.
pub struct QueuedOutput {
    shared: Arc<Shared>,
}

/// Waits, bounded, for queued output to reach the terminal.
#[derive(Clone)]
pub struct DrainHandle {
    shared: Arc<Shared>,
}

/// Queue in front of `out`, with its writer thread.
pub fn queued(out: Box<dyn Write + Send>) -> io::Result<(QueuedOutput, DrainHandle)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let s = shared.clone();
    // Detached: it may block in write(2) on a terminal that never reads,
    // and must not keep perfvisor from exiting.
    std::thread::Builder::new()
        .name("console-out".into())
        .stack_size(crate::THREAD_STACK)
        .spawn(move || writer(&s, out))?;
    Ok((
        QueuedOutput {
            shared: shared.clone(),
        },
        DrainHandle { shared },
    ))
}

fn writer(shared: &Shared, mut out: Box<dyn Write + Send>) {
    loop {
        let (chunk, dropped) = {
            let mut s = shared.lock();
            while s.queue.is_empty() && s.dropped == 0 && !s.closed {
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.queue.is_empty() && s.dropped == 0 {
                return; // closed and drained
            }
            let n = s.queue.len().min(CHUNK);
            let chunk: Vec<u8> = s.queue.drain(..n).collect();
            s.writing = true;
            (chunk, std::mem::take(&mut s.dropped))
        };
        let mut ok = true;
        if dropped > 0 {
            let note = format!(
                "\r\n[perfvisor: {dropped} bytes of guest console output dropped: the terminal did not read them]\r\n"
            );
            ok = out.write_all(note.as_bytes()).is_ok();
        }
        ok = ok && out.write_all(&chunk).and_then(|()| out.flush()).is_ok();
        let mut s = shared.lock();
        s.writing = false;
        if !ok {
            s.failed = true;
            s.queue.clear();
        }
        shared.changed.notify_all();
    }
}

impl Write for QueuedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut s = self.shared.lock();
        if !s.failed {
            let n = data.len().min(CAPACITY.saturating_sub(s.queue.len()));
            s.queue.extend(&data[..n]);
            s.dropped = s.dropped.saturating_add((data.len() - n) as u64);
            self.shared.changed.notify_all();
        }
        Ok(data.len())
    }

    /// Does not wait (the serial device flushes after every byte): see
    /// [`DrainHandle::drain`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedOutput {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

impl DrainHandle {
    /// Wait until everything queued so far has been written, or `limit`
    /// passed; true when it was written.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = self.shared.lock();
        loop {
            if s.failed || (s.queue.is_empty() && s.dropped == 0 && !s.writing) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A terminal that takes bytes only when the test says so.
    struct Gated {
        go: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.go.recv();
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_arrives_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut q, drain) = queued(Box::new(Sink(got.clone()))).unwrap();
        for i in 0..100_000u32 {
            q.write_all(&[(i % 251) as u8]).unwrap();
        }
        assert!(drain.drain(Duration::from_secs(10)));
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 100_000);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    #[test]
    fn a_stalled_terminal_neither_blocks_the_writer_nor_grows_memory() {
        let (tx, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut q, drain) = queued(Box::new(Gated {
            go: rx,
            got: got.clone(),
        }))
        .unwrap();
        // 3 x CAPACITY while nothing is read: returns at once, bounded.
        let start = Instant::now();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..3 * (CAPACITY >> 20) {
            q.write_all(&block).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(q.shared.lock().queue.len() <= CAPACITY);
        // The end of a run gives up on a terminal that never reads.
        assert!(!drain.drain(Duration::from_millis(200)));
        // The terminal reads again: the queued bytes and a note about the rest.
        for _ in 0..1000 {
            let _ = tx.send(());
        }
        drop(tx);
        assert!(drain.drain(Duration::from_secs(10)));
        let text = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
        assert!(
            text.contains("bytes of guest console output dropped"),
            "{}",
            text.len()
        );
        let xs = text.bytes().filter(|&b| b == b'x').count();
        assert!((CAPACITY / 2..=CAPACITY + CHUNK).contains(&xs), "{xs}");
    }
}
