//! The L1's console as the host reads it: bounded lines, bounded kept text,
//! and terminal control sequences removed.
//!
//! Everything on this path comes from the L1 and, through it, from the
//! guests it runs, so every buffer here has a fixed bound (docs/security.md).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read};

/// The longest console line kept whole. A longer one keeps its first and
/// last half of this, with a note of how much was cut between them, so a
/// marker at the end of a line with no newline before it is still seen.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A line being assembled: at most [`MAX_LINE`] bytes, plus the amortised
/// slack of the tail before it is trimmed.
#[derive(Default)]
struct LongLine {
    head: Vec<u8>,
    tail: Vec<u8>,
    cut: u64,
}

impl LongLine {
    fn push(&mut self, mut bytes: &[u8]) {
        let half = MAX_LINE / 2;
        if self.head.len() < half {
            let n = bytes.len().min(half - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * half {
            let drop = self.tail.len() - half;
            self.tail.drain(..drop);
            self.cut += drop as u64;
        }
    }

    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }

    /// The line (lossy UTF-8), trimmed to [`MAX_LINE`] with a note of the
    /// cut; the buffers are emptied for the next line.
    fn take(&mut self) -> String {
        let half = MAX_LINE / 2;
        if self.tail.len() > half {
            let drop = self.tail.len() - half;
            self.tail.drain(..drop);
            self.cut += drop as u64;
        }
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.cut > 0 {
            s.push_str(&format!(" [sandbox: {} bytes of this line cut] ", self.cut));
        }
        s.push_str(&String::from_utf8_lossy(&self.tail));
        while s.ends_with('\r') {
            s.pop();
        }
        self.head.clear();
        self.tail.clear();
        self.cut = 0;
        s
    }
}

/// Reads `r` line by line until EOF or `f` returns false. Each line is at
/// most about [`MAX_LINE`] bytes (see [`LongLine`]), without its `\n` or
/// trailing `\r`; a last line with no newline is passed too.
pub(crate) fn read_lines(r: impl Read, mut f: impl FnMut(String) -> bool) {
    let mut r = BufReader::with_capacity(MAX_LINE, r);
    let mut line = LongLine::default();
    loop {
        let buf = match r.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (used, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.push(&buf[..i]);
                (i + 1, true)
            }
            None => {
                line.push(buf);
                (buf.len(), false)
            }
        };
        r.consume(used);
        if complete && !f(line.take()) {
            return;
        }
    }
    if !line.is_empty() {
        f(line.take());
    }
}

/// Text kept from the console: the last `cap` bytes or so, whole lines,
/// and a count of what was dropped from the front.
pub(crate) struct KeptText {
    text: String,
    cap: usize,
    dropped: u64,
}

impl KeptText {
    pub(crate) fn new(cap: usize) -> KeptText {
        KeptText {
            text: String::new(),
            cap,
            dropped: 0,
        }
    }

    /// Appends `line` and a newline, dropping whole lines from the front
    /// once the text passes `cap` (down to three quarters of it).
    pub(crate) fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() <= self.cap {
            return;
        }
        let keep = self.cap / 4 * 3;
        // A byte count can fall inside a character (the guest chooses the
        // text): start the search for a line end at the next boundary.
        let mut from = self.text.len() - keep;
        while !self.text.is_char_boundary(from) {
            from += 1;
        }
        let cut = match self.text[from..].find('\n') {
            Some(i) => from + i + 1,
            None => self.text.len(),
        };
        self.text.drain(..cut);
        self.dropped += cut as u64;
    }

    /// Bytes dropped from the front so far.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept text, led by a note when the front was dropped.
    pub(crate) fn into_string(self) -> String {
        if self.dropped == 0 {
            self.text
        } else {
            format!(
                "[sandbox: the first {} bytes were dropped; the last {} follow]\n{}",
                self.dropped,
                self.text.len(),
                self.text
            )
        }
    }
}

/// The last `n` lines.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    n: usize,
}

impl Tail {
    pub(crate) fn new(n: usize) -> Tail {
        Tail {
            lines: VecDeque::with_capacity(n),
            n,
        }
    }

    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == self.n {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    pub(crate) fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Drops `\r` and terminal control sequences from a console line.
pub(crate) fn clean_line(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        read_lines(input, |l| {
            v.push(l);
            true
        });
        v
    }

    /// The cut point is a byte count: in text of multibyte characters it
    /// can fall inside one, which must not panic (the guest chooses the text).
    #[test]
    fn kept_text_cuts_multibyte_text_on_a_character() {
        for cap in [7, 8, 9, 10, 11, 64] {
            let mut k = KeptText::new(cap);
            for _ in 0..20 {
                k.push_line("ééé€€");
                k.push_line("\u{1F600}x");
            }
            let s = k.into_string();
            assert!(s.ends_with("\u{1F600}x\n"), "{s}");
        }
    }

    #[test]
    fn short_lines_pass_whole() {
        assert_eq!(lines_of(b"a\r\nb\n\nc"), vec!["a", "b", "", "c"]);
    }

    #[test]
    fn a_long_line_keeps_its_ends_and_says_what_was_cut() {
        let mut input = b"START".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * MAX_LINE));
        input.extend_from_slice(b"@@END@@\nnext\n");
        let v = lines_of(&input);
        assert_eq!(v.len(), 2);
        assert!(v[0].starts_with("START"));
        assert!(v[0].ends_with("@@END@@"));
        assert!(v[0].len() < MAX_LINE + 100, "{}", v[0].len());
        let cut = (10 * MAX_LINE + 12 - MAX_LINE) as u64;
        assert!(v[0].contains(&format!("[sandbox: {cut} bytes of this line cut]")));
        assert_eq!(v[1], "next");
    }

    #[test]
    fn kept_text_stays_under_its_cap_and_keeps_the_end() {
        let mut k = KeptText::new(1000);
        for i in 0..10_000 {
            k.push_line(&format!("line {i}"));
            assert!(k.text.len() <= 1000);
        }
        assert!(k.dropped() > 0);
        let s = k.into_string();
        assert!(s.starts_with("[sandbox: the first "));
        assert!(s.ends_with("line 9999\n"));
    }

    #[test]
    fn console_lines_lose_control_sequences() {
        assert_eq!(clean_line("\x1b[2J\x1b[01;01Hhello\r"), "hello");
        assert_eq!(clean_line("a\tb\x07"), "a\tb");
        assert_eq!(clean_line("\x1bcplain"), "plain");
    }
}
