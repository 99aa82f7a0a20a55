//! Where a ring lives: the memory-access layer shared by the producer, the
//! consumer and the checker.
//!
//! A ring is a control page, `2^n` data pages and optionally `2^m` AUX pages.
//! [`RingPages`] holds one validated host pointer per page, so the hot paths
//! never look an address up again and never leave the declared pages: every
//! ring offset is reduced modulo the area size before it picks a page.
//!
//! Two backings build a [`RingPages`]:
//! - [`GuestRing`]: pages named by guest-physical address in any vm-memory
//!   [`GuestMemoryBackend`] (the pvpmu device; pages need not be contiguous or
//!   in ring order);
//! - [`RingPages::from_contiguous`]: a plain perf mmap (control page, then
//!   the data pages contiguous; the AUX area contiguous at its own pointer),
//!   as a guest-side tool sees a real kernel ring.
//!
//! The producer, consumer and checker are generic over [`RingMemory`], which
//! only hands out the [`RingPages`] of its backing.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::abi::ctrl;
use super::Error;

/// Smallest page size accepted (x86 and arm64 4 KiB pages).
pub const MIN_PAGE_SIZE: usize = 4096;
/// Largest page size accepted (arm64 64 KiB pages).
pub const MAX_PAGE_SIZE: usize = 1 << 16;
/// Most data or AUX pages one ring may have (1 GiB of 4 KiB pages).
pub const MAX_PAGES: usize = 1 << 18;

/// Which part of a ring a page belongs to; used in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The control page (`struct perf_event_mmap_page`).
    Control,
    /// The data ring.
    Data,
    /// The AUX area.
    Aux,
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Area::Control => "control",
            Area::Data => "data",
            Area::Aux => "AUX",
        })
    }
}

/// The 64-bit control page fields that are accessed atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlField {
    /// `data_head`: producer only.
    DataHead,
    /// `data_tail`: consumer only.
    DataTail,
    /// `data_offset`: producer at setup.
    DataOffset,
    /// `data_size`: producer at setup.
    DataSize,
    /// `aux_head`: producer only.
    AuxHead,
    /// `aux_tail`: consumer only.
    AuxTail,
    /// `aux_offset`: consumer.
    AuxOffset,
    /// `aux_size`: consumer.
    AuxSize,
}

impl CtrlField {
    /// Byte offset in the control page.
    pub const fn offset(self) -> usize {
        match self {
            CtrlField::DataHead => ctrl::DATA_HEAD,
            CtrlField::DataTail => ctrl::DATA_TAIL,
            CtrlField::DataOffset => ctrl::DATA_OFFSET,
            CtrlField::DataSize => ctrl::DATA_SIZE,
            CtrlField::AuxHead => ctrl::AUX_HEAD,
            CtrlField::AuxTail => ctrl::AUX_TAIL,
            CtrlField::AuxOffset => ctrl::AUX_OFFSET,
            CtrlField::AuxSize => ctrl::AUX_SIZE,
        }
    }
}

/// Validated host pointers to every page of one ring.
///
/// Invariants, checked by the constructors: the page size is a power of two
/// in [`MIN_PAGE_SIZE`, `MAX_PAGE_SIZE`]; the data page count is a power of
/// two in `1..=MAX_PAGES`; the AUX page count is zero or a power of two in
/// the same range; no two pages overlap; every pointer is non-null, 8-byte
/// aligned and valid for reads and writes of one page for as long as this
/// value lives.
///
/// The memory is shared with another agent (the guest, a consumer thread or
/// the kernel). Every control field access is a single aligned atomic
/// access. Record bytes are copied with plain (`memcpy`) copies: the protocol
/// guarantees the two sides never touch the same bytes at the same time
/// unless the other side is broken or hostile, in which case it only corrupts
/// its own view of the ring (the same model vm-memory uses for guest memory).
#[derive(Debug)]
pub struct RingPages {
    page_shift: u32,
    /// `data_size - 1`.
    data_mask: usize,
    /// `page_size - 1`.
    page_mask: usize,
    control: NonNull<u8>,
    data: Box<[NonNull<u8>]>,
    aux: Box<[NonNull<u8>]>,
}

// SAFETY: `RingPages` is a set of pointers into memory that is designed to be
// shared between threads and with the guest; all accesses through it are
// atomics or byte copies (see the type's documentation), and the pointers
// stay valid for the value's lifetime by the constructors' contracts.
unsafe impl Send for RingPages {}
// SAFETY: as for `Send`: `&RingPages` only permits atomic accesses and byte
// copies into the shared pages.
unsafe impl Sync for RingPages {}

fn check_page_size(page_size: usize) -> Result<u32, Error> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(Error::PageSize(page_size));
    }
    Ok(page_size.trailing_zeros())
}

fn check_count(area: Area, count: usize) -> Result<(), Error> {
    let ok = match area {
        Area::Aux => count == 0 || (count.is_power_of_two() && count <= MAX_PAGES),
        _ => count.is_power_of_two() && count <= MAX_PAGES,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::PageCount {
            area,
            count,
            max: MAX_PAGES,
        })
    }
}

/// Rejects overlapping pages. `addrs` holds (address, area, index).
fn check_disjoint(mut addrs: Vec<(u64, Area, usize)>, page_size: usize) -> Result<(), Error> {
    addrs.sort_unstable_by_key(|a| a.0);
    for pair in addrs.windows(2) {
        if let [a, b] = pair {
            if b.0 - a.0 < page_size as u64 {
                return Err(Error::OverlappingPages {
                    first: a.1,
                    first_index: a.2,
                    second: b.1,
                    second_index: b.2,
                    addr: b.0,
                });
            }
        }
    }
    Ok(())
}

impl RingPages {
    /// Builds a view from one host pointer per page.
    ///
    /// # Safety
    ///
    /// Every pointer must be valid for reads and writes of `page_size` bytes
    /// for as long as the returned value (and anything holding it) lives, and
    /// that memory must not be accessed through Rust references elsewhere.
    pub unsafe fn from_raw_pages(
        page_size: usize,
        control: *mut u8,
        data: &[*mut u8],
        aux: &[*mut u8],
    ) -> Result<Self, Error> {
        let page_shift = check_page_size(page_size)?;
        check_count(Area::Data, data.len())?;
        check_count(Area::Aux, aux.len())?;
        let conv = |area: Area, index: usize, p: *mut u8| -> Result<NonNull<u8>, Error> {
            match NonNull::new(p) {
                Some(nn) if (p as usize).is_multiple_of(8) => Ok(nn),
                _ => Err(Error::HostPointer {
                    area,
                    index,
                    addr: p as usize,
                }),
            }
        };
        let control = conv(Area::Control, 0, control)?;
        let data = data
            .iter()
            .enumerate()
            .map(|(i, p)| conv(Area::Data, i, *p))
            .collect::<Result<Box<[_]>, _>>()?;
        let aux = aux
            .iter()
            .enumerate()
            .map(|(i, p)| conv(Area::Aux, i, *p))
            .collect::<Result<Box<[_]>, _>>()?;
        let mut all = Vec::with_capacity(1 + data.len() + aux.len());
        all.push((control.as_ptr() as u64, Area::Control, 0));
        all.extend(
            data.iter()
                .enumerate()
                .map(|(i, p)| (p.as_ptr() as u64, Area::Data, i)),
        );
        all.extend(
            aux.iter()
                .enumerate()
                .map(|(i, p)| (p.as_ptr() as u64, Area::Aux, i)),
        );
        check_disjoint(all, page_size)?;
        Ok(RingPages {
            page_shift,
            data_mask: (data.len() << page_shift) - 1,
            page_mask: (1 << page_shift) - 1,
            control,
            data,
            aux,
        })
    }

    /// Builds a view of a perf mmap: the control page at `base`, then
    /// `data_pages` pages; the AUX area, if any, is `aux_pages` contiguous
    /// pages at `aux`.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `(1 + data_pages) *
    /// page_size` bytes and `aux.0` of `aux.1 * page_size` bytes, for as long
    /// as the returned value lives (for example until `munmap`).
    pub unsafe fn from_contiguous(
        base: *mut u8,
        page_size: usize,
        data_pages: usize,
        aux: Option<(*mut u8, usize)>,
    ) -> Result<Self, Error> {
        check_page_size(page_size)?;
        check_count(Area::Data, data_pages)?;
        let (aux_base, aux_pages) = aux.unwrap_or((std::ptr::null_mut(), 0));
        check_count(Area::Aux, aux_pages)?;
        let data: Vec<*mut u8> = (1..=data_pages)
            .map(|i| base.wrapping_add(i * page_size))
            .collect();
        let auxv: Vec<*mut u8> = (0..aux_pages)
            .map(|i| aux_base.wrapping_add(i * page_size))
            .collect();
        // SAFETY: the caller guarantees both ranges; the pointers computed
        // above stay inside them.
        unsafe { Self::from_raw_pages(page_size, base, &data, &auxv) }
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        1 << self.page_shift
    }

    /// `data_size`: bytes in the data ring.
    pub fn data_size(&self) -> u64 {
        (self.data.len() as u64) << self.page_shift
    }

    /// Bytes in the AUX area (0 if none).
    pub fn aux_size(&self) -> u64 {
        (self.aux.len() as u64) << self.page_shift
    }

    /// Number of data pages.
    pub fn data_pages(&self) -> usize {
        self.data.len()
    }

    /// Number of AUX pages.
    pub fn aux_pages(&self) -> usize {
        self.aux.len()
    }

    fn atomic(&self, field: CtrlField) -> &AtomicU64 {
        // SAFETY: the control pointer is valid for a whole page (at least
        // 4096 > ctrl::USED_LEN bytes) and 8-byte aligned (constructor
        // invariants); every `CtrlField` offset is a multiple of 8 below
        // ctrl::USED_LEN, so the address is an aligned u64 inside the page.
        // The field is shared with the other side, which also accesses it
        // with single aligned 64-bit loads/stores, and the reference cannot
        // outlive `self`, which keeps the page mapped.
        unsafe { AtomicU64::from_ptr(self.control.as_ptr().add(field.offset()).cast()) }
    }

    /// Atomic load of a control page field.
    #[inline]
    pub fn load(&self, field: CtrlField, order: Ordering) -> u64 {
        self.atomic(field).load(order)
    }

    /// Atomic store to a control page field.
    #[inline]
    pub fn store(&self, field: CtrlField, value: u64, order: Ordering) {
        self.atomic(field).store(value, order)
    }

    /// Initializes the control page as `perf_event_init_userpage` leaves a
    /// fresh one: everything zero except `cap_bit0_is_deprecated`, `size`,
    /// `data_offset` (one page) and `data_size`. `aux_offset` and `aux_size`
    /// belong to the consumer and are left alone.
    pub fn init_control(&self) {
        let base = self.control.as_ptr();
        // SAFETY: [0, ctrl::DATA_HEAD) lies inside the control page, which is
        // valid for writes (constructor invariants). Nothing else is
        // published yet, so plain stores are enough before the Release store
        // of data_head below.
        unsafe { std::ptr::write_bytes(base, 0, ctrl::DATA_HEAD) };
        // SAFETY: offset 40 is 8-aligned inside the page, see `atomic`.
        let caps = unsafe { AtomicU64::from_ptr(base.add(ctrl::CAPABILITIES).cast()) };
        caps.store(ctrl::CAP_BIT0_IS_DEPRECATED, Ordering::Relaxed);
        // SAFETY: offset 72 is 4-aligned inside the page, see `atomic`.
        let size = unsafe { AtomicU32::from_ptr(base.add(ctrl::SIZE).cast()) };
        size.store(ctrl::SIZE_VALUE, Ordering::Relaxed);
        self.store(
            CtrlField::DataOffset,
            self.page_size() as u64,
            Ordering::Relaxed,
        );
        self.store(CtrlField::DataSize, self.data_size(), Ordering::Relaxed);
        self.store(CtrlField::DataTail, 0, Ordering::Relaxed);
        self.store(CtrlField::AuxHead, 0, Ordering::Relaxed);
        self.store(CtrlField::AuxTail, 0, Ordering::Relaxed);
        // Release: the zeroed fields above are visible to whoever observes
        // the initial data_head.
        self.store(CtrlField::DataHead, 0, Ordering::Release);
    }

    /// Zeroes every data page: backward and overwrite readers stop at a
    /// zero-size header, so unused space must read as zero.
    pub fn zero_data(&self) {
        zero_pages(&self.data, self.page_size());
    }

    /// Zeroes every AUX page.
    pub fn zero_aux(&self) {
        zero_pages(&self.aux, self.page_size());
    }

    /// Copies `src` into the data ring at ring offset `off` (reduced modulo
    /// the ring size), across page ends.
    #[inline]
    pub fn write_data(&self, off: u64, src: &[u8]) {
        copy_in(&self.data, self.page_shift, off, src)
    }

    /// Copies bytes out of the data ring at ring offset `off`.
    #[inline]
    pub fn read_data(&self, off: u64, dst: &mut [u8]) {
        copy_out(&self.data, self.page_shift, off, dst)
    }

    /// Copies `src` into the AUX area at offset `off` (modulo its size).
    /// Does nothing if there is no AUX area.
    #[inline]
    pub fn write_aux(&self, off: u64, src: &[u8]) {
        copy_in(&self.aux, self.page_shift, off, src)
    }

    /// Copies bytes out of the AUX area at offset `off`.
    #[inline]
    pub fn read_aux(&self, off: u64, dst: &mut [u8]) {
        copy_out(&self.aux, self.page_shift, off, dst)
    }

    /// Writes a record of `1 + n` 8-byte native words at data offset
    /// `off`: `first`, then `src[idx_k]` for k in 0..n, where `idx_k` is
    /// bits `3k..3k+3` of `idx`. `n` is at most 9 (larger is treated as 9).
    ///
    /// When the record does not cross a page end (the common case) and
    /// `off` is 8-aligned, the words are stored straight into the page with
    /// a loop unrolled for `n`: no intermediate buffer, one page lookup.
    /// Otherwise the words are assembled on the stack and copied across the
    /// page end.
    #[inline(always)]
    pub(crate) fn write_data_gather(
        &self,
        off: u64,
        first: u64,
        src: &[u64; 8],
        idx: u32,
        n: usize,
    ) {
        let n = n.min(9);
        match self.data_run(off, (1 + n) * 8) {
            Some(dst) if off.is_multiple_of(8) => {
                let dst = dst.cast::<u64>();
                // SAFETY: (every arm) data_run checked that all (1 + n) * 8
                // bytes at `dst` lie in one data page, which is valid for
                // writes (constructor invariants); the page pointer is
                // 8-aligned and `off` is a multiple of 8, so every word
                // store is aligned and in bounds.
                unsafe {
                    match n {
                        0 => gather::<0>(dst, first, src, idx),
                        1 => gather::<1>(dst, first, src, idx),
                        2 => gather::<2>(dst, first, src, idx),
                        3 => gather::<3>(dst, first, src, idx),
                        4 => gather::<4>(dst, first, src, idx),
                        5 => gather::<5>(dst, first, src, idx),
                        6 => gather::<6>(dst, first, src, idx),
                        7 => gather::<7>(dst, first, src, idx),
                        8 => gather::<8>(dst, first, src, idx),
                        _ => gather::<9>(dst, first, src, idx),
                    }
                }
            }
            _ => self.write_data_gather_split(off, first, src, idx, n),
        }
    }

    /// The page-crossing (or unaligned) case of
    /// [`RingPages::write_data_gather`].
    #[inline(never)]
    fn write_data_gather_split(&self, off: u64, first: u64, src: &[u64; 8], idx: u32, n: usize) {
        let mut bytes = [0u8; 80];
        let mut chunks = bytes.chunks_exact_mut(8);
        if let Some(c) = chunks.next() {
            c.copy_from_slice(&first.to_ne_bytes());
        }
        for (k, c) in chunks.take(n).enumerate() {
            let w = src[((idx >> (3 * k)) & 7) as usize];
            c.copy_from_slice(&w.to_ne_bytes());
        }
        self.write_data(off, bytes.get(..(1 + n) * 8).unwrap_or(&[]));
    }

    /// Host pointer to the run of `len` bytes at data offset `off` (reduced
    /// modulo the ring size), if the run does not cross a page end.
    #[inline(always)]
    fn data_run(&self, off: u64, len: usize) -> Option<*mut u8> {
        let off = (off as usize) & self.data_mask;
        let in_page = off & self.page_mask;
        if in_page + len > self.page_mask + 1 {
            return None;
        }
        let page = self.data.get(off >> self.page_shift)?;
        // SAFETY: in_page + len <= page size, so the result stays inside the
        // page (or one past its end for len 0).
        Some(unsafe { page.as_ptr().add(in_page) })
    }
}

/// Stores `first` then `N` words picked from `src` by 3-bit indexes.
///
/// # Safety
///
/// `dst` must be 8-aligned and valid for writes of `(1 + N) * 8` bytes.
#[inline(always)]
unsafe fn gather<const N: usize>(dst: *mut u64, first: u64, src: &[u64; 8], idx: u32) {
    // SAFETY: word 0 is in bounds by the caller's contract.
    unsafe { dst.write(first) };
    for k in 0..N {
        let w = src[((idx >> (3 * k)) & 7) as usize];
        // SAFETY: 1 + k <= N, in bounds by the caller's contract.
        unsafe { dst.add(1 + k).write(w) };
    }
}

fn zero_pages(pages: &[NonNull<u8>], page_size: usize) {
    for p in pages {
        // SAFETY: each page pointer is valid for writes of `page_size`
        // bytes (constructor invariants).
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, page_size) };
    }
}

#[inline]
fn copy_in(pages: &[NonNull<u8>], shift: u32, off: u64, mut src: &[u8]) {
    if pages.is_empty() {
        return;
    }
    let page_size = 1usize << shift;
    let mask = (pages.len() << shift) - 1;
    let mut off = (off as usize) & mask;
    while !src.is_empty() {
        let in_page = off & (page_size - 1);
        let n = (page_size - in_page).min(src.len());
        let Some(page) = pages.get(off >> shift) else {
            return;
        };
        let (now, rest) = src.split_at(n);
        // SAFETY: `page` is valid for writes of a whole page and
        // in_page + n <= page_size; `now` is a separate Rust buffer, so the
        // ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(now.as_ptr(), page.as_ptr().add(in_page), n) };
        src = rest;
        off = (off + n) & mask;
    }
}

#[inline]
fn copy_out(pages: &[NonNull<u8>], shift: u32, off: u64, mut dst: &mut [u8]) {
    if pages.is_empty() {
        dst.fill(0);
        return;
    }
    let page_size = 1usize << shift;
    let mask = (pages.len() << shift) - 1;
    let mut off = (off as usize) & mask;
    while !dst.is_empty() {
        let in_page = off & (page_size - 1);
        let n = (page_size - in_page).min(dst.len());
        let Some(page) = pages.get(off >> shift) else {
            return;
        };
        let (now, rest) = std::mem::take(&mut dst).split_at_mut(n);
        // SAFETY: `page` is valid for reads of a whole page and
        // in_page + n <= page_size; `now` is a separate Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr().add(in_page), now.as_mut_ptr(), n) };
        dst = rest;
        off = (off + n) & mask;
    }
}

/// Anything that can hand out the validated pages of one ring.
///
/// The producer, consumer and checker are generic over this trait so the
/// same code runs on guest memory (host side) and on a raw perf mmap (guest
/// tool).
pub trait RingMemory {
    /// The ring's pages.
    fn pages(&self) -> &RingPages;
}

impl RingMemory for RingPages {
    fn pages(&self) -> &RingPages {
        self
    }
}

impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn pages(&self) -> &RingPages {
        (**self).pages()
    }
}

impl<T: RingMemory + ?Sized> RingMemory for Arc<T> {
    fn pages(&self) -> &RingPages {
        (**self).pages()
    }
}

impl<T: RingMemory + ?Sized> RingMemory for Box<T> {
    fn pages(&self) -> &RingPages {
        (**self).pages()
    }
}

/// Guest-physical page lists of one ring, as the guest driver declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRingLayout {
    /// Guest page size (4096 on x86).
    pub page_size: usize,
    /// The control page.
    pub control: GuestAddress,
    /// Data pages in ring order; a power of two of them.
    pub data: Vec<GuestAddress>,
    /// AUX pages in ring order; zero or a power of two of them.
    pub aux: Vec<GuestAddress>,
}

/// A ring in guest memory: the pages of a [`GuestRingLayout`], validated and
/// resolved to host addresses once.
///
/// The ring keeps an `Arc` of the guest memory, so the mappings its pointers
/// come from stay alive as long as it does.
///
/// Writes through the ring do not mark pages in a vm-memory dirty bitmap;
/// a VMM that migrates must treat the declared pages as always dirty.
#[derive(Debug)]
pub struct GuestRing<M> {
    mem: Arc<M>,
    layout: GuestRingLayout,
    pages: RingPages,
}

impl<M: GuestMemoryBackend> GuestRing<M> {
    /// Validates `layout` against `mem` and resolves every page.
    ///
    /// Errors (never panics) if the page size or a page count is not a
    /// power of two in range, a page is unaligned, not backed by one guest
    /// memory region, or overlaps another page.
    pub fn new(mem: Arc<M>, layout: GuestRingLayout) -> Result<Self, Error> {
        check_page_size(layout.page_size)?;
        check_count(Area::Data, layout.data.len())?;
        check_count(Area::Aux, layout.aux.len())?;
        let page_size = layout.page_size;
        let mut all = Vec::with_capacity(1 + layout.data.len() + layout.aux.len());
        all.push((layout.control.0, Area::Control, 0));
        all.extend(
            layout
                .data
                .iter()
                .enumerate()
                .map(|(i, a)| (a.0, Area::Data, i)),
        );
        all.extend(
            layout
                .aux
                .iter()
                .enumerate()
                .map(|(i, a)| (a.0, Area::Aux, i)),
        );
        for &(gpa, area, index) in &all {
            if gpa % page_size as u64 != 0 {
                return Err(Error::UnalignedPage { area, index, gpa });
            }
        }
        check_disjoint(all, page_size)?;
        let resolve = |area: Area, index: usize, gpa: GuestAddress| -> Result<*mut u8, Error> {
            let slice = mem
                .get_slice(gpa, page_size)
                .map_err(|_| Error::PageNotInMemory {
                    area,
                    index,
                    gpa: gpa.0,
                })?;
            Ok(slice.ptr_guard_mut().as_ptr())
        };
        let control = resolve(Area::Control, 0, layout.control)?;
        let data = layout
            .data
            .iter()
            .enumerate()
            .map(|(i, a)| resolve(Area::Data, i, *a))
            .collect::<Result<Vec<_>, _>>()?;
        let aux = layout
            .aux
            .iter()
            .enumerate()
            .map(|(i, a)| resolve(Area::Aux, i, *a))
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: each pointer comes from a `VolatileSlice` of exactly one
        // page that vm-memory checked lies inside one region of `mem`. The
        // regions are owned by `mem`, which this value keeps alive through
        // its `Arc` and never mutates, so the mappings outlive `pages`.
        // Guest memory is never accessed through Rust references.
        let pages = unsafe { RingPages::from_raw_pages(page_size, control, &data, &aux)? };
        Ok(GuestRing { mem, layout, pages })
    }

    /// The guest memory this ring lives in.
    pub fn memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// The validated layout.
    pub fn layout(&self) -> &GuestRingLayout {
        &self.layout
    }
}

impl<M> RingMemory for GuestRing<M> {
    fn pages(&self) -> &RingPages {
        &self.pages
    }
}
