//! Folded stacks (Brendan Gregg's stackcollapse format): one line per
//! distinct stack, `root;...;leaf COUNT`, root first.
//!
//! Frames: the task's comm first (like stackcollapse-perf.pl), then the
//! callchain outermost first, then the sampled function. Guest kernel frames
//! end in [`KERNEL_SUFFIX`] (`_[k]`, what `inferno-flamegraph --colors=java`
//! and FlameGraph's java palette paint as kernel); a frame that nothing
//! resolves is [`UNKNOWN`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{RecordError, Result};
use crate::symbols::{Symbolizer, KERNEL_SPACE_START};
use crate::GuestSample;

/// Suffix of guest kernel frames.
pub const KERNEL_SUFFIX: &str = "_[k]";
/// An address no symbol covers.
pub const UNKNOWN: &str = "[unknown]";

/// Aggregated folded stacks.
#[derive(Debug, Default, Clone)]
pub struct Folded {
    stacks: HashMap<String, u64>,
    leaves: HashMap<String, u64>,
    total: u64,
    include_comm: bool,
    frame: Vec<String>,
}

/// A frame's text: the symbol (without offset), kernel ones suffixed; ';'
/// and line breaks, which would break the format, become ':' and ' '.
fn frame_name(symbolizer: &Symbolizer, addr: u64, user: bool, comm: Option<&str>) -> String {
    match symbolizer.symbolize(addr, user, comm) {
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
        None => UNKNOWN.to_string(),
    }
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
            if ret == 0 || ret >= crate::perf_data::PERF_CONTEXT_MAX {
                continue;
            }
            let user = ret < KERNEL_SPACE_START;
            frames.push(frame_name(symbolizer, ret - 1, user, comm));
        }
        let leaf = frame_name(symbolizer, s.ip, s.user, comm);
        frames.push(leaf.clone());
        let line = frames.join(";");
        *self.stacks.entry(line).or_insert(0) += 1;
        *self.leaves.entry(leaf).or_insert(0) += 1;
        self.total += 1;
        self.frame = frames;
    }

    /// Number of samples added.
    pub fn total(&self) -> u64 {
        self.total
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
