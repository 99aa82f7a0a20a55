//! What of the guest's console output may reach the user's terminal.
//!
//! The guest writes any bytes it likes to the serial port. Terminal string
//! sequences (OSC, DCS, APC, PM, SOS: window titles, clipboard writes,
//! hyperlinks, terminal-specific commands) and 8-bit C1 controls are never
//! passed on; nor is the window-operations CSI (`CSI ... t`), which can make
//! a terminal report its title back as input. On a terminal the remaining
//! CSI and two-byte escapes (colours, cursor movement: what a guest shell's
//! line editing needs) pass; anywhere else (a pipe, a CI log) every escape
//! sequence is removed, as the sandbox path does. Text passes as valid
//! UTF-8 only (bytes that are not, including raw 0x80..=0x9f, which an
//! 8-bit terminal takes as C1, are dropped); C0 controls other than ESC
//! pass unchanged.
//!
//! The filter is a byte state machine that holds at most one CSI sequence
//! ([`MAX_CSI`] bytes; a longer one is dropped whole), so its memory is
//! bounded whatever the guest writes.

use std::io::{self, Write};

/// Longest CSI sequence passed on; longer ones are dropped.
pub const MAX_CSI: usize = 64;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// How much the filter lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The output is a terminal: pass CSI and two-byte escapes.
    Terminal,
    /// The output is a file or pipe: remove every escape sequence.
    Plain,
}

impl Mode {
    /// [`Mode::Terminal`] when this process's stdout is a terminal.
    pub fn for_stdout() -> Mode {
        use std::io::IsTerminal;
        if io::stdout().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    /// Inside a multibyte UTF-8 character (held in `ch` until complete).
    Utf8,
    Esc,
    /// ESC followed by intermediates (0x20..=0x2f), until the final byte.
    EscIntermediate,
    Csi,
    /// A CSI longer than [`MAX_CSI`]: swallowed to its final byte.
    CsiTooLong,
    /// Inside a string sequence, until BEL or ST.
    Str,
    /// ESC inside a string sequence: `\` ends it.
    StrEsc,
    /// 0xc2 inside a string sequence: 0x9c (ST) ends it.
    StrC2,
}

/// A writer that filters guest console bytes on their way to `inner`.
pub struct TermFilter<W: Write> {
    inner: W,
    mode: Mode,
    state: State,
    /// The escape or CSI sequence being collected (at most MAX_CSI bytes).
    seq: Vec<u8>,
    /// What one write passes on, reused: the serial device writes a byte
    /// at a time.
    out: Vec<u8>,
    /// The UTF-8 character being collected, and its full length.
    ch: Vec<u8>,
    ch_len: usize,
    /// Bytes removed so far.
    dropped: u64,
}

impl<W: Write> TermFilter<W> {
    pub fn new(inner: W, mode: Mode) -> Self {
        TermFilter {
            inner,
            mode,
            state: State::Ground,
            seq: Vec::with_capacity(MAX_CSI),
            out: Vec::new(),
            ch: Vec::with_capacity(4),
            ch_len: 0,
            dropped: 0,
        }
    }

    /// Bytes the filter has removed so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn begin_char(&mut self, lead: u8, len: usize) {
        self.ch.clear();
        self.ch.push(lead);
        self.ch_len = len;
        self.state = State::Utf8;
    }

    /// Whether `b` is a valid next byte of the character in `ch` (no
    /// overlong forms, which a lenient terminal could decode as C1).
    fn continues(&self, b: u8) -> bool {
        let range = match (self.ch.len(), self.ch[0]) {
            (1, 0xe0) => 0xa0..=0xbf,
            (1, 0xed) => 0x80..=0x9f,
            (1, 0xf0) => 0x90..=0xbf,
            (1, 0xf4) => 0x80..=0x8f,
            _ => 0x80..=0xbf,
        };
        range.contains(&b)
    }

    fn string_start(b: u8) -> bool {
        matches!(b, b']' | b'P' | b'X' | b'^' | b'_')
    }

    /// The C1 control U+0080..U+009F (`b` is its second UTF-8 byte).
    fn c1(&mut self, b: u8) {
        self.dropped += 2;
        self.state = match b {
            0x9b => {
                // 8-bit CSI: swallowed, as a terminal that honours C1
                // would act on it.
                self.seq.clear();
                State::CsiTooLong
            }
            0x90 | 0x98 | 0x9d | 0x9e | 0x9f => State::Str,
            _ => State::Ground,
        };
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match b {
                ESC => {
                    self.seq.clear();
                    self.seq.push(b);
                    self.state = State::Esc;
                }
                0x00..=0x7f => out.push(b),
                0xc2..=0xdf => self.begin_char(b, 2),
                0xe0..=0xef => self.begin_char(b, 3),
                0xf0..=0xf4 => self.begin_char(b, 4),
                // A stray continuation byte or a byte that never starts a
                // character: not UTF-8, and on an 8-bit terminal 0x80..=0x9f
                // would be a C1 control.
                _ => self.dropped += 1,
            },
            State::Utf8 => {
                if self.continues(b) {
                    self.ch.push(b);
                    if self.ch.len() == self.ch_len {
                        if self.ch[0] == 0xc2 && self.ch[1] <= 0x9f {
                            let c1 = self.ch[1];
                            self.ch.clear();
                            self.c1(c1);
                        } else {
                            out.extend_from_slice(&self.ch);
                            self.ch.clear();
                            self.state = State::Ground;
                        }
                    }
                } else {
                    self.dropped += self.ch.len() as u64;
                    self.ch.clear();
                    self.state = State::Ground;
                    self.step(b, out);
                }
            }
            State::Esc => {
                self.seq.push(b);
                if b == b'[' {
                    self.state = State::Csi;
                } else if Self::string_start(b) {
                    self.dropped += 2;
                    self.state = State::Str;
                } else if (0x20..=0x2f).contains(&b) {
                    self.state = State::EscIntermediate;
                } else if (0x30..=0x7e).contains(&b) {
                    self.finish(out, true);
                } else {
                    self.abort(b, out);
                }
            }
            State::EscIntermediate => {
                if (0x20..=0x2f).contains(&b) {
                    if self.seq.len() < MAX_CSI {
                        self.seq.push(b);
                    } else {
                        self.dropped += 1;
                    }
                } else if (0x30..=0x7e).contains(&b) {
                    self.seq.push(b);
                    self.finish(out, true);
                } else {
                    self.abort(b, out);
                }
            }
            State::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.seq.push(b);
                    // Window operations can report the title as input.
                    self.finish(out, b != b't');
                } else if !(0x20..=0x3f).contains(&b) {
                    self.abort(b, out);
                } else if self.seq.len() >= MAX_CSI {
                    self.dropped += self.seq.len() as u64 + 1;
                    self.seq.clear();
                    self.state = State::CsiTooLong;
                } else {
                    self.seq.push(b);
                }
            }
            State::CsiTooLong => {
                self.dropped += 1;
                if (0x40..=0x7e).contains(&b) {
                    self.state = State::Ground;
                }
            }
            State::Str => {
                self.dropped += 1;
                self.state = match b {
                    BEL => State::Ground,
                    ESC => State::StrEsc,
                    0xc2 => State::StrC2,
                    _ => State::Str,
                };
            }
            State::StrEsc => {
                self.dropped += 1;
                self.state = if b == b'\\' {
                    State::Ground
                } else {
                    State::Str
                };
            }
            State::StrC2 => {
                self.dropped += 1;
                self.state = if b == 0x9c { State::Ground } else { State::Str };
            }
        }
    }

    /// A byte that cannot continue the sequence being collected: the
    /// sequence is dropped and the byte is taken afresh.
    fn abort(&mut self, b: u8, out: &mut Vec<u8>) {
        self.dropped += self.seq.len() as u64;
        self.seq.clear();
        self.state = State::Ground;
        self.step(b, out);
    }

    /// A complete escape or CSI sequence: passed on a terminal when `ok`.
    fn finish(&mut self, out: &mut Vec<u8>, ok: bool) {
        if ok && self.mode == Mode::Terminal {
            out.extend_from_slice(&self.seq);
        } else {
            self.dropped += self.seq.len() as u64;
        }
        self.seq.clear();
        self.state = State::Ground;
    }
}

impl<W: Write> Write for TermFilter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for &b in buf {
            self.step(b, &mut out);
        }
        // Bytes held in a sequence or character reach `inner` with the
        // write that completes them.
        let done = if out.is_empty() {
            Ok(())
        } else {
            self.inner.write_all(&out)
        };
        self.out = out;
        done.map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, input: &[u8]) -> Vec<u8> {
        let mut f = TermFilter::new(Vec::new(), mode);
        f.write_all(input).unwrap();
        f.inner
    }

    /// Byte by byte: the state survives write boundaries.
    fn run_split(mode: Mode, input: &[u8]) -> Vec<u8> {
        let mut f = TermFilter::new(Vec::new(), mode);
        for b in input {
            f.write_all(std::slice::from_ref(b)).unwrap();
        }
        f.inner
    }

    #[test]
    fn text_and_c0_controls_pass() {
        let s = "héllo\tworld\r\n\x07\x08 €\u{1F600}\n".as_bytes();
        for mode in [Mode::Terminal, Mode::Plain] {
            assert_eq!(run(mode, s), s);
            assert_eq!(run_split(mode, s), s);
        }
    }

    #[test]
    fn colours_and_cursor_pass_on_a_terminal_only() {
        let s = b"\x1b[1;31mred\x1b[0m \x1b[2K\x1b[10D\x1b7\x1b(B.";
        assert_eq!(run(Mode::Terminal, s), s);
        assert_eq!(run_split(Mode::Terminal, s), s);
        assert_eq!(run(Mode::Plain, s), b"red .");
    }

    #[test]
    fn string_sequences_and_c1_never_pass() {
        for mode in [Mode::Terminal, Mode::Plain] {
            // Title (BEL-ended), clipboard write (ST-ended), DCS, APC,
            // 8-bit OSC with 8-bit ST, 8-bit CSI, window-ops CSI.
            let s = "a\x1b]0;pwned\x07b\x1b]52;c;ZWNobw==\x1b\\c\x1bPq#0\x1b\\d\x1b_x\x07e\
                     \u{9d}0;t\u{9c}f\u{9b}31mg\x1b[21th"
                .as_bytes();
            assert_eq!(run(mode, s), b"abcdefgh", "{mode:?}");
            assert_eq!(run_split(mode, s), b"abcdefgh", "{mode:?}");
        }
    }

    #[test]
    fn hostile_sequences_stay_bounded() {
        let mut f = TermFilter::new(Vec::new(), Mode::Terminal);
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 1 << 20));
        long.extend_from_slice(b"mX");
        f.write_all(&long).unwrap();
        assert_eq!(f.inner, b"X");
        assert!(f.seq.capacity() <= MAX_CSI * 2);
        // An unterminated OSC swallows without growing anything.
        f.write_all(b"\x1b]0;").unwrap();
        f.write_all(&vec![b'x'; 1 << 20]).unwrap();
        f.write_all(b"\x07ok").unwrap();
        assert_eq!(f.inner, b"Xok");
        assert!(f.dropped() > 2 << 20);
    }

    /// Found by the legacy_bus fuzz target: ESC then a UTF-8 lead byte
    /// used to take the lead byte as the escape's final, and the C1 byte
    /// after it then passed.
    #[test]
    fn an_escape_cut_by_a_non_ascii_byte_lets_no_c1_through() {
        for mode in [Mode::Terminal, Mode::Plain] {
            assert_eq!(
                run(mode, b"\x00\x1b\x00\x1b\xc2\x8c\x00\x05$"),
                b"\x00\x00\x00\x05$"
            );
            assert_eq!(run(mode, b"\x1b(\xc2\x9b1mx"), b"x");
            assert_eq!(run(mode, b"\x1b\xc3\xa9"), "é".as_bytes());
            // A lone lead byte, then an aborted escape, then a C1 byte.
            assert_eq!(run(mode, b"\xc2\x1b\x05\xc2\x1b\x88"), b"\x05");
            // Raw C1 bytes and an overlong encoding of U+009B.
            assert_eq!(run(mode, b"a\x9b1mb\xe0\x82\x9bc\xff"), b"a1mbc");
        }
    }

    #[test]
    fn a_broken_csi_keeps_the_byte_that_broke_it() {
        assert_eq!(run(Mode::Terminal, b"\x1b[12\nnext"), b"\nnext");
        assert_eq!(run(Mode::Plain, b"\xc2x\xc2"), b"x");
    }
}
