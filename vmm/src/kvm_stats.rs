//! KVM's binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst
//! 4.134) for one vCPU: the descriptors are read once, values with one
//! `pread` per snapshot.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

const HEADER_LEN: usize = 24;
const DESC_FIXED_LEN: usize = 16;
/// Descriptors beyond this are ignored (x86 vCPUs have about 40).
const MAX_STATS: usize = 256;

/// One vCPU's statistics.
pub struct VcpuStats {
    file: File,
    names: Vec<String>,
    /// (offset of the first u64 in the data block) per kept statistic.
    offsets: Vec<u64>,
    data_offset: u64,
    data_len: usize,
    buf: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

impl VcpuStats {
    /// Open the vCPU's stats fd and read its descriptors. Keeps cumulative,
    /// instant and peak values (histograms are skipped).
    pub fn open(vcpu: &VcpuFd) -> io::Result<VcpuStats> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
        // (or -1); the vCPU fd is valid for the call.
        let fd = unsafe { ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed KVM stats header");
        let name_size = u32_at(&header, 4).ok_or_else(bad)? as usize;
        let num_desc = (u32_at(&header, 8).ok_or_else(bad)? as usize).min(MAX_STATS);
        let desc_offset = u64::from(u32_at(&header, 16).ok_or_else(bad)?);
        let data_offset = u64::from(u32_at(&header, 20).ok_or_else(bad)?);
        if name_size > 4096 {
            return Err(bad());
        }
        let desc_len = DESC_FIXED_LEN + name_size;
        let mut descs = vec![0u8; desc_len * num_desc];
        file.read_exact_at(&mut descs, desc_offset)?;
        let (mut names, mut offsets) = (Vec::new(), Vec::new());
        let mut data_len = 0usize;
        for d in descs.chunks_exact(desc_len) {
            let flags = u32_at(d, 0).ok_or_else(bad)?;
            let size = u16_at(d, 6).ok_or_else(bad)? as usize;
            let offset = u32_at(d, 8).ok_or_else(bad)? as usize;
            data_len = data_len.max(offset + 8 * size);
            let kind = flags & KVM_STATS_TYPE_MASK;
            if ![
                KVM_STATS_TYPE_CUMULATIVE,
                KVM_STATS_TYPE_INSTANT,
                KVM_STATS_TYPE_PEAK,
            ]
            .contains(&kind)
                || size == 0
            {
                continue;
            }
            let raw = &d[DESC_FIXED_LEN..];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            if name.is_empty() {
                continue;
            }
            names.push(name);
            offsets.push(offset as u64);
        }
        Ok(VcpuStats {
            file,
            names,
            offsets,
            data_offset,
            data_len,
            buf: vec![0; data_len],
        })
    }

    /// The statistics' names, in the order [`VcpuStats::read`] returns values.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Current values.
    pub fn read(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        self.file
            .read_exact_at(&mut self.buf[..self.data_len], self.data_offset)?;
        out.clear();
        for &off in &self.offsets {
            let o = off as usize;
            out.push(u64::from_le_bytes(
                self.buf
                    .get(o..o + 8)
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or([0; 8]),
            ));
        }
        Ok(())
    }

    /// The stats fd (for diagnostics).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
