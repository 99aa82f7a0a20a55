//! Folded stacks (Brendan Gregg's stackcollapse format): one line per
//! distinct stack, `root;...;leaf COUNT`, root first.
//!
//! Frames: the task's comm first (like stackcollapse-perf.pl), then the
//! callchain outermost first, then the sampled function. Guest kernel frames
//! end in [`KERNEL_SUFFIX`] (`_[k]`, what `inferno-flamegraph --colors=java`
//! and FlameGraph's java palette paint as kernel); a frame that nothing
//! resolves is [`UNKNOWN`], or its raw address when that side (kernel or
//! user) has no symbols at all.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{RecordError, Result};
use crate::symbols::{is_kernel_address, Symbolizer};
use crate::GuestSample;

/// Suffix of guest kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";
/// An address no symbol covers.
pub const UNKNOWN: &str = "[unknown]";
/// Distinct stacks (and distinct leaf functions) kept. The guest chooses
/// its comms and frame chains, so without a cap memory would grow with
/// every new one; samples of further stacks count in [`OTHER`].
pub const MAX_STACKS: usize = 100_000;
/// The one stack (and leaf) that collects samples past [`MAX_STACKS`].
pub const OTHER: &str = "[other]";

/// Aggregated folded stacks.
#[derive(Debug, Default, Clone)]
pub struct Folded {
    stacks: HashMap<String, u64>,
    leaves: HashMap<String, u64>,
    total: u64,
    /// Samples counted in [`OTHER`] because the stack table was full.
    folded_stacks: u64,
    include_comm: bool,
    frame: Vec<String>,
}

/// A frame's text: the symbol (without offset), kernel ones suffixed; ';'
/// and line breaks, which would break the format, become ':' and ' '.
fn frame_name(
    symbolizer: &Symbolizer,
    addr: u64,
    user: bool,
    (comm, start_code): (Option<&str>, Option<u64>),
) -> String {
    match symbolizer.symbolize_in(addr, user, comm, start_code) {
        Some(sym) => {
            let mut name: String = sym
                .name
                .chars()
                .map(|c| match c {
                    ';' => ':',
                    '\n' | '\r' => ' ',
                    c => c,
                })
                .collect();
            if !user {
                name.push_str(KERNEL_SUFFIX);
            }
            name
        }
        // With no symbols at all for this side, the address is the one
        // thing known about the frame: keep it (perf prints it the same way).
        None if !user && symbolizer.kernel_symbol_count() == 0 => {
            format!("{addr:#x}{KERNEL_SUFFIX}")
        }
        None if user && !symbolizer.has_user_binaries() => format!("{addr:#x}"),
        None => UNKNOWN.to_string(),
    }
}

/// Count one under `key`, or under [`OTHER`] when `key` is new and the
/// table is full. False when it went to OTHER.
fn bump(table: &mut HashMap<String, u64>, key: String) -> bool {
    if let Some(n) = table.get_mut(&key) {
        *n += 1;
        return true;
    }
    if table.len() < MAX_STACKS {
        table.insert(key, 1);
        return true;
    }
    *table.entry(OTHER.to_string()).or_insert(0) += 1;
    false
}

impl Folded {
    /// Empty, with the comm as the root frame.
    pub fn new() -> Folded {
        Folded {
            include_comm: true,
            ..Folded::default()
        }
    }

    /// Empty, without the comm frame (stacks start at the outermost function).
    pub fn without_comm() -> Folded {
        Folded::default()
    }

    /// Adds one sample (count 1).
    pub fn add(&mut self, s: &GuestSample<'_>, symbolizer: &Symbolizer) {
        let comm = if s.guest_pid.is_some() { s.comm } else { None };
        let mut frames = std::mem::take(&mut self.frame);
        frames.clear();
        if self.include_comm {
            let root = match comm {
                Some(c) if !c.is_empty() => c.replace([';', ' '], "_"),
                _ if s.guest_pid.is_some() => format!("[pid {}]", s.guest_pid.unwrap_or(0)),
                _ => format!("[vcpu{}]", s.cpu),
            };
            frames.push(root);
        }
        // Callers are return addresses: look up the call instruction (- 1).
        for &ret in s.callchain.iter().rev() {
            if ret == 0 || ret >= perf_abi::context::MAX {
                continue;
            }
            let user = !is_kernel_address(ret);
            frames.push(frame_name(symbolizer, ret - 1, user, (comm, s.start_code)));
        }
        let leaf = frame_name(symbolizer, s.ip, s.user, (comm, s.start_code));
        frames.push(leaf.clone());
        let line = frames.join(";");
        if !bump(&mut self.stacks, line) {
            self.folded_stacks += 1;
        }
        bump(&mut self.leaves, leaf);
        self.total += 1;
        self.frame = frames;
    }

    /// Number of samples added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Samples whose stack was new after [`MAX_STACKS`] distinct ones and
    /// so count in the [`OTHER`] stack.
    pub fn folded_stacks(&self) -> u64 {
        self.folded_stacks
    }

    /// Distinct stacks held (at most [`MAX_STACKS`] + 1).
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// The folded lines, sorted (as stackcollapse tools print them).
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .stacks
            .iter()
            .map(|(stack, n)| format!("{stack} {n}"))
            .collect();
        v.sort();
        v
    }

    /// Writes the folded lines to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| RecordError::Create {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut w = BufWriter::new(file);
        for line in self.lines() {
            writeln!(w, "{line}").map_err(|e| RecordError::write(path, e))?;
        }
        w.flush().map_err(|e| RecordError::write(path, e))
    }

    /// The `n` functions with the most samples of their own (leaf frames),
    /// hottest first, ties by name.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.leaves.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that mints a new comm and a new stack for every sample
    /// keeps the table at the cap; the rest is counted, not dropped.
    #[test]
    fn a_million_unique_comms_and_stacks_stay_under_the_cap() {
        let sym = Symbolizer::new();
        let mut f = Folded::new();
        let n = 1_000_000u64;
        for i in 0..n {
            let comm = format!("t{i}");
            let chain = [0x40_0000 + i * 16, 0x50_0000 + i];
            f.add(
                &GuestSample {
                    cpu: 0,
                    vcpu_tid: 1,
                    guest_pid: Some(i as u32),
                    guest_tid: None,
                    comm: Some(&comm),
                    start_code: None,
                    time_ns: i,
                    ip: 0x60_0000 + i,
                    user: true,
                    callchain: &chain,
                    period: 1,
                },
                &sym,
            );
        }
        assert_eq!(f.total(), n);
        assert!(f.stack_count() <= MAX_STACKS + 1);
        assert_eq!(f.folded_stacks(), n - MAX_STACKS as u64);
        let other = f
            .lines()
            .into_iter()
            .find(|l| l.starts_with(OTHER))
            .expect("an [other] line");
        assert_eq!(other, format!("{OTHER} {}", n - MAX_STACKS as u64));
    }

    /// Without any symbols the frames keep their addresses, kernel ones
    /// marked as kernel: a profile with raw addresses, not "[unknown]".
    #[test]
    fn frames_without_any_symbols_keep_their_addresses() {
        let sym = Symbolizer::new();
        let mut f = Folded::without_comm();
        f.add(
            &GuestSample {
                cpu: 0,
                vcpu_tid: 1,
                guest_pid: None,
                guest_tid: None,
                start_code: None,
                comm: None,
                time_ns: 0,
                ip: 0xffff_ffff_8100_0010,
                user: false,
                callchain: &[0x40_1235],
                period: 1,
            },
            &sym,
        );
        assert_eq!(
            f.lines(),
            vec!["0x401234;0xffffffff81000010_[k] 1".to_string()]
        );
    }
}
