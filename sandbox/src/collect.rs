//! What the L1 sends back: a tar stream on its second serial port, checked
//! and unpacked into a directory perfvisor made itself; and the private
//! temporary directories and random nonces the run uses.
//!
//! The stream comes from the L1 and, through it, from whatever ran there,
//! so it is bounded (size, entries) and only relative regular files and
//! directories are accepted: no links, devices or paths that leave the
//! directory (docs/security.md).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Most bytes the L1 may write to its collect port. A run that passes it
/// is stopped.
pub const MAX_COLLECT_BYTES: u64 = 4 << 30;
/// Most entries the collected stream may hold.
pub const MAX_COLLECT_ENTRIES: usize = 100_000;

fn refused(what: impl Into<String>) -> Error {
    Error::CollectRefused(what.into())
}

/// Unpacks the tar stream in `tar` into `host`, which must not exist yet:
/// it is created here, mode 0700, so a directory or symlink someone else
/// put at that path is refused rather than written through.
pub(crate) fn unpack_collected(tar: &Path, host: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(host)
        .map_err(|source| Error::CollectDir {
            path: host.to_path_buf(),
            source,
        })?;
    let file = File::open(tar).map_err(crate::io_err(format!("opening {}", tar.display())))?;
    let len = file
        .metadata()
        .map_err(crate::io_err(format!("reading {}", tar.display())))?
        .len();
    if len > MAX_COLLECT_BYTES {
        return Err(refused(format!(
            "{len} bytes, more than the {MAX_COLLECT_BYTES} allowed"
        )));
    }
    unpack(file.take(MAX_COLLECT_BYTES), host)
}

fn unpack(r: impl Read, host: &Path) -> Result<(), Error> {
    let bad = |e: io::Error| refused(format!("not a valid tar stream: {e}"));
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(false);
    ar.set_preserve_mtime(false);
    ar.set_overwrite(false);
    for (n, entry) in ar.entries().map_err(bad)?.enumerate() {
        if n >= MAX_COLLECT_ENTRIES {
            return Err(refused(format!("more than {MAX_COLLECT_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(refused(format!(
                "{}: a {kind:?} entry (only regular files and directories come back)",
                path.display()
            )));
        }
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refused(format!(
                "{}: a path that is absolute or leaves the directory",
                path.display()
            )));
        }
        let inside = entry
            .unpack_in(host)
            .map_err(|e| refused(format!("{}: unpacking failed: {e}", path.display())))?;
        if !inside {
            return Err(refused(format!(
                "{}: a path that leaves the directory",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Random bits from the OS (for marker nonces and directory names that
/// the L1 and other local users cannot guess).
pub(crate) fn random_hex() -> Result<String, Error> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(crate::io_err("reading /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A private temporary directory (mode 0700, a random name, never an
/// existing path), removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates it under the system's temporary directory.
    pub fn new() -> Result<TempDir, Error> {
        let path = std::env::temp_dir().join(format!("perfvisor-{}", random_hex()?));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(crate::io_err(format!("creating {}", path.display())))?;
        Ok(TempDir { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file_header(path: &str, len: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h
    }

    #[test]
    fn files_and_directories_come_back() {
        let dir = TempDir::new().unwrap();
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_path("./sub/").unwrap();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            b.append(&file_header("./sub/samples.raw", 5), &b"hello"[..])
                .unwrap();
        });
        let tar = dir.path().join("c.tar");
        fs::write(&tar, data).unwrap();
        let out = dir.path().join("out");
        unpack_collected(&tar, &out).unwrap();
        assert_eq!(fs::read(out.join("sub/samples.raw")).unwrap(), b"hello");
    }

    #[test]
    fn a_symlink_at_the_collect_path_is_refused() {
        let dir = TempDir::new().unwrap();
        let target = dir.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let out = dir.path().join("out");
        std::os::unix::fs::symlink(&target, &out).unwrap();
        let tar = dir.path().join("c.tar");
        fs::write(
            &tar,
            tar_with(|b| b.append(&file_header("x", 1), &b"x"[..]).unwrap()),
        )
        .unwrap();
        let e = unpack_collected(&tar, &out).unwrap_err();
        assert!(matches!(e, Error::CollectDir { .. }), "{e}");
        assert!(fs::read_dir(&target).unwrap().next().is_none());
    }

    #[test]
    fn links_devices_and_escaping_paths_are_refused() {
        let dir = TempDir::new().unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "symlink",
                tar_with(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, "etc", "/etc").unwrap();
                }),
            ),
            (
                "hard link",
                tar_with(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, "pw", "/etc/passwd").unwrap();
                }),
            ),
            (
                "device",
                tar_with(|b| {
                    let mut h = file_header("dev", 0);
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }),
            ),
            ("dot-dot", {
                // tar::Builder refuses "..", so write the name by hand.
                let mut h = file_header("x", 1);
                h.as_old_mut().name[..6].copy_from_slice(b"../esc");
                h.set_cksum();
                tar_with(|b| b.append(&h, &b"x"[..]).unwrap())
            }),
            ("garbage", vec![0x5a; 4096]),
        ];
        for (i, (what, data)) in cases.into_iter().enumerate() {
            let tar = dir.path().join(format!("{i}.tar"));
            fs::write(&tar, data).unwrap();
            let out = dir.path().join(format!("out{i}"));
            let e = unpack_collected(&tar, &out).unwrap_err();
            assert!(matches!(e, Error::CollectRefused(_)), "{what}: {e}");
        }
        assert!(!dir.path().join("esc").exists());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(random_hex().unwrap(), random_hex().unwrap());
        assert_eq!(random_hex().unwrap().len(), 32);
    }
}
