//! Where a recording's guest symbols come from: the guest kernel's
//! System.map (or a copy of the guest's /proc/kallsyms, or an unstripped
//! vmlinux, or the kallsyms tables recovered from the image), and the ELF
//! symbol tables of guest executables: fixed-address ones (their link-time
//! addresses are their run-time addresses) and PIEs, placed by the load
//! bias their process's `mm->start_code` gives. Parsing and lookup are the
//! `guest-symbols` crate's, the same the guest's pvpmu-tool uses.

use std::fs;
use std::path::{Path, PathBuf};

pub use guest_symbols::{is_kernel_address, Symbol};
pub(crate) use guest_symbols::{ExecSegment, SymbolTable};

use crate::error::{RecordError, Result};

/// Parses System.map or /proc/kallsyms text the user named: a line that is
/// not `ADDR TYPE NAME` is an error, and so is a file without text symbols.
pub(crate) fn parse_kallsyms(path: &Path, text: &str) -> Result<SymbolTable> {
    let k = guest_symbols::parse_kallsyms(text);
    if let Some(m) = k.first_malformed {
        return Err(RecordError::BadSymbolMap {
            path: path.to_path_buf(),
            line: m.line,
            text: m.text,
        });
    }
    if k.table.is_empty() {
        return Err(RecordError::NoSymbols {
            path: path.to_path_buf(),
        });
    }
    Ok(k.table)
}

/// What an ELF file gives us: its function symbols and executable segments.
pub(crate) struct ElfInfo {
    pub table: SymbolTable,
    pub exec_segments: Vec<ExecSegment>,
    pub is_exec: bool,
}

/// Reads an ELF file's symbol table (falling back to the dynamic one) and its
/// executable PT_LOAD segments.
pub(crate) fn read_elf(path: &Path, what: &'static str) -> Result<ElfInfo> {
    let data = fs::read(path).map_err(|e| RecordError::read(what, path, e))?;
    let e = guest_symbols::ElfSymbols::parse(&data).map_err(|e| RecordError::BadElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // An empty table is the caller's to judge: a user binary without
    // symbols is refused, a stripped vmlinux only leaves kernel frames raw.
    Ok(ElfInfo {
        table: e.table,
        exec_segments: e.exec_segments,
        is_exec: e.kind == guest_symbols::ElfKind::Executable,
    })
}

/// The guest kernel's symbols from a System.map / kallsyms text file or from
/// an ELF vmlinux (told apart by the ELF magic).
pub(crate) fn read_kernel_symbols(path: &Path) -> Result<SymbolTable> {
    let data = fs::read(path).map_err(|e| RecordError::read("guest kernel symbols", path, e))?;
    if data.starts_with(b"\x7fELF") {
        let table = read_elf(path, "guest vmlinux")?.table;
        if table.is_empty() {
            return Err(RecordError::NoSymbols {
                path: path.to_path_buf(),
            });
        }
        return Ok(table);
    }
    let text = String::from_utf8_lossy(&data);
    parse_kallsyms(path, &text)
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The guest kernel's symbols as a recording uses them (the symbolizer and
/// the perf.data writer decide alike): the first source of `meta` that has
/// text symbols.
pub(crate) struct KernelSymbols {
    pub table: SymbolTable,
    pub path: PathBuf,
    /// A System.map / kallsyms text file (perf can read it as kallsyms).
    pub is_map: bool,
}

/// Tries `meta`'s kernel symbol sources in order: the System.map (or
/// kallsyms copy), the vmlinux, then the kallsyms recovered from the image. A source with no text symbols (Debian's
/// placeholder System.map, a stripped vmlinux) is passed over, and the
/// second value says so: the recording goes on with raw kernel addresses.
/// A source that cannot be read or parsed is an error: the user named it.
pub(crate) fn find_kernel_symbols(
    meta: &crate::RecordMeta,
) -> Result<(Option<KernelSymbols>, Option<String>)> {
    let mut passed_over = Vec::new();
    let sources = [
        (&meta.guest_system_map, true),
        (&meta.guest_vmlinux, false),
        (&meta.guest_image_kallsyms, true),
    ];
    for (path, is_map) in sources {
        let Some(path) = path else { continue };
        match read_kernel_symbols(path) {
            Ok(table) => {
                let found = KernelSymbols {
                    table,
                    path: path.clone(),
                    is_map: is_map && !is_elf(path),
                };
                return Ok((Some(found), None));
            }
            Err(RecordError::NoSymbols { path }) => passed_over.push(path),
            Err(e) => return Err(e),
        }
    }
    let note = if passed_over.is_empty() {
        "no guest kernel symbol source was given".to_string()
    } else {
        let names: Vec<String> = passed_over
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "{} {} no text symbols (a distribution's System.map can be a placeholder; a vmlinux extracted from a bzImage is stripped)",
            names.join(" and "),
            if names.len() == 1 { "has" } else { "have" }
        )
    };
    Ok((None, Some(note)))
}

/// A guest executable: its host path, the guest process name it belongs
/// to (None: any process), its symbols and executable segments.
#[derive(Debug)]
pub(crate) struct UserBinary {
    pub path: PathBuf,
    pub name: Option<String>,
    pub table: SymbolTable,
    pub exec_segments: Vec<ExecSegment>,
    /// Position-independent (ET_DYN): loaded at a bias only the guest knows.
    pub pie: bool,
    /// The lowest `p_vaddr` of its executable segments: what the guest
    /// kernel's `mm->start_code` holds, less the load bias.
    pub code_start: u64,
}

impl UserBinary {
    pub(crate) fn load(path: &Path, name: Option<&str>) -> Result<UserBinary> {
        let info = read_elf(path, "guest user binary")?;
        if info.table.is_empty() {
            return Err(RecordError::BadElf {
                path: path.to_path_buf(),
                reason: "has no function symbols (stripped?); pass the unstripped binary"
                    .to_string(),
            });
        }
        let Some(code_start) = info.exec_segments.iter().map(|s| s.vaddr).min() else {
            return Err(RecordError::BadElf {
                path: path.to_path_buf(),
                reason: "has no executable PT_LOAD segment".to_string(),
            });
        };
        Ok(UserBinary {
            // perf opens the MMAP2's file name: make it absolute and clean.
            path: fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            name: name.map(str::to_string),
            table: info.table,
            exec_segments: info.exec_segments,
            pie: !info.is_exec,
            code_start,
        })
    }

    /// Whether this binary is the one a task called `comm` runs. Guest comms
    /// are cut to 15 bytes (TASK_COMM_LEN - 1).
    pub(crate) fn matches_comm(&self, comm: &str) -> bool {
        match &self.name {
            Some(name) => name == comm || (comm.len() == 15 && name.starts_with(comm)),
            None => false,
        }
    }

    /// What to subtract from a run-time address to get a link-time one, in
    /// a process whose `mm->start_code` is `start_code`: 0 for a
    /// fixed-address executable; for a PIE, `start_code - code_start`
    /// (page aligned, as every load bias), or None when the guest did not
    /// say or said something impossible.
    pub(crate) fn bias(&self, start_code: Option<u64>) -> Option<u64> {
        if !self.pie {
            return Some(0);
        }
        let b = start_code?.checked_sub(self.code_start)?;
        (b & 0xfff == 0).then_some(b)
    }

    /// Whether link-time address `addr` is in an executable segment.
    pub(crate) fn contains(&self, addr: u64) -> bool {
        self.exec_segments
            .iter()
            .any(|s| addr >= s.vaddr && addr - s.vaddr < s.memsz)
    }

    /// The symbol at run-time address `ip` in a process with `start_code`.
    /// With `inside`, only an address in an executable segment counts (a
    /// PIE's neighbours, its libraries and the vDSO, are not its own; an
    /// unnamed binary only claims its own segments).
    fn lookup(&self, ip: u64, start_code: Option<u64>, inside: bool) -> Option<Symbol<'_>> {
        let addr = ip.checked_sub(self.bias(start_code)?)?;
        if (inside || self.pie) && !self.contains(addr) {
            return None;
        }
        self.table.lookup(addr)
    }
}

/// Index of the binary that a task `comm` runs: a binary named after it, else
/// the first binary without a name.
pub(crate) fn pick_binary(binaries: &[UserBinary], comm: Option<&str>) -> Option<usize> {
    if let Some(comm) = comm {
        if let Some(i) = binaries.iter().position(|b| b.matches_comm(comm)) {
            return Some(i);
        }
    }
    binaries.iter().position(|b| b.name.is_none())
}

/// Symbolizes guest addresses: kernel ones through the guest kernel's
/// symbols, user ones through the binary the task runs.
#[derive(Debug, Default)]
pub struct Symbolizer {
    kernel: Option<SymbolTable>,
    kernel_source: Option<PathBuf>,
    /// Why there are no kernel symbols, when there are none.
    kernel_note: Option<String>,
    binaries: Vec<UserBinary>,
}

impl Symbolizer {
    /// An empty symbolizer: everything is unknown until sources are added.
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// Everything `meta` names: the guest kernel's System.map (preferred) or
    /// vmlinux, and the guest binaries.
    /// A kernel source without text symbols is passed over (see
    /// [`Symbolizer::kernel_note`]); one that cannot be read is an error.
    pub fn from_meta(meta: &crate::RecordMeta) -> Result<Symbolizer> {
        let mut s = Symbolizer::new();
        match find_kernel_symbols(meta)? {
            (Some(k), _) => {
                s.kernel = Some(k.table);
                s.kernel_source = Some(k.path);
            }
            (None, note) => s.kernel_note = note,
        }
        for b in &meta.guest_binaries {
            s.add_user_binary(&b.path, b.name.as_deref())?;
        }
        Ok(s)
    }

    /// The guest kernel's symbols: a System.map, a copy of the guest's
    /// /proc/kallsyms, or an unstripped ELF vmlinux.
    pub fn set_kernel_symbols(&mut self, path: impl AsRef<Path>) -> Result<&mut Self> {
        let path = path.as_ref();
        self.kernel = Some(read_kernel_symbols(path)?);
        self.kernel_source = Some(path.to_path_buf());
        Ok(self)
    }

    /// A guest executable (its host copy, unstripped; fixed-address or PIE),
    /// for tasks whose comm is `name` (None: for any task no named binary
    /// matches).
    pub fn add_user_binary(
        &mut self,
        path: impl AsRef<Path>,
        name: Option<&str>,
    ) -> Result<&mut Self> {
        self.binaries.push(UserBinary::load(path.as_ref(), name)?);
        Ok(self)
    }

    /// Why kernel addresses stay raw: set when no kernel source had text
    /// symbols.
    pub fn kernel_note(&self) -> Option<&str> {
        self.kernel_note.as_deref()
    }

    /// Whether any user binary is known (without one, user addresses stay
    /// raw).
    pub fn has_user_binaries(&self) -> bool {
        !self.binaries.is_empty()
    }

    /// Number of guest kernel symbols (0 without a kernel source).
    pub fn kernel_symbol_count(&self) -> usize {
        self.kernel.as_ref().map_or(0, SymbolTable::len)
    }

    /// The symbol containing guest address `ip`: a kernel symbol if `!user`,
    /// else one of the fixed-address binary that task `comm` runs.
    pub fn symbolize(&self, ip: u64, user: bool, comm: Option<&str>) -> Option<Symbol<'_>> {
        self.symbolize_in(ip, user, comm, None)
    }

    /// [`Symbolizer::symbolize`] in a process whose `mm->start_code` is
    /// `start_code` ([`crate::GuestSample::start_code`]), which places a
    /// PIE's symbols.
    pub fn symbolize_in(
        &self,
        ip: u64,
        user: bool,
        comm: Option<&str>,
        start_code: Option<u64>,
    ) -> Option<Symbol<'_>> {
        if !user {
            return self.kernel.as_ref()?.lookup(ip);
        }
        if let Some(comm) = comm {
            if let Some(b) = self.binaries.iter().find(|b| b.matches_comm(comm)) {
                return b.lookup(ip, start_code, false);
            }
        }
        self.binaries
            .iter()
            .filter(|b| b.name.is_none())
            .find_map(|b| b.lookup(ip, start_code, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000010 t helper
ffffffff81000020 T __do_thing
ffffffff81000020 T do_thing
ffffffff81000040 D some_data
ffffffff81000080 T after_data
";

    #[test]
    fn kallsyms_lookup_bounds_and_aliases() {
        let t = parse_kallsyms(Path::new("map"), MAP).expect("parses");
        assert_eq!(
            t.lookup(0xffffffff81000000).map(|s| s.name),
            Some("_stext"),
            "both global, one leading underscore: perf keeps the longer name"
        );
        let s = t.lookup(0xffffffff81000025).expect("inside do_thing");
        assert_eq!((s.name, s.offset), ("do_thing", 5));
        assert_eq!(t.lookup(0xffffffff81000040), None, "data ends do_thing");
        assert_eq!(t.lookup(0xffffffff81000017).map(|s| s.name), Some("helper"));
        assert_eq!(t.lookup(0xffffffff80000000), None);
        assert_eq!(t.text_start(), Some(0xffffffff81000000));
        assert!(t.to_kallsyms().contains("ffffffff81000020 t do_thing\n"));
    }

    #[test]
    fn kallsyms_rejects_garbage() {
        let e = parse_kallsyms(Path::new("x"), "hello world\n").unwrap_err();
        assert!(e.to_string().contains("System.map"), "{e}");
        let e = parse_kallsyms(Path::new("x"), "0000000000001000 D data\n").unwrap_err();
        assert!(matches!(e, RecordError::NoSymbols { .. }), "{e}");
    }

    /// Debian's /boot/System.map-<release> (the real one is in the -dbg
    /// package), byte for byte.
    const DEBIAN_PLACEHOLDER: &str =
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";

    #[test]
    fn a_placeholder_system_map_leaves_kernel_frames_raw_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let placeholder = dir.path().join("System.map-6.1.0-57-amd64");
        fs::write(&placeholder, DEBIAN_PLACEHOLDER).unwrap();
        let mut meta = crate::RecordMeta::new(1, 99);
        meta.guest_system_map = Some(placeholder.clone());
        let s = Symbolizer::from_meta(&meta).expect("a placeholder is not an error");
        assert_eq!(s.kernel_symbol_count(), 0);
        let note = s.kernel_note().expect("the reason is kept");
        assert!(
            note.contains(&placeholder.display().to_string()) && note.contains("no text symbols"),
            "{note}"
        );
        // The perf.data writer decides alike: a file, no kallsyms directory.
        let out = dir.path().join("perf.data");
        crate::PerfDataWriter::create(&out, &meta)
            .unwrap()
            .finish()
            .unwrap();
        assert!(
            out.is_file(),
            "perf.data is a plain file without kernel symbols"
        );

        // The next source is used when it has symbols: the kallsyms
        // recovered from the image (the last source), then a vmlinux.
        let map = dir.path().join("kallsyms");
        fs::write(&map, MAP).unwrap();
        for last in [false, true] {
            let mut meta = meta.clone();
            if last {
                meta.guest_image_kallsyms = Some(map.clone());
            } else {
                meta.guest_vmlinux = Some(map.clone());
            }
            let s = Symbolizer::from_meta(&meta).unwrap();
            assert!(s.kernel_note().is_none());
            assert_eq!(
                s.symbolize(0xffffffff81000025, false, None).map(|x| x.name),
                Some("do_thing")
            );
        }

        // A source that cannot be read is the user's mistake: an error.
        meta.guest_system_map = Some(dir.path().join("missing"));
        let e = Symbolizer::from_meta(&meta).unwrap_err();
        assert!(matches!(e, RecordError::Read { .. }), "{e}");
    }

    #[test]
    fn kallsyms_module_suffix() {
        let t = parse_kallsyms(
            Path::new("k"),
            "ffffffffc0000000 t modfn\t[pvpmu]\nffffffffc0000100 T other\t[pvpmu]\n",
        )
        .expect("parses");
        assert_eq!(
            t.lookup(0xffffffffc0000004).map(|s| s.name),
            Some("modfn [pvpmu]")
        );
    }
}
