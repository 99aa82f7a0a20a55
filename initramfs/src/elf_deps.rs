//! The shared libraries and loader a dynamic ELF executable needs, found
//! the way the dynamic loader finds them, without running it or `ldd`
//! (which a minimal root, like the L1 sandbox's, does not have).
//!
//! For each `DT_NEEDED` name, breadth first, once per name: a name with a
//! `/` is a path; else the needing object's `DT_RPATH` (when it has no
//! `DT_RUNPATH`) and the executable's, then its `DT_RUNPATH` (`$ORIGIN`
//! expanded), then the directories of `/etc/ld.so.conf` (which
//! `ld.so.cache` is built from), then the loader's default directories.
//! A candidate counts only if it is an ELF file of the executable's class
//! and machine, as with the loader. `LD_LIBRARY_PATH` is left out: the
//! guest's loader would not have it. The tests hold the result to `ldd`'s.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

use crate::Error;

/// The loader's own directories (glibc on Debian x86_64: multiarch first).
const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Most libraries one executable may bring (a bound on the walk).
const MAX_LIBRARIES: usize = 4096;

/// What the loader needs to know of one ELF object.
#[derive(Debug, Default)]
struct Dynamic {
    interp: Option<PathBuf>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    class_machine: (u8, u16),
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Libraries {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The libraries and the loader `binary` loads, as absolute host paths (the
/// path each was found at, links not followed), in search order; empty for
/// a static binary or a file that is not ELF.
pub fn library_closure(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let data = std::fs::read(binary).map_err(|e| bad(binary, e.to_string()))?;
    if !data.starts_with(b"\x7fELF") {
        return Ok(Vec::new());
    }
    let exe = parse(binary, &data)?;
    if exe.interp.is_none() && exe.needed.is_empty() {
        return Ok(Vec::new());
    }
    let conf = ld_so_conf_dirs(Path::new("/etc/ld.so.conf"));
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // (object path, its needed names, its search paths)
    let mut queue: VecDeque<(PathBuf, Dynamic)> = VecDeque::new();
    let exe_rpath = if exe.runpath.is_empty() {
        expand(&exe.rpath, binary)
    } else {
        Vec::new()
    };
    let class_machine = exe.class_machine;
    if let Some(interp) = &exe.interp {
        out.push(interp.clone());
    }
    queue.push_back((binary.to_path_buf(), exe));
    while let Some((path, obj)) = queue.pop_front() {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if obj.runpath.is_empty() {
            dirs.extend(expand(&obj.rpath, &path));
            dirs.extend(exe_rpath.iter().cloned());
        }
        dirs.extend(expand(&obj.runpath, &path));
        dirs.extend(conf.iter().cloned());
        dirs.extend(DEFAULT_DIRS.iter().map(PathBuf::from));
        for name in &obj.needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let found = if name.contains('/') {
                Some(PathBuf::from(name)).filter(|p| matches_class(p, class_machine))
            } else {
                dirs.iter()
                    .map(|d| d.join(name))
                    .find(|p| matches_class(p, class_machine))
            };
            let Some(lib) = found else {
                return Err(bad(
                    binary,
                    format!(
                        "missing shared library {name} (needed by {})",
                        path.display()
                    ),
                ));
            };
            if out.len() >= MAX_LIBRARIES {
                return Err(bad(
                    binary,
                    format!("needs more than {MAX_LIBRARIES} libraries"),
                ));
            }
            let data = std::fs::read(&lib).map_err(|e| bad(&lib, e.to_string()))?;
            let dynamic = parse(&lib, &data)?;
            // The loader is already listed under its PT_INTERP name.
            if !out.iter().any(|p| same_file(p, &lib)) {
                out.push(lib.clone());
            }
            queue.push_back((lib, dynamic));
        }
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// `dirs` (colon lists already split) with `$ORIGIN` as `object`'s directory.
fn expand(dirs: &[String], object: &Path) -> Vec<PathBuf> {
    let origin = object
        .parent()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
        .unwrap_or_default();
    let origin = origin.to_string_lossy();
    dirs.iter()
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
        .collect()
}

/// Whether `path` is an ELF file of this class and machine.
fn matches_class(path: &Path, class_machine: (u8, u16)) -> bool {
    let mut head = [0u8; 20];
    if File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_err()
        || !head.starts_with(b"\x7fELF")
    {
        return false;
    }
    let machine = if head[5] == elf::ELFDATA2MSB {
        u16::from_be_bytes([head[18], head[19]])
    } else {
        u16::from_le_bytes([head[18], head[19]])
    };
    (head[4], machine) == class_machine
}

/// The interpreter, needed names and search paths of a 64-bit ELF object,
/// from its program headers (what the loader reads).
fn parse(path: &Path, data: &[u8]) -> Result<Dynamic, Error> {
    let err = |e: object::Error| bad(path, format!("not an ELF object perfvisor can read: {e}"));
    if data.get(4) != Some(&elf::ELFCLASS64) {
        return Err(bad(
            path,
            "a 32-bit ELF file: only 64-bit executables bring their libraries",
        ));
    }
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(err)?;
    let endian = header.endian().map_err(err)?;
    let phdrs = header.program_headers(endian, data).map_err(err)?;
    let mut d = Dynamic {
        class_machine: (elf::ELFCLASS64, header.e_machine(endian)),
        ..Dynamic::default()
    };
    let mut dynamic: &[elf::Dyn64<Endianness>] = &[];
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_INTERP => {
                if let Some(i) = ph.interpreter(endian, data).map_err(err)? {
                    d.interp = Some(PathBuf::from(String::from_utf8_lossy(i).into_owned()));
                }
            }
            elf::PT_DYNAMIC => {
                if let Some(dy) = ph.dynamic(endian, data).map_err(err)? {
                    dynamic = dy;
                }
            }
            _ => {}
        }
    }
    // DT_STRTAB is a virtual address: the PT_LOAD holding it gives its offset.
    let strtab_vaddr = dynamic
        .iter()
        .find(|x| x.d_tag(endian) == u64::from(elf::DT_STRTAB))
        .map(|x| x.d_val(endian));
    let Some(strtab_vaddr) = strtab_vaddr else {
        return Ok(d);
    };
    let strtab_off = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let v = ph.p_vaddr(endian);
            let rel = strtab_vaddr.checked_sub(v)?;
            (rel < ph.p_filesz(endian)).then(|| ph.p_offset(endian).checked_add(rel))?
        })
        .and_then(|o| usize::try_from(o).ok())
        .filter(|&o| o < data.len())
        .ok_or_else(|| bad(path, "its dynamic string table lies outside the file"))?;
    let strings = &data[strtab_off..];
    let string = |off: u64| -> Result<String, Error> {
        let off = usize::try_from(off)
            .ok()
            .filter(|&o| o < strings.len())
            .ok_or_else(|| bad(path, "a dynamic string lies outside the file"))?;
        let s = &strings[off..];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    for x in dynamic {
        let tag = x.d_tag(endian);
        if tag == u64::from(elf::DT_NULL) {
            break;
        }
        if tag == u64::from(elf::DT_NEEDED) {
            d.needed.push(string(x.d_val(endian))?);
        } else if tag == u64::from(elf::DT_RPATH) {
            d.rpath
                .extend(string(x.d_val(endian))?.split(':').map(String::from));
        } else if tag == u64::from(elf::DT_RUNPATH) {
            d.runpath
                .extend(string(x.d_val(endian))?.split(':').map(String::from));
        }
    }
    Ok(d)
}

/// The directories `conf` lists, following `include` lines (globs of one
/// `*` in the file name, as Debian's `include /etc/ld.so.conf.d/*.conf`),
/// at most 16 levels deep.
fn ld_so_conf_dirs(conf: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    conf_into(conf, 0, &mut out);
    out
}

fn conf_into(conf: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(conf) else {
        return;
    };
    if depth > 16 {
        return;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            for file in glob_one(pattern.trim(), conf) {
                conf_into(&file, depth + 1, out);
            }
        } else if line.starts_with('/') {
            for dir in line.split([':', ',', ' ', '\t']).filter(|s| !s.is_empty()) {
                let dir = PathBuf::from(dir);
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
        }
    }
}

/// Files matching `pattern` (relative to `conf`'s directory when not
/// absolute), with at most one `*` in its last component; sorted.
fn glob_one(pattern: &str, conf: &Path) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        conf.parent().unwrap_or(Path::new("/")).join(p)
    };
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let Some((pre, post)) = name.split_once('*') else {
        return vec![p.clone()];
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ldd::ldd_closure;

    /// The closure as a set of files (ldd and we may name the same file
    /// by different links only for the loader).
    fn files(paths: &[PathBuf]) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn matches_ldd_on_this_hosts_binaries() {
        // Binaries we did not build, of every kind this host has: dash or
        // bash, coreutils, Python, QEMU (dozens of libraries), git.
        let mut checked = 0;
        for bin in [
            "/bin/sh",
            "/usr/bin/stat",
            "/usr/bin/python3",
            "/usr/bin/qemu-system-x86_64",
            "/usr/bin/git",
            "/usr/bin/perf",
            "/usr/bin/gdb",
        ] {
            let bin = Path::new(bin);
            if !bin.exists() {
                continue;
            }
            let ours = library_closure(bin).unwrap();
            let theirs = ldd_closure(bin).unwrap();
            assert_eq!(files(&ours), files(&theirs), "{}", bin.display());
            // The loader under its PT_INTERP name, as ldd prints it.
            assert!(
                ours.iter().any(|p| p.starts_with("/lib64")),
                "{}: {ours:?}",
                bin.display()
            );
            checked += 1;
        }
        assert!(checked >= 3, "too few host binaries to compare with ldd");
    }

    #[test]
    fn static_and_non_elf_files_need_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(library_closure(&f).unwrap().is_empty());
        assert!(library_closure(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn hostile_elf_headers_are_errors_not_panics() {
        let base = std::fs::read("/bin/sh").unwrap();
        // Truncations and byte flips of a real executable's first pages.
        for cut in [16usize, 63, 64, 100, 500, 4096] {
            let _ = parse(Path::new("t"), &base[..cut.min(base.len())]);
        }
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut d = base[..base.len().min(16384)].to_vec();
            for _ in 0..8 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng as usize) % d.len();
                d[i] = (rng >> 32) as u8;
            }
            let _ = parse(Path::new("t"), &d);
        }
    }

    #[test]
    fn conf_includes_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/b.conf"), "/opt/b # comment\n").unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "/opt/a:/opt/a2\n").unwrap();
        std::fs::write(d.join("conf.d/skip.txt"), "/opt/no\n").unwrap();
        std::fs::write(
            d.join("ld.so.conf"),
            format!("include {}/conf.d/*.conf\n/usr/local/lib\n", d.display()),
        )
        .unwrap();
        let dirs = ld_so_conf_dirs(&d.join("ld.so.conf"));
        let want: Vec<PathBuf> = ["/opt/a", "/opt/a2", "/opt/b", "/usr/local/lib"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
        // A conf that includes itself ends.
        std::fs::write(d.join("loop.conf"), "include loop.conf\n/x\n").unwrap();
        assert!(ld_so_conf_dirs(&d.join("loop.conf")).contains(&PathBuf::from("/x")));
    }
}
