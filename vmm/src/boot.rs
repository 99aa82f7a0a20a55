//! Loading the guest: kernel (ELF vmlinux or bzImage), initrd, command line
//! and zero page, following Linux's 64-bit boot protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_HOLE_START};
use crate::arch::zero_page::{self, ZeroPage};

/// Errors loading the guest.
#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot read kernel image {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a kernel image perfvisor can boot: expected an ELF vmlinux or a bzImage"
    )]
    UnknownFormat { path: PathBuf },
    #[error("cannot load kernel {path}: {source}; check that it is an x86_64 Linux kernel and that --memory is large enough")]
    KernelLoad {
        path: PathBuf,
        source: loader::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    InitrdOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel end (0x{kernel_end:x}) and 0x{limit:x}; raise --memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("a guest command needs an initramfs whose /init runs it: pass --initrd (the default guest image has one)")]
    NoInitrd,
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    InitrdLoad {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line: {0}")]
    CmdlineLoad(loader::Error),
    #[error("cannot write the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// Kernel image formats perfvisor boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A bzImage (entered at its 64-bit entry point).
    BzImage,
}

/// Identify a kernel image by its magic numbers.
pub fn detect_format(path: &Path) -> Result<KernelFormat, BootError> {
    let open_err = |source| BootError::KernelOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(open_err)?;
    let mut head = [0u8; 4];
    f.read_exact(&mut head)
        .map_err(|_| BootError::UnknownFormat {
            path: path.to_path_buf(),
        })?;
    if head == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut hdrs = [0u8; 4];
    f.seek(SeekFrom::Start(0x202)).map_err(open_err)?;
    if f.read_exact(&mut hdrs).is_ok() && hdrs == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// What the boot vCPU needs after loading.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Guest-physical address of the 64-bit entry point.
    pub entry: GuestAddress,
    /// Format of the loaded kernel.
    pub format: KernelFormat,
}

/// Offset of `startup_64` in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A file perfvisor adds to the guest's initramfs (e.g. the guest command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdFile {
    /// Path inside the guest, without the leading slash (`perfvisor/command`).
    pub path: String,
    /// File contents.
    pub data: Vec<u8>,
}

/// An uncompressed newc cpio archive holding `files` and their parent
/// directories. Linux unpacks concatenated archives in order, so this can
/// follow any initramfs (at a 4-byte aligned offset).
pub fn initrd_archive(files: &[InitrdFile]) -> std::io::Result<Vec<u8>> {
    let mut w = initramfs::CpioWriter::new(Vec::new());
    for f in files {
        w.file_bytes(&f.path, 0o644, &f.data)?;
    }
    w.finish()
}

/// Load `kernel`, optional `initrd` followed by `extra` (newc archives, such
/// as [`initrd_archive`]'s; with no `initrd`, `extra` alone is the initramfs)
/// and `cmdline` into `mem`, and write the zero page.
/// `ram` is the list of RAM ranges for the e820 map.
pub fn load(
    mem: &GuestMemoryMmap,
    ram: &[(u64, u64)],
    kernel: &Path,
    initrd: Option<&Path>,
    extra: &[u8],
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let format = detect_format(kernel)?;
    let mut image = File::open(kernel).map_err(|source| BootError::KernelOpen {
        path: kernel.to_path_buf(),
        source,
    })?;
    let load_err = |source| BootError::KernelLoad {
        path: kernel.to_path_buf(),
        source,
    };
    let result = match format {
        KernelFormat::Elf => {
            Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START))).map_err(load_err)?
        }
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?
        }
    };
    let entry = match format {
        KernelFormat::Elf => result.kernel_load,
        KernelFormat::BzImage => result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
    };
    let kernel_end = result
        .kernel_load
        .raw_value()
        .saturating_add(result.kernel_end);

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::CmdlineLoad)?;

    let initrd = if initrd.is_some() || !extra.is_empty() {
        Some(load_initrd(
            mem,
            initrd,
            extra,
            kernel_end,
            result.setup_header.map(|h| h.initrd_addr_max),
        )?)
    } else {
        None
    };
    let zp = ZeroPage {
        setup_header: result.setup_header,
        cmdline_len: cmdline.len(),
        initrd,
    };
    zero_page::write(mem, &zp, ram).map_err(BootError::ZeroPage)?;
    Ok(BootInfo { entry, format })
}

/// Place the initrd (if any), then `extra` at the next 4-byte boundary, at
/// the top of low RAM (page aligned), above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: Option<&Path>,
    extra: &[u8],
    kernel_end: u64,
    addr_max: Option<u32>,
) -> Result<(GuestAddress, usize), BootError> {
    // Errors name the initrd, or the archive perfvisor built.
    let path = initrd.unwrap_or(Path::new("(the archive of perfvisor's own files)"));
    let open_err = |source| BootError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let load_err = |source| BootError::InitrdLoad {
        path: path.to_path_buf(),
        source,
    };
    let mut f = initrd.map(File::open).transpose().map_err(open_err)?;
    let file_size = match &f {
        Some(f) => f.metadata().map_err(open_err)?.len(),
        None => 0,
    };
    let extra_at = (file_size + 3) & !3;
    let size = if extra.is_empty() {
        file_size
    } else {
        extra_at + extra.len() as u64
    };
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&e| e <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0);
    // The protocol's initrd_addr_max is the highest byte the initrd may use.
    let limit = match addr_max {
        Some(m) if m != 0 => low_end.min(u64::from(m) + 1),
        _ => low_end,
    };
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel_end {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    if let Some(f) = &mut f {
        mem.read_exact_volatile_from(GuestAddress(start), f, file_size as usize)
            .map_err(load_err)?;
    }
    if !extra.is_empty() {
        // The kernel's unpacker skips zero padding between archives.
        let pad = &[0u8; 3][..(extra_at - file_size) as usize];
        mem.write_slice(pad, GuestAddress(start + file_size))
            .map_err(load_err)?;
        mem.write_slice(extra, GuestAddress(start + extra_at))
            .map_err(load_err)?;
    }
    Ok((GuestAddress(start), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_dirs_files_and_trailer() {
        let a = initrd_archive(&[InitrdFile {
            path: "perfvisor/command".into(),
            data: b"echo hi\n".to_vec(),
        }])
        .unwrap();
        let text = String::from_utf8_lossy(&a);
        assert!(a.starts_with(b"070701"));
        let dir = text.find("perfvisor\0").unwrap();
        let file = text.find("perfvisor/command\0").unwrap();
        assert!(dir < file);
        assert!(text.contains("echo hi\n"));
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(a.len() % 4, 0);
    }
}
