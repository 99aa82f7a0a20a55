//! SVG flame graphs through `inferno` (CDDL-1.0, used unmodified as a
//! library; docs/record.md has the licence notes).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use inferno::flamegraph::{self, color::MultiPalette, Options, Palette};

use crate::error::{RecordError, Result};

/// Where folded stacks come from: a folded file or lines in memory.
#[derive(Debug, Clone, Copy)]
pub enum FlameInput<'a> {
    File(&'a Path),
    Lines(&'a [String]),
}

impl<'a> From<&'a Path> for FlameInput<'a> {
    fn from(p: &'a Path) -> Self {
        FlameInput::File(p)
    }
}
impl<'a> From<&'a PathBuf> for FlameInput<'a> {
    fn from(p: &'a PathBuf) -> Self {
        FlameInput::File(p)
    }
}
impl<'a> From<&'a str> for FlameInput<'a> {
    /// A path to a folded file.
    fn from(p: &'a str) -> Self {
        FlameInput::File(Path::new(p))
    }
}
impl<'a> From<&'a [String]> for FlameInput<'a> {
    fn from(l: &'a [String]) -> Self {
        FlameInput::Lines(l)
    }
}
impl<'a> From<&'a Vec<String>> for FlameInput<'a> {
    fn from(l: &'a Vec<String>) -> Self {
        FlameInput::Lines(l)
    }
}

/// Writes an SVG flame graph of folded stacks to `svg_out`. Colours follow
/// the java palette: `_[k]` frames (guest kernel) orange, the rest by
/// language heuristics.
pub fn flamegraph<'a>(
    input: impl Into<FlameInput<'a>>,
    svg_out: impl AsRef<Path>,
    title: &str,
) -> Result<()> {
    let svg_out = svg_out.as_ref();
    let text;
    let lines: Vec<&str> = match input.into() {
        FlameInput::File(p) => {
            text =
                std::fs::read_to_string(p).map_err(|e| RecordError::read("folded stacks", p, e))?;
            text.lines().collect()
        }
        FlameInput::Lines(l) => l.iter().map(String::as_str).collect(),
    };
    if lines.iter().all(|l| l.trim().is_empty()) {
        return Err(RecordError::FlameGraph(
            "no folded stacks: the recording has no samples (record longer, or check that the sampler ran)".into(),
        ));
    }
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.colors = Palette::Multi(MultiPalette::Java);
    opt.count_name = String::from("samples");
    let file = File::create(svg_out).map_err(|e| RecordError::Create {
        path: svg_out.to_path_buf(),
        source: e,
    })?;
    let mut w = BufWriter::new(file);
    flamegraph::from_lines(&mut opt, lines, &mut w).map_err(|e| {
        RecordError::FlameGraph(format!(
            "{e} (are the lines in folded format, 'a;b;c COUNT'?)"
        ))
    })?;
    w.flush().map_err(|e| RecordError::write(svg_out, e))
}
