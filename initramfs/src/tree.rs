//! [`Packer`]: host files, trees and executables into a [`CpioWriter`].
//!
//! Two ways a host file reaches the archive:
//! - at a path the caller chooses ([`Packer::add`]): a file keeps its mode,
//!   a directory is copied whole with its modes and symlinks;
//! - at its own host path, for the libraries and loader an executable needs
//!   ([`Packer::add_host_path`]): every component that is a symbolic link on
//!   this host is added as the same link (after what it points to), so the
//!   archive holds the host's layout. Linux unpacks an initramfs over what
//!   an earlier archive left, and replaces an entry only when the types
//!   differ and the old one can go: a link named `lib` over a guest's
//!   non-empty `lib` directory fails harmlessly and the files go into that
//!   directory; over a guest's own `lib -> usr/lib` link it is the same
//!   link again. A real directory entry over a guest's link would remove
//!   that link, so the host's links are kept, not flattened.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::elf_deps::library_closure;
use crate::newc::CpioWriter;
use crate::{io_err, Error};

/// Deepest chain of symbolic links followed on the host (Linux's own limit).
const MAX_SYMLINK_DEPTH: u32 = 40;

/// What a [`Packer`] added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Shared libraries and loaders brought in for executables.
    pub libraries: u64,
    /// Special files (devices, sockets, fifos) left out.
    pub skipped: u64,
}

/// Adds host files to a newc archive (see the module docs).
pub struct Packer<W: Write> {
    w: CpioWriter<W>,
    /// Most archive bytes; [`Error::TooLarge`] past it.
    limit: u64,
    /// Host paths already mirrored by [`Packer::add_host_path`].
    mirrored: HashSet<PathBuf>,
    stats: PackStats,
}

impl<W: Write> Packer<W> {
    /// A packer writing to `out`, refusing to write more than `limit` bytes.
    pub fn new(out: W, limit: u64) -> Self {
        Packer {
            w: CpioWriter::new(out),
            limit,
            mirrored: HashSet::new(),
            stats: PackStats::default(),
        }
    }

    /// The writer, for entries of the caller's own.
    pub fn writer(&mut self) -> &mut CpioWriter<W> {
        &mut self.w
    }

    /// What was added so far.
    pub fn stats(&self) -> PackStats {
        self.stats
    }

    /// Writes the trailer and returns the output.
    pub fn finish(self) -> Result<W, Error> {
        self.w.finish().map_err(io_err("finishing the archive"))
    }

    fn check_size(&self, path: &Path) -> Result<(), Error> {
        if self.w.len() > self.limit {
            return Err(Error::TooLarge {
                limit: self.limit,
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Adds host `host` as `guest`. A symbolic link named directly is
    /// followed (as `cp` does); inside a directory, links stay links. A
    /// directory is copied recursively with its modes. With `libraries`,
    /// every dynamic ELF file added also brings the libraries and loader
    /// the loader resolves for it on this host, each at its host path
    /// ([`Packer::add_host_path`]).
    pub fn add(&mut self, host: &Path, guest: &str, libraries: bool) -> Result<(), Error> {
        let meta = fs::metadata(host).map_err(io_err(format!("reading {}", host.display())))?;
        if meta.is_dir() {
            self.add_tree(host, guest, libraries, 0)
        } else {
            self.add_file(host, guest, &meta, libraries, true)
        }
    }

    fn add_file(
        &mut self,
        host: &Path,
        guest: &str,
        meta: &fs::Metadata,
        libraries: bool,
        named: bool,
    ) -> Result<(), Error> {
        if !meta.is_file() {
            log::debug!("initramfs: skipping special file {}", host.display());
            self.stats.skipped += 1;
            return Ok(());
        }
        self.w
            .file_from(guest, None, host)
            .map_err(io_err(format!("packing {} as {guest}", host.display())))?;
        self.stats.files += 1;
        self.check_size(host)?;
        if libraries && is_elf(host) {
            match library_closure(host) {
                Ok(libs) => {
                    for lib in libs {
                        self.add_library(&lib)?;
                    }
                }
                // A file named on its own must run; one deep in a tree may
                // be a library for another system, a test fixture, ...
                Err(e) if named => return Err(e),
                Err(e) => log::warn!("{e}; added without its libraries"),
            }
        }
        Ok(())
    }

    fn add_tree(
        &mut self,
        host: &Path,
        guest: &str,
        libraries: bool,
        depth: u32,
    ) -> Result<(), Error> {
        let ctx = || io_err(format!("packing {} as {guest}", host.display()));
        let meta = fs::symlink_metadata(host).map_err(ctx())?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(host).map_err(ctx())?;
            self.w
                .symlink(guest, &target.to_string_lossy())
                .map_err(ctx())?;
            self.stats.symlinks += 1;
        } else if ft.is_dir() {
            if depth > 4096 {
                return Err(Error::Io {
                    context: format!("packing {}", host.display()),
                    source: std::io::Error::other("directories nest too deep"),
                });
            }
            // "/" (the guest's root) exists already.
            if !guest.trim_matches('/').is_empty() {
                self.w
                    .dir(guest, meta.permissions().mode())
                    .map_err(ctx())?;
                self.stats.dirs += 1;
            }
            let mut entries: Vec<_> = fs::read_dir(host)
                .map_err(ctx())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(ctx())?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let g = format!(
                    "{}/{}",
                    guest.trim_end_matches('/'),
                    e.file_name().to_string_lossy()
                );
                self.add_tree(&e.path(), &g, libraries, depth + 1)?;
            }
        } else {
            self.add_file(host, guest, &meta, libraries, false)?;
        }
        Ok(())
    }

    /// A library or loader at its own host path, symlinked components kept.
    fn add_library(&mut self, lib: &Path) -> Result<(), Error> {
        let before = self.w.len();
        self.add_host_path(lib)?;
        if self.w.len() > before {
            self.stats.libraries += 1;
        }
        Ok(())
    }

    /// Adds host file `path` (absolute) at the same path: each parent
    /// component as on this host (a directory with its mode, or a symbolic
    /// link with its target, which is added first), the file itself with
    /// its contents (a link at the end is followed: the loader opens the
    /// name it resolved). Adding a path twice adds it once.
    pub fn add_host_path(&mut self, path: &Path) -> Result<(), Error> {
        self.mirror(path, true, 0)
    }

    fn mirror(&mut self, path: &Path, leaf_file: bool, depth: u32) -> Result<(), Error> {
        if depth > MAX_SYMLINK_DEPTH {
            return Err(Error::SymlinkLoop {
                path: path.to_path_buf(),
                limit: MAX_SYMLINK_DEPTH,
            });
        }
        let path = lexical(path);
        if !self.mirrored.insert(path.clone()) {
            return Ok(());
        }
        let parts: Vec<_> = path.components().collect();
        let mut prefix = PathBuf::from("/");
        for (i, comp) in parts.iter().enumerate() {
            let Component::Normal(name) = comp else {
                continue;
            };
            prefix.push(name);
            let last = i + 1 == parts.len();
            let guest = prefix.to_string_lossy().into_owned();
            let ctx = || io_err(format!("packing {}", prefix.display()));
            let meta = fs::symlink_metadata(&prefix).map_err(ctx())?;
            if meta.file_type().is_symlink() && !(last && leaf_file) {
                let target = fs::read_link(&prefix).map_err(ctx())?;
                let parent = prefix.parent().unwrap_or(Path::new("/"));
                let resolved = if target.is_absolute() {
                    target.clone()
                } else {
                    fs::canonicalize(parent).map_err(ctx())?.join(&target)
                };
                // What the link names, first, so the link never dangles
                // in a guest that has neither.
                self.mirror(&resolved, false, depth + 1)?;
                if !self.w.contains(&guest) {
                    self.w
                        .symlink(&guest, &target.to_string_lossy())
                        .map_err(ctx())?;
                    self.stats.symlinks += 1;
                }
            } else if last && leaf_file {
                let meta = fs::metadata(&prefix).map_err(ctx())?;
                self.add_file(&prefix, &guest, &meta, false, true)?;
            } else if meta.is_dir() {
                if !self.w.contains(&guest) {
                    self.w
                        .dir(&guest, meta.permissions().mode())
                        .map_err(ctx())?;
                    self.stats.dirs += 1;
                }
            } else {
                // A file in the middle of a path: nothing to mirror.
                return Ok(());
            }
        }
        Ok(())
    }
}

/// `path` with `.` and `..` resolved lexically (after a symlink's target
/// was joined to its canonical parent, so `..` means what it says).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::newc::tests::{parse, Entry};
    use std::os::unix::fs::symlink;

    const S_IFMT: u32 = 0o170_000;
    const S_IFDIR: u32 = 0o040_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFLNK: u32 = 0o120_000;

    fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", names(entries)))
    }

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.0.as_str()).collect()
    }

    #[test]
    fn a_tree_keeps_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("sub/secret"), "x").unwrap();
        fs::set_permissions(root.join("sub/secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o711)).unwrap();
        symlink("sub/secret", root.join("link")).unwrap();
        symlink("/nowhere", root.join("dangling")).unwrap();
        let mut p = Packer::new(Vec::new(), 1 << 20);
        p.add(&root, "/opt/t", false).unwrap();
        assert_eq!(
            p.stats(),
            PackStats {
                files: 2,
                dirs: 2,
                symlinks: 2,
                ..PackStats::default()
            }
        );
        let e = parse(&p.finish().unwrap());
        assert_eq!(find(&e, "opt").1, S_IFDIR | 0o755);
        assert_eq!(find(&e, "opt/t/run.sh").1, S_IFREG | 0o750);
        assert_eq!(find(&e, "opt/t/sub").1, S_IFDIR | 0o711);
        assert_eq!(find(&e, "opt/t/sub/secret").1, S_IFREG | 0o600);
        assert_eq!(find(&e, "opt/t/link").1, S_IFLNK | 0o777);
        assert_eq!(find(&e, "opt/t/link").3, b"sub/secret");
        assert_eq!(find(&e, "opt/t/dangling").3, b"/nowhere");
    }

    #[test]
    fn a_named_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real"), "data").unwrap();
        symlink("real", dir.path().join("alias")).unwrap();
        let mut p = Packer::new(Vec::new(), 1 << 20);
        p.add(&dir.path().join("alias"), "/alias", false).unwrap();
        let e = parse(&p.finish().unwrap());
        assert_eq!(find(&e, "alias").1 & S_IFMT, S_IFREG);
        assert_eq!(find(&e, "alias").3, b"data");
    }

    #[test]
    fn host_paths_keep_the_hosts_links() {
        // dir/lib -> usr/lib (relative), dir/usr/lib/x/libz.so.1 -> libz.so.1.2 (a file)
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("usr/lib/x")).unwrap();
        fs::write(base.join("usr/lib/x/libz.so.1.2"), "zlib").unwrap();
        symlink("libz.so.1.2", base.join("usr/lib/x/libz.so.1")).unwrap();
        symlink("usr/lib", base.join("lib")).unwrap();
        let mut p = Packer::new(Vec::new(), 1 << 20);
        p.add_host_path(&base.join("lib/x/libz.so.1")).unwrap();
        p.add_host_path(&base.join("lib/x/libz.so.1")).unwrap();
        let e = parse(&p.finish().unwrap());
        let b = base.to_string_lossy().trim_start_matches('/').to_string();
        let at = |s: &str| format!("{b}/{s}");
        let n = names(&e);
        let pos = |s: &str| n.iter().position(|x| *x == at(s)).unwrap();
        // The link comes after what it names, then the file through it.
        assert!(pos("usr/lib") < pos("lib") && pos("lib") < pos("lib/x/libz.so.1"));
        assert_eq!(find(&e, &at("lib")).1, S_IFLNK | 0o777);
        assert_eq!(find(&e, &at("lib")).3, b"usr/lib");
        // The name the loader resolved holds the contents.
        assert_eq!(find(&e, &at("lib/x/libz.so.1")).1 & S_IFMT, S_IFREG);
        assert_eq!(find(&e, &at("lib/x/libz.so.1")).3, b"zlib");
        assert_eq!(n.iter().filter(|x| **x == at("lib/x/libz.so.1")).count(), 1);
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        symlink("b", base.join("a")).unwrap();
        symlink("a", base.join("b")).unwrap();
        let mut p = Packer::new(Vec::new(), 1 << 20);
        // canonicalize of a parent inside the loop, or the depth bound: an error either way.
        assert!(p.add_host_path(&base.join("a/f")).is_err());
    }

    #[test]
    fn the_size_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), vec![0u8; 10_000]).unwrap();
        let mut p = Packer::new(Vec::new(), 4096);
        assert!(matches!(
            p.add(&dir.path().join("big"), "/big", false),
            Err(Error::TooLarge { limit: 4096, .. })
        ));
    }

    #[test]
    fn an_executable_brings_its_libraries_and_loader() {
        // /bin/sh is dynamic on Debian: libc and the loader come with it.
        let mut p = Packer::new(Vec::new(), 64 << 20);
        p.add(Path::new("/bin/sh"), "/opt/sh", true).unwrap();
        let libs = library_closure(Path::new("/bin/sh")).unwrap();
        assert!(p.stats().libraries >= 2, "{:?}", p.stats());
        let e = parse(&p.finish().unwrap());
        for lib in libs {
            let name = lib.to_string_lossy().trim_start_matches('/').to_string();
            let entry = find(&e, &name);
            assert_eq!(entry.1 & S_IFMT, S_IFREG, "{name}");
            assert_eq!(entry.3, fs::read(&lib).unwrap(), "{name}");
        }
    }
}
