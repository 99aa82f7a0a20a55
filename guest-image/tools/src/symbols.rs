//! Symbolization in the guest: kernel IPs through /proc/kallsyms, user IPs
//! through the ELF symbol table of the sampled task's executable. Parsing
//! and lookup are the `guest-symbols` crate's, the same the host's
//! `perfvisor record` uses; this module finds the sources (the task's
//! /proc entry, a registered path) and caches them.
//!
//! User executables are static (non-PIE in the guest image), so their
//! symbol addresses are the run-time addresses; for a position-independent
//! executable the load bias is taken from /proc/<pid>/maps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

pub use guest_symbols::SymbolTable as SymTab;
use guest_symbols::{is_kernel_address, ElfKind, ElfSymbols};
use perf_abi::{context, misc};

/// What an unresolvable address is called.
pub const UNKNOWN: &str = "[unknown]";

/// Parses /proc/kallsyms text (see [`guest_symbols::parse_kallsyms`]); lines
/// that are not symbols are passed over, and a restricted file
/// (kptr_restrict: every address 0) gives an empty table.
pub fn parse_kallsyms(text: &str) -> SymTab {
    guest_symbols::parse_kallsyms(text).table
}

/// The function symbols of one executable.
#[derive(Debug, Clone)]
pub struct Image {
    /// Where it came from.
    pub path: PathBuf,
    /// Symbols at link-time addresses.
    pub syms: SymTab,
    /// Position independent (ET_DYN): addresses need the load bias.
    pub pie: bool,
    /// Lowest PT_LOAD virtual address (the bias reference for PIE).
    pub min_vaddr: u64,
}

/// Reads the function symbols of an ELF file (see
/// [`guest_symbols::ElfSymbols::parse`]).
pub fn parse_elf(data: &[u8], path: &Path) -> Result<Image, String> {
    let e = ElfSymbols::parse(data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Image {
        path: path.to_path_buf(),
        syms: e.table,
        pie: e.kind == ElfKind::Dynamic,
        min_vaddr: e.min_vaddr,
    })
}

/// The load bias of a PIE from /proc/<pid>/maps text: the start of the
/// first mapping of `exe` at file offset 0, minus `min_vaddr` rounded down
/// to a page.
pub fn load_bias(maps: &str, exe: &str, min_vaddr: u64) -> Option<u64> {
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut it = line.split_ascii_whitespace();
        let range = it.next()?;
        let _perms = it.next()?;
        let offset = it.next()?;
        let _dev = it.next()?;
        let _inode = it.next()?;
        let path = it.collect::<Vec<_>>().join(" ");
        if path != exe || u64::from_str_radix(offset, 16).ok()? != 0 {
            continue;
        }
        let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
        return Some(start.wrapping_sub(min_vaddr & !0xfff));
    }
    None
}

/// A loaded user image and its bias.
#[derive(Debug, Clone)]
struct Loaded {
    image: Rc<Image>,
    bias: u64,
}

/// Where symbols come from; caches one image per executable (by device and
/// inode) and one lookup per pid.
#[derive(Debug)]
pub struct Symbolizer {
    kernel: SymTab,
    by_pid: HashMap<u32, Option<Loaded>>,
    by_file: HashMap<(u64, u64), Rc<Image>>,
    /// Executables known by path (the spawned workload), used when
    /// /proc/<pid>/exe cannot be read.
    registered: HashMap<u32, PathBuf>,
    proc_root: PathBuf,
    /// Why images could not be read (first few, for the summary).
    pub problems: Vec<String>,
    unknown: Arc<str>,
}

impl Symbolizer {
    /// A symbolizer over a kernel table; user images come from
    /// `<proc_root>/<pid>/exe`.
    pub fn new(kernel: SymTab, proc_root: impl Into<PathBuf>) -> Self {
        Symbolizer {
            kernel,
            by_pid: HashMap::new(),
            by_file: HashMap::new(),
            registered: HashMap::new(),
            proc_root: proc_root.into(),
            problems: Vec::new(),
            unknown: Arc::from(UNKNOWN),
        }
    }

    /// The kernel table.
    pub fn kernel(&self) -> &SymTab {
        &self.kernel
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 8 {
            self.problems.push(p);
        }
    }

    fn load_file(&mut self, path: &Path, display: &Path) -> Option<Rc<Image>> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(img) = self.by_file.get(&key) {
            return Some(img.clone());
        }
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                self.problem(format!("{}: {e}", display.display()));
                return None;
            }
        };
        match parse_elf(&data, display) {
            Ok(img) => {
                let img = Rc::new(img);
                self.by_file.insert(key, img.clone());
                Some(img)
            }
            Err(e) => {
                self.problem(e);
                None
            }
        }
    }

    /// Registers a task's executable by path (the spawned workload), used
    /// when /proc/<pid>/exe is gone by the time its first sample is read.
    /// Call it before the task execs: nothing is read until a sample.
    pub fn register(&mut self, pid: u32, exe: &Path) {
        self.registered.insert(pid, exe.to_path_buf());
    }

    /// Loads the executable of `pid` the first time it is seen (call this
    /// while the task may still be alive): `<proc>/<pid>/exe`, with the
    /// load bias from `<proc>/<pid>/maps` for a PIE; else the registered
    /// path (no bias).
    pub fn note_pid(&mut self, pid: u32) {
        if pid == 0 || self.by_pid.contains_key(&pid) {
            return;
        }
        let dir = self.proc_root.join(pid.to_string());
        let exe_link = dir.join("exe");
        let loaded = match std::fs::read_link(&exe_link) {
            Ok(target) => self.load_file(&exe_link, &target).map(|image| {
                let bias = if image.pie {
                    std::fs::read_to_string(dir.join("maps"))
                        .ok()
                        .and_then(|m| load_bias(&m, &target.to_string_lossy(), image.min_vaddr))
                        .unwrap_or(0)
                } else {
                    0
                };
                Loaded { image, bias }
            }),
            Err(_) => match self.registered.get(&pid).cloned() {
                Some(path) => self
                    .load_file(&path, &path)
                    .map(|image| Loaded { image, bias: 0 }),
                None => None,
            },
        };
        self.by_pid.insert(pid, loaded);
    }

    /// The name of the function at `ip`: kernel when `kernel` says so, else
    /// the task's executable.
    pub fn resolve(&mut self, pid: u32, ip: u64, kernel: bool) -> Arc<str> {
        if kernel {
            return self
                .kernel
                .lookup_name(ip)
                .cloned()
                .unwrap_or(self.unknown.clone());
        }
        self.note_pid(pid);
        match self.by_pid.get(&pid) {
            Some(Some(l)) => l
                .image
                .syms
                .lookup_name(ip.wrapping_sub(l.bias))
                .cloned()
                .unwrap_or(self.unknown.clone()),
            _ => self.unknown.clone(),
        }
    }
}

/// Whether a sample IP is a kernel address, from the record's cpumode
/// (KERNEL / USER), else from the address.
pub fn is_kernel(misc_bits: u16, ip: u64) -> bool {
    match misc_bits & misc::CPUMODE_MASK {
        misc::KERNEL | misc::GUEST_KERNEL => true,
        misc::USER | misc::GUEST_USER => false,
        _ => is_kernel_address(ip),
    }
}

/// Turns a callchain into `(ip, kernel)` frames, leaf first: context
/// markers set the mode of the entries after them; the first entry of each
/// context is the interrupted IP, the others are return addresses and are
/// looked up at `ip - 1` (inside the call instruction).
pub fn callchain_frames(chain: &[u64]) -> Vec<(u64, bool)> {
    let mut out = Vec::with_capacity(chain.len());
    let mut kernel = None;
    let mut first_in_ctx = true;
    for &ip in chain {
        if ip >= context::MAX {
            kernel = match ip {
                context::KERNEL | context::GUEST_KERNEL => Some(true),
                context::USER | context::GUEST_USER => Some(false),
                _ => None,
            };
            first_in_ctx = true;
            continue;
        }
        let k = kernel.unwrap_or(is_kernel_address(ip));
        let at = if first_in_ctx {
            ip
        } else {
            ip.saturating_sub(1)
        };
        first_in_ctx = false;
        out.push((at, k));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_kallsyms_is_empty() {
        let t = parse_kallsyms("0000000000000000 T _stext\n0000000000000000 T do_idle\n");
        assert!(t.is_empty());
        assert_eq!(t.lookup(0xffffffff81000000), None);
    }

    /// The test binary itself is an ELF with a symbol table: a function of
    /// ours must resolve to its own name.
    #[test]
    #[inline(never)]
    fn own_executable() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let img = parse_elf(&data, &exe).unwrap();
        assert!(img.syms.len() > 100);
        let f = marker_function as *const () as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let bias = if img.pie {
            load_bias(&maps, &exe.to_string_lossy(), img.min_vaddr).unwrap()
        } else {
            0
        };
        let name = img.syms.lookup(f - bias).map(|s| s.name.to_string());
        assert!(
            name.as_deref()
                .is_some_and(|n| n.ends_with("marker_function")),
            "{name:?}"
        );
        // Through the Symbolizer and /proc/self.
        let mut s = Symbolizer::new(SymTab::default(), "/proc");
        let me = std::process::id();
        let n = s.resolve(me, f, false);
        assert!(n.ends_with("marker_function"), "{n}");
        assert_eq!(&*s.resolve(me, 0x10, false), UNKNOWN);
        assert_eq!(&*s.resolve(me, 0xffffffff81000000, true), UNKNOWN);
        assert_eq!(&*s.resolve(u32::MAX - 1, f, false), UNKNOWN, "no such pid");
        // Registered by path.
        let mut s = Symbolizer::new(SymTab::default(), "/nonexistent");
        s.register(4242, &exe);
        if !img.pie {
            assert!(s.resolve(4242, f, false).ends_with("marker_function"));
        }
        assert!(parse_elf(b"not an elf", Path::new("x")).is_err());
    }

    #[inline(never)]
    fn marker_function() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn bias_from_maps() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 123 /usr/bin/x y
55d0a0001000-55d0a0002000 r-xp 00001000 fd:01 123 /usr/bin/x y
7f0000000000-7f0000001000 r--p 00000000 fd:01 9 /lib/libc.so.6
";
        assert_eq!(load_bias(maps, "/usr/bin/x y", 0), Some(0x55d0a0000000));
        assert_eq!(
            load_bias(maps, "/lib/libc.so.6", 0x1234),
            Some(0x7f0000000000 - 0x1000)
        );
        assert_eq!(load_bias(maps, "/nope", 0), None);
    }

    #[test]
    fn cpumode() {
        assert!(is_kernel(misc::KERNEL, 0x400000));
        assert!(!is_kernel(misc::USER, 0xffffffff81000000));
        assert!(is_kernel(0, 0xffffffff81000000));
        assert!(!is_kernel(0, 0x400000));
    }

    #[test]
    fn frames() {
        let chain = [
            context::KERNEL,
            0xffffffff81000010,
            0xffffffff81000020,
            context::USER,
            0x401000,
            0x402000,
        ];
        assert_eq!(
            callchain_frames(&chain),
            [
                (0xffffffff81000010, true),
                (0xffffffff8100001f, true),
                (0x401000, false),
                (0x401fff, false)
            ]
        );
        // A user-only chain: the leaf is exact.
        assert_eq!(
            callchain_frames(&[context::USER, 0x401000, 0x402000]),
            [(0x401000, false), (0x401fff, false)]
        );
        assert!(callchain_frames(&[]).is_empty());
    }
}
