//! A writer for uncompressed `newc` cpio archives, the format the Linux kernel
//! unpacks as an initramfs.
//!
//! Entries are streamed to the output (file contents are copied, never held in
//! memory whole). Parent directories are created on demand, so adding
//! `usr/lib/x/libfoo.so` also adds `usr`, `usr/lib` and `usr/lib/x` once.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// Streams a `newc` archive to `W`. Call [`CpioWriter::finish`] to write the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    pos: u64,
    next_ino: u32,
    /// Every path written (normalized), to create parents once and to skip duplicates.
    paths: HashSet<String>,
}

/// Archive paths are relative ("bin/sh"); a leading '/' is dropped, "." and empty
/// components are skipped and ".." is refused.
fn normalize(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cpio path {path:?} contains '..'"),
                ))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("empty cpio path {path:?}"),
        ));
    }
    Ok(parts.join("/"))
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            pos: 0,
            next_ino: 1,
            paths: HashSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Whether `path` was already added (explicitly or as a parent directory).
    pub fn contains(&self, path: &str) -> bool {
        normalize(path)
            .map(|p| self.paths.contains(&p))
            .unwrap_or(false)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.pos % 4) as usize) % 4;
        self.write_all(&[0u8; 3][..pad])
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file larger than 4 GiB"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.write_all(hdr.as_bytes())?;
        self.write_all(name.as_bytes())?;
        self.write_all(&[0])?;
        self.pad4()
    }

    /// Adds the missing parent directories of normalized path `p` (mode 0755).
    fn parents(&mut self, p: &str) -> io::Result<()> {
        let mut idx = 0;
        while let Some(off) = p[idx..].find('/') {
            let parent = &p[..idx + off];
            if !self.paths.contains(parent) {
                let parent = parent.to_string();
                self.header(&parent, S_IFDIR | 0o755, 0, (0, 0))?;
                self.paths.insert(parent);
            }
            idx += off + 1;
        }
        Ok(())
    }

    /// Starts entry `path`; returns its normalized name, or None if already present.
    fn begin(&mut self, path: &str) -> io::Result<Option<String>> {
        let p = normalize(path)?;
        if self.paths.contains(&p) {
            return Ok(None);
        }
        self.parents(&p)?;
        self.paths.insert(p.clone());
        Ok(Some(p))
    }

    /// A directory (no-op if it exists already).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        if let Some(p) = self.begin(path)? {
            self.header(&p, S_IFDIR | (mode & 0o7777), 0, (0, 0))?;
        }
        Ok(())
    }

    /// A regular file with the given contents. Returns false if `path` already existed.
    pub fn file_bytes(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<bool> {
        let Some(p) = self.begin(path)? else {
            return Ok(false);
        };
        self.header(&p, S_IFREG | (mode & 0o7777), data.len() as u64, (0, 0))?;
        self.write_all(data)?;
        self.pad4()?;
        Ok(true)
    }

    /// A regular file copied from `src` (symlinks followed). `mode` None keeps the
    /// source's permission bits. Returns false if `path` already existed.
    pub fn file_from(&mut self, path: &str, mode: Option<u32>, src: &Path) -> io::Result<bool> {
        let mut f = File::open(src)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", src.display()),
            ));
        }
        let mode = mode.unwrap_or_else(|| {
            use std::os::unix::fs::PermissionsExt;
            meta.permissions().mode()
        });
        let Some(p) = self.begin(path)? else {
            return Ok(false);
        };
        let size = meta.len();
        self.header(&p, S_IFREG | (mode & 0o7777), size, (0, 0))?;
        let copied = io::copy(&mut (&mut f).take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being archived", src.display()),
            ));
        }
        self.pos += copied;
        self.pad4()?;
        Ok(true)
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if let Some(p) = self.begin(path)? {
            self.header(&p, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
            self.write_all(target.as_bytes())?;
            self.pad4()?;
        }
        Ok(())
    }

    /// A character device node (e.g. `dev/console`, 5, 1): needs no privileges to write.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        if let Some(p) = self.begin(path)? {
            self.header(&p, S_IFCHR | (mode & 0o7777), 0, (major, minor))?;
        }
        Ok(())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, (0, 0))?;
        let pad = (512 - (self.pos % 512) as usize) % 512;
        self.write_all(&vec![0u8; pad])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one archive entry.
    pub(crate) type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader for the tests.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            let field = |b: &[u8], i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&b[6 + i * 8..6 + i * 8 + 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            assert_eq!(
                &buf[..6],
                b"070701",
                "bad magic at offset {}",
                total - buf.len()
            );
            let mode = field(buf, 1);
            let size = field(buf, 6) as usize;
            let rdev = (field(buf, 9), field(buf, 10));
            let namesize = field(buf, 11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[110 + namesize - 1], 0);
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = buf[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            buf = &buf[next..];
            if name == TRAILER {
                assert!(buf.iter().all(|&b| b == 0));
                assert_eq!(total % 512, 0);
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn writes_entries_with_parents_and_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.file_bytes("/usr/lib/x/a.so", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.dir("tmp", 0o1777).unwrap();
        w.file_bytes("init", 0o755, b"#!/bin/sh\n").unwrap();
        let entries = parse(&w.finish().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/a.so",
                "bin",
                "bin/sh",
                "tmp",
                "init"
            ]
        );
        assert_eq!(entries[1].1, S_IFCHR | 0o600);
        assert_eq!(entries[1].2, (5, 1));
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(entries[5].1, S_IFREG | 0o755);
        assert_eq!(entries[5].3, b"hello");
        assert_eq!(entries[7].1, S_IFLNK | 0o777);
        assert_eq!(entries[7].3, b"/bin/busybox");
        assert_eq!(entries[8].1, S_IFDIR | 0o1777);
        assert_eq!(entries[9].3, b"#!/bin/sh\n");
    }

    #[test]
    fn skips_duplicates_and_refuses_dotdot() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file_bytes("a/b", 0o644, b"1").unwrap());
        assert!(!w.file_bytes("/a/b", 0o644, b"2").unwrap());
        assert!(w.contains("a") && w.contains("/a/b"));
        assert!(w.file_bytes("a/../etc/passwd", 0o644, b"").is_err());
        assert!(w.dir("/", 0o755).is_err());
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].3, b"1");
    }

    #[test]
    fn streams_host_files_and_keeps_their_mode() {
        let dir = std::env::temp_dir().join(format!("sandbox-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("f");
        // 1001 bytes: exercises data padding.
        std::fs::write(&src, vec![7u8; 1001]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        w.file_from("opt/f", None, &src).unwrap();
        w.file_from("opt/g", Some(0o644), &src).unwrap();
        let entries = parse(&w.finish().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(entries[1].1, S_IFREG | 0o750);
        assert_eq!(entries[1].3, vec![7u8; 1001]);
        assert_eq!(entries[2].1, S_IFREG | 0o644);
    }
}
