//! Guest RAM: anonymous mappings whose host addresses are 2 MiB aligned.
//!
//! KVM maps guest memory with 2 MiB pages only where the host virtual
//! address and the guest-physical address agree modulo 2 MiB and the host
//! backs the range with a transparent huge page. Guest RAM starts at GPA 0,
//! so its host mapping must start on a 2 MiB boundary. Hosts before Linux
//! 6.7 do not align large anonymous mappings by themselves (QEMU aligns its
//! RAM for the same reason). Under nested KVM every 4 KiB second-level
//! fault is emulated, so the difference is large (docs/platform.md, "Boot
//! speed under nested KVM").

use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::layout;
use crate::vm::{VmError, MAX_MEM_SIZE, MIN_MEM_SIZE};

const ALIGN: usize = 2 << 20;

/// One aligned anonymous mapping.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: a Mapping is just the address range it unmaps on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; it is never dereferenced through `&Mapping`.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> std::io::Result<Mapping> {
        let reserve = len + ALIGN;
        // SAFETY: a fresh private anonymous mapping at an address the kernel
        // picks; checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = (start + ALIGN - 1) & !(ALIGN - 1);
        let head = aligned - start;
        let tail = reserve - head - len;
        // SAFETY: unmapping the unaligned head and the tail of the mapping
        // made above, which nothing else refers to.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            // Advisory: back the range with transparent huge pages.
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Ok(Mapping {
            addr: aligned as *mut libc::c_void,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this value owns; GuestRam only
        // drops its mappings once no GuestMemoryMmap refers to them.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Guest RAM and the mappings behind it.
pub struct GuestRam {
    mem: Option<Arc<GuestMemoryMmap>>,
    maps: Vec<Mapping>,
}

impl GuestRam {
    /// `size` bytes of guest RAM, split around the MMIO hole.
    pub fn new(size: u64) -> Result<GuestRam, VmError> {
        if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&size) {
            return Err(VmError::MemorySize(size));
        }
        let mut maps = Vec::new();
        let mut regions = Vec::new();
        for (start, len) in layout::ram_ranges(size) {
            let len = len as usize;
            let map = Mapping::new(len).map_err(|e| VmError::Io {
                what: "allocating guest memory",
                source: e,
            })?;
            // SAFETY: `map` is a live read/write mapping of exactly `len`
            // bytes that outlives the region: GuestRam drops the regions
            // (the GuestMemoryMmap) before the mappings.
            let region =
                unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(map.addr.cast()) }
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                    .build()
                    .map_err(|e| VmError::Io {
                        what: "guest memory region",
                        source: std::io::Error::other(e.to_string()),
                    })?;
            let region =
                GuestRegionMmap::new(region, GuestAddress(start)).ok_or_else(|| VmError::Io {
                    what: "guest memory region",
                    source: std::io::Error::other("region wraps"),
                })?;
            regions.push(region);
            maps.push(map);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| VmError::Io {
            what: "guest memory",
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(GuestRam {
            mem: Some(Arc::new(mem)),
            maps,
        })
    }

    /// The guest memory (shared with devices).
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        // Only `Drop` takes it.
        self.mem
            .as_ref()
            .expect("guest memory is present until drop")
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Some(mem) = self.mem.take() {
            if Arc::try_unwrap(mem).is_err() {
                // Someone still holds the memory: keep the mappings alive
                // (the process is about to exit in every caller).
                log::debug!("guest memory still shared at VM drop; leaving it mapped");
                std::mem::forget(std::mem::take(&mut self.maps));
            }
        }
        // `maps` drops here, after the last GuestMemoryMmap.
    }
}
