//! Symbolization: kernel IPs through /proc/kallsyms, user IPs through the
//! ELF symbol table of the sampled task's executable.
//!
//! Both tables are sorted once and searched with a binary search. User
//! executables are static (non-PIE in the guest image), so their symbol
//! addresses are the run-time addresses; for a position-independent
//! executable the load bias is taken from /proc/<pid>/maps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use devices::perf_ring::abi::{context, misc};

/// What an unresolvable address is called.
pub const UNKNOWN: &str = "[unknown]";

/// Kernel addresses start here on x86-64 (the upper half).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Without a size, an address this far past the last symbol is unknown.
const LAST_SYMBOL_SLACK: u64 = 1 << 20;

/// A sorted symbol table.
#[derive(Debug, Default, Clone)]
pub struct SymTab {
    /// Start addresses, ascending.
    starts: Vec<u64>,
    /// Sizes (0 = unknown: the symbol ends where the next one starts).
    sizes: Vec<u64>,
    names: Vec<Rc<str>>,
}

impl SymTab {
    /// Builds a table from `(start, size, name)`; for equal starts the first
    /// sized, non-local-looking name wins.
    pub fn new(mut entries: Vec<(u64, u64, String)>) -> SymTab {
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by_key(|e| e.0);
        let mut t = SymTab::default();
        for (start, size, name) in entries {
            t.starts.push(start);
            t.sizes.push(size);
            t.names.push(Rc::from(name));
        }
        t
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// No symbols.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The symbol containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Rc<str>> {
        let i = self.starts.partition_point(|s| *s <= addr).checked_sub(1)?;
        let start = *self.starts.get(i)?;
        let size = *self.sizes.get(i)?;
        let inside = if size != 0 {
            addr - start < size
        } else {
            match self.starts.get(i + 1) {
                Some(next) => addr < *next,
                None => addr - start < LAST_SYMBOL_SLACK,
            }
        };
        if inside {
            self.names.get(i)
        } else {
            None
        }
    }
}

/// Parses /proc/kallsyms text: `ADDR TYPE NAME [\[MODULE\]]`, keeping text
/// symbols (t, T, w, W). Lines with address 0 (kptr_restrict) are skipped,
/// so a restricted file gives an empty table.
pub fn parse_kallsyms(text: &str) -> SymTab {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !matches!(ty, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if addr == 0 {
            continue;
        }
        v.push((addr, 0, name.to_string()));
    }
    SymTab::new(v)
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

/// Reads the function symbols of an ELF file (the .symtab, or the dynamic
/// symbols when stripped). Rust names are demangled without their hash.
pub fn parse_elf(data: &[u8], path: &Path) -> Result<Image, String> {
    use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol, SymbolKind};
    let file = object::File::parse(data).map_err(|e| format!("{}: {e}", path.display()))?;
    fn collect<'d: 'f, 'f>(
        syms: impl Iterator<Item = object::Symbol<'d, 'f>>,
    ) -> Vec<(u64, u64, String)> {
        syms.filter(|s| s.kind() == SymbolKind::Text && s.address() != 0 && !s.is_undefined())
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                let name = format!("{:#}", rustc_demangle::demangle(name));
                Some((s.address(), s.size(), name))
            })
            .collect()
    }
    let mut v = collect(file.symbols());
    if v.is_empty() {
        v = collect(file.dynamic_symbols());
    }
    let min_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0);
    Ok(Image {
        path: path.to_path_buf(),
        syms: SymTab::new(v),
        pie: file.kind() == ObjectKind::Dynamic,
        min_vaddr,
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
    unknown: Rc<str>,
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
            unknown: Rc::from(UNKNOWN),
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
    pub fn resolve(&mut self, pid: u32, ip: u64, kernel: bool) -> Rc<str> {
        if kernel {
            return self
                .kernel
                .lookup(ip)
                .cloned()
                .unwrap_or(self.unknown.clone());
        }
        self.note_pid(pid);
        match self.by_pid.get(&pid) {
            Some(Some(l)) => l
                .image
                .syms
                .lookup(ip.wrapping_sub(l.bias))
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
        _ => ip >= KERNEL_START,
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
        let k = kernel.unwrap_or(ip >= KERNEL_START);
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

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 D some_data
ffffffff81002000 T do_idle
ffffffff81003000 W weak_fn
ffffffffa0000000 t pvpmu_irq\t[pvpmu]
ffffffffa0000100 T pvpmu_drain\t[pvpmu]
garbage line
zzzz T bad_addr
";

    #[test]
    fn kallsyms() {
        let t = parse_kallsyms(KALLSYMS);
        assert_eq!(t.len(), 6, "data, duplicates and junk dropped");
        let name = |a: u64| t.lookup(a).map(|s| s.to_string());
        assert_eq!(name(0xffffffff81000000).as_deref(), Some("_stext"));
        assert_eq!(name(0xffffffff810000ff).as_deref(), Some("_stext"));
        assert_eq!(
            name(0xffffffff81000100).as_deref(),
            Some("secondary_startup_64")
        );
        // Data symbols are not kept: text runs to the next text symbol.
        assert_eq!(
            name(0xffffffff81001800).as_deref(),
            Some("secondary_startup_64")
        );
        assert_eq!(name(0xffffffff81002abc).as_deref(), Some("do_idle"));
        assert_eq!(name(0xffffffff81003000).as_deref(), Some("weak_fn"));
        assert_eq!(name(0xffffffffa0000050).as_deref(), Some("pvpmu_irq"));
        assert_eq!(name(0xffffffffa0000150).as_deref(), Some("pvpmu_drain"));
        assert_eq!(name(0xffffffffa0000100 + LAST_SYMBOL_SLACK), None);
        assert_eq!(name(0x1000), None);
    }

    #[test]
    fn restricted_kallsyms_is_empty() {
        let t = parse_kallsyms("0000000000000000 T _stext\n0000000000000000 T do_idle\n");
        assert!(t.is_empty());
        assert_eq!(t.lookup(0xffffffff81000000), None);
    }

    #[test]
    fn sized_symbols() {
        let t = SymTab::new(vec![
            (0x1000, 0x10, "a".into()),
            (0x1000, 0, "a_alias".into()),
            (0x1040, 0x20, "b".into()),
            (0x2000, 0, "c".into()),
        ]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(0x1000).map(|s| &**s), Some("a"));
        assert_eq!(t.lookup(0x100f).map(|s| &**s), Some("a"));
        assert_eq!(t.lookup(0x1010), None, "past a's size");
        assert_eq!(t.lookup(0x105f).map(|s| &**s), Some("b"));
        assert_eq!(t.lookup(0x1060), None);
        assert_eq!(t.lookup(0x2fff).map(|s| &**s), Some("c"));
        assert_eq!(t.lookup(0xfff), None);
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
        let name = img.syms.lookup(f - bias).map(|s| s.to_string());
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
