//! The ELF `vmlinux` inside a kernel image a user brings: a bzImage's
//! compressed payload (boot protocol 2.08+: `payload_offset`,
//! `payload_length` in the setup header) or an ELF as is, and its sections.
//!
//! The image is the user's file, not the guest's memory, but it is still
//! foreign input: every offset is checked against the file, and the
//! decompressed size is capped.

use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// The largest `vmlinux` a payload may decompress to: far above any
/// distribution or allyesconfig kernel, low enough to bound host memory.
pub const MAX_VMLINUX: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("reading the kernel image {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF vmlinux nor a bzImage (no HdrS setup header): pass the kernel's bzImage or vmlinux")]
    NotAKernel { path: PathBuf },
    #[error("{path}: the bzImage's payload ({what}) lies outside the file: the image is truncated or corrupt")]
    BadPayload { path: PathBuf, what: &'static str },
    #[error("{path}: the kernel payload is compressed with {method}, which perfvisor does not decompress; pass the ELF vmlinux (scripts/extract-vmlinux in the kernel tree extracts it)")]
    Unsupported { path: PathBuf, method: String },
    #[error("{path}: decompressing the {method} kernel payload failed: {source}")]
    Decompress {
        path: PathBuf,
        method: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: the kernel payload decompresses to more than {MAX_VMLINUX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: the decompressed payload is not an ELF file")]
    PayloadNotElf { path: PathBuf },
    #[error("{path}: parsing the vmlinux ELF: {source}")]
    Elf {
        path: PathBuf,
        source: object::read::Error,
    },
}

type Result<T> = std::result::Result<T, KernelImageError>;

/// A kernel's `vmlinux` ELF, read from a bzImage or an ELF file.
pub struct Vmlinux {
    path: PathBuf,
    elf: Vec<u8>,
}

impl Vmlinux {
    /// Reads `path`: an ELF as is, a bzImage's payload decompressed.
    pub fn open(path: &Path) -> Result<Vmlinux> {
        let data = std::fs::read(path).map_err(|source| KernelImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let elf = if data.starts_with(b"\x7fELF") {
            data
        } else {
            decompress_payload(path, bzimage_payload(path, &data)?)?
        };
        if !elf.starts_with(b"\x7fELF") {
            return Err(KernelImageError::PayloadNotElf {
                path: path.to_path_buf(),
            });
        }
        Ok(Vmlinux {
            path: path.to_path_buf(),
            elf,
        })
    }

    /// The contents of section `name`, if the ELF has it.
    pub fn section(&self, name: &str) -> Result<Option<&[u8]>> {
        Ok(self.section_and_address(name)?.map(|(data, _)| data))
    }

    /// The contents of section `name` and its address, if the ELF has it
    /// (a section whose file range does not fit the file has none).
    pub fn section_and_address(&self, name: &str) -> Result<Option<(&[u8], u64)>> {
        let file = object::File::parse(&*self.elf).map_err(|source| KernelImageError::Elf {
            path: self.path.clone(),
            source,
        })?;
        let Some(section) = file.section_by_name(name) else {
            return Ok(None);
        };
        let range = section.file_range().and_then(|(off, len)| {
            Some(usize::try_from(off).ok()?..usize::try_from(off.checked_add(len)?).ok()?)
        });
        Ok(range
            .and_then(|r| self.elf.get(r))
            .map(|data| (data, section.address())))
    }

    /// The kernel release from the `linux_banner` ("Linux version 6.1.0-57-amd64 ..."),
    /// if the image has one.
    pub fn release(&self) -> Option<String> {
        let hay = self.section(".rodata").ok().flatten().unwrap_or(&self.elf);
        let needle = b"Linux version ";
        // The banner's release starts with a digit (a format string such
        // as "Linux version %s" does not).
        let mut from = 0;
        while let Some(pos) = hay
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
        {
            let at = from + pos + needle.len();
            from = at;
            let rest = &hay[at..hay.len().min(at + 64)];
            let Some(end) = rest.iter().position(|&c| c == b' ' || c == 0) else {
                continue;
            };
            if rest.first().is_some_and(u8::is_ascii_digit) {
                return std::str::from_utf8(&rest[..end]).ok().map(str::to_string);
            }
        }
        None
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The compressed payload of a bzImage (Documentation/arch/x86/boot.rst).
/// The kernel release (`uname -r`) of the image at `path`, cheaply: a
/// bzImage's setup header names it (`kernel_version`, boot protocol 2.00+),
/// so nothing is decompressed; an ELF, or a bzImage without that field, is
/// opened and its `linux_banner` read ([`Vmlinux::release`]).
pub fn kernel_release(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    header_release(&data).or_else(|| Vmlinux::open(path).ok()?.release())
}

/// The release in a bzImage setup header's `kernel_version` string
/// ("6.1.0-57-amd64 (debian-kernel@...) #1 SMP ..."), if it has one.
fn header_release(data: &[u8]) -> Option<String> {
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let ptr = u16::from_le_bytes(data.get(0x20e..0x210)?.try_into().ok()?);
    if ptr == 0 {
        return None;
    }
    let text = data.get(0x200 + usize::from(ptr)..)?;
    let text = &text[..text.len().min(256)];
    let end = text.iter().position(|&c| c == 0 || c == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    release
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| release.to_string())
}

fn bzimage_payload<'a>(path: &Path, data: &'a [u8]) -> Result<&'a [u8]> {
    if data.get(0x202..0x206) != Some(b"HdrS") {
        return Err(KernelImageError::NotAKernel {
            path: path.to_path_buf(),
        });
    }
    let bad = |what| KernelImageError::BadPayload {
        path: path.to_path_buf(),
        what,
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
    };
    let version = data
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(bad("protocol version"))?;
    if version < 0x0208 {
        return Err(bad("boot protocol before 2.08 has no payload fields"));
    }
    // setup_sects 0 means 4 (boot.rst).
    let sects = match data.get(0x1f1).copied().ok_or(bad("setup_sects"))? {
        0 => 4,
        n => u64::from(n),
    };
    let offset = u64::from(u32_at(0x248).ok_or(bad("payload_offset"))?);
    let length = u64::from(u32_at(0x24c).ok_or(bad("payload_length"))?);
    let start = (sects + 1) * 512 + offset;
    let end = start.checked_add(length).ok_or(bad("payload_length"))?;
    let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
    range
        .and_then(|(s, e)| data.get(s..e))
        .ok_or(bad("payload_offset + payload_length"))
}

/// Decompresses a payload by its magic, reading at most [`MAX_VMLINUX`]
/// bytes. The kernel appends the uncompressed size after some formats'
/// stream (xz), so each decoder reads one stream and ignores the rest.
fn decompress_payload(path: &Path, payload: &[u8]) -> Result<Vec<u8>> {
    let (method, reader): (&'static str, Box<dyn Read + '_>) = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            ("xz", Box::new(liblzma::read::XzDecoder::new(payload)))
        }
        [0x1f, 0x8b, ..] => ("gzip", Box::new(flate2::read::GzDecoder::new(payload))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let d = ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| {
                KernelImageError::Decompress {
                    path: path.to_path_buf(),
                    method: "zstd",
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                }
            })?;
            ("zstd", Box::new(d))
        }
        _ => {
            let method = match payload {
                [0x02, 0x21, 0x4c, 0x18, ..] => "lz4".to_string(),
                [b'B', b'Z', b'h', ..] => "bzip2".to_string(),
                [0x5d, 0, 0, ..] => "lzma".to_string(),
                [0x89, b'L', b'Z', b'O', ..] => "lzo".to_string(),
                _ => format!(
                    "an unknown method (magic {:02x?})",
                    &payload[..payload.len().min(4)]
                ),
            };
            return Err(KernelImageError::Unsupported {
                path: path.to_path_buf(),
                method,
            });
        }
    };
    let mut out = Vec::new();
    reader
        .take(MAX_VMLINUX + 1)
        .read_to_end(&mut out)
        .map_err(|source| KernelImageError::Decompress {
            path: path.to_path_buf(),
            method,
            source,
        })?;
    if out.len() as u64 > MAX_VMLINUX {
        return Err(KernelImageError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bzimage_header_names_its_release() {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let v = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        b[0x300..0x300 + v.len()].copy_from_slice(v);
        assert_eq!(header_release(&b).as_deref(), Some("6.1.0-57-amd64"));
        // No pointer, a pointer past the end, no digit first, no header.
        b[0x20e..0x210].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(header_release(&b), None);
        b[0x20e..0x210].copy_from_slice(&0xff00u16.to_le_bytes());
        assert_eq!(header_release(&b), None);
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300] = b'x';
        assert_eq!(header_release(&b), None);
        assert_eq!(header_release(b"\x7fELF"), None);
    }
    use std::io::Write;

    /// A minimal bzImage: setup header fields and a payload.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let sects = 1u8;
        let start = (usize::from(sects) + 1) * 512;
        let mut img = vec![0u8; start];
        img[0x1f1] = sects;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        // The kernel's build appends the uncompressed size.
        img.extend_from_slice(&[1, 2, 3, 4]);
        img
    }

    fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    const ELF: &[u8] = b"\x7fELF not really, but the magic is all open() checks";

    #[test]
    fn gzip_and_xz_payloads_decompress() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(ELF).unwrap();
        let p = write(&dir, "gz", &bzimage(&gz.finish().unwrap()));
        assert_eq!(Vmlinux::open(&p).unwrap().elf, ELF);

        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(ELF).unwrap();
        let p = write(&dir, "xz", &bzimage(&xz.finish().unwrap()));
        assert_eq!(Vmlinux::open(&p).unwrap().elf, ELF);
    }

    #[test]
    fn hostile_headers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "junk", b"not a kernel");
        assert!(matches!(
            Vmlinux::open(&p),
            Err(KernelImageError::NotAKernel { .. })
        ));
        // A payload length past the end of the file.
        let mut img = bzimage(b"\x1f\x8bxx");
        img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        let p = write(&dir, "long", &img);
        assert!(matches!(
            Vmlinux::open(&p),
            Err(KernelImageError::BadPayload { .. })
        ));
        // An unsupported method names itself.
        let p = write(&dir, "lz4", &bzimage(&[0x02, 0x21, 0x4c, 0x18, 0, 0]));
        let e = Vmlinux::open(&p).err().unwrap().to_string();
        assert!(e.contains("lz4") && e.contains("vmlinux"), "{e}");
        // A payload that decompresses to something other than an ELF.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"plain text").unwrap();
        let p = write(&dir, "text", &bzimage(&gz.finish().unwrap()));
        assert!(matches!(
            Vmlinux::open(&p),
            Err(KernelImageError::PayloadNotElf { .. })
        ));
    }

    #[test]
    fn the_release_comes_from_the_banner_not_a_format_string() {
        // Not a parseable ELF: release() falls back to the whole file.
        let elf = b"\x7fELF..Linux version %s (%s)\0..Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)\0".to_vec();
        let v = Vmlinux {
            path: PathBuf::from("x"),
            elf,
        };
        assert_eq!(v.release().as_deref(), Some("6.1.0-57-amd64"));
        let v = Vmlinux {
            path: PathBuf::from("x"),
            elf: b"\x7fELF Linux version ".to_vec(),
        };
        assert_eq!(v.release(), None);
    }
}
