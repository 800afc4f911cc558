//! [`HostMap`]: a shared read/write mapping of a whole memfd, for host code
//! that moves bytes in and out of memory other threads use at the same time
//! (the model's page store, `privmem_model::backing`, whose other users are
//! other vCPUs). A safe, bounds-checked wrapper: every method takes an
//! offset and returns [`HostMapError::OutOfRange`] instead of panicking.
//!
//! # Access stance (as rust-vmm `vm-memory`)
//!
//! Memory shared with a guest may change under us at any time. `HostMap`
//! therefore never forms a Rust reference (`&[u8]`, `&mut [u8]`) into the
//! mapping: bytes move with raw-pointer copies (`ptr::copy_nonoverlapping`,
//! `ptr::write_bytes` or streaming stores, unaligned word reads) between
//! the mapping and caller-owned buffers. A copy that races with another thread's store to
//! the same bytes yields some mix of old and new bytes (possibly torn
//! words), exactly what a guest sees when two vCPUs race on real memory;
//! the values are plain bytes, so no Rust invariant depends on them.
//!
//! # No SIGBUS inside the bounds
//!
//! A load or store past the end of a file raises SIGBUS. [`HostMap::new`]
//! therefore maps only files sealed with `F_SEAL_SHRINK` (a memfd created
//! with `MFD_ALLOW_SEALING`), and always exactly the file's size, so every
//! in-bounds byte stays backed for the mapping's life. (Allocation failure
//! when a store or load faults in a page that is not resident would still
//! kill the process, as it would any program touching shared memory; the
//! model only goes through the mapping for resident pages, see
//! [`HostMap::resident_run`].)
//!
//! # Address-space budget
//!
//! A mapping reserves virtual address space only (`MAP_NORESERVE`, nothing
//! populated), but x86-64 user space is 128 TiB and tests create files of up
//! to 2^62 bytes. So one mapping is at most [`MAX_MAP_LEN`] (1 TiB) and all
//! live `HostMap`s of the process together at most [`MAP_BUDGET`] (16 TiB, an
//! eighth of the address space). Beyond either, [`HostMap::new`] fails and
//! the caller keeps using `pread`/`pwrite`.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use privmem_core::{Errno, PAGE_SIZE};

/// Largest file [`HostMap::new`] maps: 1 TiB.
pub const MAX_MAP_LEN: u64 = 1 << 40;
/// Most bytes all live [`HostMap`]s of the process may map together: 16 TiB.
pub const MAP_BUDGET: u64 = 16 << 40;

/// Bytes currently mapped by live `HostMap`s.
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// Pages whose residency one `mincore` call reports.
const MINCORE_BATCH: usize = 256;
/// The kernel's default `fault_around_bytes`: a read fault maps the cached
/// pages of the aligned 64 KiB block around it.
const FAULT_AROUND: u64 = 64 << 10;
/// Fills of at least this many bytes use streaming stores ([`stream_fill`]).
const STREAM_MIN: u64 = 1 << 20;
/// Bytes compared per word-wise block in [`HostMap::find_not`].
const BLOCK: usize = 256;

/// Why a [`HostMap`] could not be created or accessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostMapError {
    /// The file is empty or larger than [`MAX_MAP_LEN`].
    #[error("cannot map a file of {size:#x} bytes: empty or above the {MAX_MAP_LEN:#x}-byte cap")]
    Length {
        /// The file size.
        size: u64,
    },
    /// Mapping the file would exceed [`MAP_BUDGET`].
    #[error(
        "cannot map {size:#x} bytes: {mapped:#x} of the {MAP_BUDGET:#x}-byte budget are mapped"
    )]
    Budget {
        /// The file size.
        size: u64,
        /// Bytes already mapped by the process's live `HostMap`s.
        mapped: u64,
    },
    /// The file could shrink under the mapping (no `F_SEAL_SHRINK`).
    #[error("cannot map a file that is not sealed with F_SEAL_SHRINK (seals {seals:#x})")]
    NotSealed {
        /// The file's seals (`F_GET_SEALS`; -1 if it has none to report).
        seals: i32,
    },
    /// A system call failed.
    #[error("{op} failed with {errno}")]
    Os {
        /// The call, e.g. "mmap".
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// An access reaches outside the mapping.
    #[error("{op}: range {offset:#x}+{len:#x} is outside the {size:#x}-byte mapping")]
    OutOfRange {
        /// The access, e.g. "read".
        op: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The mapping's length.
        size: u64,
    },
}

impl HostMapError {
    /// The errno closest to the error, for callers that report errnos:
    /// `Os`'s own, `EFAULT` for `OutOfRange`, `EFBIG` for `Length`, `ENOMEM`
    /// for `Budget`, `EPERM` for `NotSealed`.
    pub fn errno(&self) -> Errno {
        match self {
            HostMapError::Os { errno, .. } => *errno,
            HostMapError::OutOfRange { .. } => Errno::EFAULT,
            // EFBIG
            HostMapError::Length { .. } => Errno(27),
            HostMapError::Budget { .. } => Errno::ENOMEM,
            HostMapError::NotSealed { .. } => Errno::EPERM,
        }
    }
}

fn last_os(op: &'static str) -> HostMapError {
    let errno = Errno::from_io(&std::io::Error::last_os_error());
    HostMapError::Os { op, errno }
}

/// A share of [`MAPPED`], given back on drop.
#[derive(Debug)]
struct Reservation {
    len: u64,
}

impl Reservation {
    /// Reserves `len` bytes of [`MAP_BUDGET`].
    fn take(len: u64) -> Result<Reservation, HostMapError> {
        reserve(&MAPPED, len, MAP_BUDGET)
            .map_err(|mapped| HostMapError::Budget { size: len, mapped })?;
        Ok(Reservation { len })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        MAPPED.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// Adds `len` to `counter` if the sum stays within `budget`; otherwise
/// returns the counter's value.
fn reserve(counter: &AtomicU64, len: u64, budget: u64) -> Result<(), u64> {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            cur.checked_add(len).filter(|&sum| sum <= budget)
        })
        .map(|_| ())
}

/// Whether pages are resident, for a run of them ([`HostMap::resident_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// The pages of the run hold data (`mincore`: an up-to-date page in the
    /// file's page cache, mapped or not). A hole, a page allocated by
    /// `fallocate` but never written, or a page swapped out is not resident.
    pub resident: bool,
    /// Bytes in the run, from the queried offset.
    pub len: u64,
}

/// A `MAP_SHARED | MAP_NORESERVE` read/write mapping of a whole memfd,
/// unmapped on drop. See the module docs for the access stance and limits.
#[derive(Debug)]
pub struct HostMap {
    ptr: NonNull<u8>,
    len: usize,
    // Dropped after `Drop::drop` unmapped the range.
    _budget: Reservation,
}

// SAFETY: `HostMap` owns an address range and never hands out references
// into it; every access is a raw-pointer copy between the mapping and a
// caller-owned buffer, which is how memory shared with other threads (and
// with a guest) is accessed (module docs). The range is unmapped only in
// `Drop`, when no other handle to it exists.
unsafe impl Send for HostMap {}
// SAFETY: see `Send`; `&HostMap` allows only those copies, which other
// threads may perform concurrently on the same bytes.
unsafe impl Sync for HostMap {}

impl HostMap {
    /// Maps all of `fd` (a file sealed with `F_SEAL_SHRINK`) shared,
    /// read/write, `MAP_NORESERVE`.
    ///
    /// # Errors
    /// `Length` (empty or above [`MAX_MAP_LEN`]), `Budget`, `NotSealed`, or
    /// `Os` for a failed `fstat`/`fcntl`/`mmap`.
    pub fn new(fd: BorrowedFd<'_>) -> Result<HostMap, HostMapError> {
        let size = file_size(fd)?;
        if size == 0 || size > MAX_MAP_LEN {
            return Err(HostMapError::Length { size });
        }
        // SAFETY: F_GET_SEALS takes no argument and touches no memory.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(HostMapError::NotSealed { seals });
        }
        let len = usize::try_from(size).map_err(|_| HostMapError::Length { size })?;
        let budget = Reservation::take(size)?;
        // SAFETY: a fresh mapping with a NULL hint never overlaps an existing
        // Rust object; the kernel validates length, flags and fd, and the
        // result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_os("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(HostMapError::Os {
            op: "mmap",
            errno: Errno::EFAULT,
        })?;
        Ok(HostMap {
            ptr,
            len,
            _budget: budget,
        })
    }

    /// Length in bytes (the file's size when mapped).
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false: empty files are not mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of byte `offset` after checking that `[offset,
    /// offset+len)` lies inside the mapping.
    fn at(&self, op: &'static str, offset: u64, len: u64) -> Result<*mut u8, HostMapError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(HostMapError::OutOfRange {
                op,
                offset,
                len,
                size: self.len(),
            });
        }
        // SAFETY: `offset <= self.len`, so the result stays inside (or one
        // past the end of) the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset as usize) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing copied).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostMapError> {
        let src = self.at("read", offset, buf.len() as u64)?;
        // SAFETY: `src` is valid for `buf.len()` bytes of the live mapping
        // (checked by `at`; every in-bounds byte is backed, see the module
        // docs); `buf` is a distinct, exclusively borrowed Rust buffer. Bytes
        // other threads store concurrently arrive old or new (module docs).
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `offset`.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing copied).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostMapError> {
        let dst = self.at("write", offset, data.len() as u64)?;
        // SAFETY: `dst` is valid for `data.len()` bytes of the live, writable
        // mapping (checked by `at`); `data` is a Rust buffer outside it. No
        // reference into the mapping exists, so the store aliases nothing.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Stores `len` copies of `byte` at `offset`: `memset`, or from
    /// [`STREAM_MIN`] bytes on, non-temporal stores (see [`stream_fill`]).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing stored).
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostMapError> {
        let dst = self.at("fill", offset, len)?;
        if len >= STREAM_MIN {
            // SAFETY: `dst` is valid for `len` bytes of the live, writable
            // mapping (checked by `at`); no reference into the mapping exists.
            unsafe { stream_fill(dst, len as usize, byte) };
        } else {
            // SAFETY: as above.
            unsafe { std::ptr::write_bytes(dst, byte, len as usize) };
        }
        Ok(())
    }

    /// Loads one byte per [`FAULT_AROUND`] block of `[offset, offset+len)`
    /// so that pages not yet in the page table are mapped in batches
    /// before a store: a read fault maps the cached pages around it (up
    /// to 16, writable in a shared mapping), a write fault only its own
    /// page. A block already mapped costs one load. Each touched page that
    /// is a hole gets allocated (a zeroed page), so callers touch only
    /// resident ranges ([`HostMap::resident_run`]).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping.
    pub fn prefault(&self, offset: u64, len: u64) -> Result<(), HostMapError> {
        self.at("prefault", offset, len)?;
        let end = offset + len;
        let mut at = offset;
        while at < end {
            // SAFETY: `offset <= at < end <= self.len`: one byte inside the
            // live mapping. A volatile load forms no reference and is not
            // elided; its value is discarded.
            unsafe { self.ptr.as_ptr().add(at as usize).read_volatile() };
            at = (at / FAULT_AROUND + 1) * FAULT_AROUND;
        }
        Ok(())
    }

    /// The index (from `offset`) and value of the first byte of `[offset,
    /// offset+len)` that is not `expect`, or `None`. Word-wise: 256-byte
    /// blocks are OR-reduced without early exit, only a differing block is
    /// scanned byte by byte (and skipped if its bytes changed back meanwhile).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping.
    pub fn find_not(
        &self,
        offset: u64,
        len: u64,
        expect: u8,
    ) -> Result<Option<(u64, u8)>, HostMapError> {
        let base = self.at("find_not", offset, len)?.cast_const();
        let len = len as usize;
        let pattern = u64::from_ne_bytes([expect; 8]);
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(BLOCK);
            // SAFETY: `done + n <= len`, so the `n` bytes at `base + done` lie
            // inside the checked range of the live mapping.
            let bad = unsafe { scan_block(base.add(done), n, pattern) };
            if let Some((i, seen)) = bad {
                return Ok(Some(((done + i) as u64, seen)));
            }
            done += n;
        }
        Ok(None)
    }

    /// Whether the page holding `offset` is resident, and how many bytes of
    /// `[offset, offset+len)` from there lie in pages of the same residency
    /// (`mincore`, [`MINCORE_BATCH`] pages per call). Queries never fault
    /// pages in. Residency can change right after the call; callers use it
    /// as a hint only (a page punched meanwhile reads as zeros either way).
    ///
    /// # Errors
    /// `OutOfRange`, or `Os` if `mincore` fails.
    pub fn resident_run(&self, offset: u64, len: u64) -> Result<Residency, HostMapError> {
        self.at("resident_run", offset, len)?;
        if len == 0 {
            return Ok(Residency {
                resident: false,
                len: 0,
            });
        }
        let end = offset + len;
        let mut page = offset / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        let mut vec = [0u8; MINCORE_BATCH];
        let mut first = None;
        while page <= last {
            let n = ((last - page + 1) as usize).min(MINCORE_BATCH);
            let addr = self.at("resident_run", page * PAGE_SIZE, 0)?;
            let bytes = (n as u64 * PAGE_SIZE).min(self.len() - page * PAGE_SIZE);
            // SAFETY: `addr` is page-aligned (the mapping is) and
            // `[addr, addr+bytes)` lies inside the live mapping; `vec` has
            // room for the `n` = ceil(bytes / 4 KiB) entries the call writes.
            let r = unsafe { libc::mincore(addr.cast(), bytes as usize, vec.as_mut_ptr()) };
            if r < 0 {
                return Err(last_os("mincore"));
            }
            let resident = *first.get_or_insert(vec[0] & 1 == 1);
            if let Some(k) = vec[..n].iter().position(|&v| (v & 1 == 1) != resident) {
                let stop = (page + k as u64) * PAGE_SIZE;
                return Ok(Residency {
                    resident,
                    len: stop - offset,
                });
            }
            page += n as u64;
        }
        Ok(Residency {
            resident: first.unwrap_or(false),
            len,
        })
    }
}

/// Stores `len` copies of `byte` at `p` with non-temporal (streaming)
/// stores, then `sfence`: no read-for-ownership of each line, no cache
/// pollution. `memset` in pieces of [`STREAM_MIN`] (the model's I/O size)
/// runs ~20 % slower here than one `memset` of hundreds of MiB, which
/// the CPU streams itself; this matches the latter. The `sfence` orders
/// the weakly ordered stores before any later store (a lock release), so
/// other threads see the bytes as after a `memset`.
///
/// # Safety
/// `p` must be valid for writes of `len` bytes.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_fill(p: *mut u8, len: usize, byte: u8) {
    use std::arch::x86_64::{__m128i, _mm_set1_epi8, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    let head = p.align_offset(LINE).min(len);
    let body = (len - head) / LINE * LINE;
    // SAFETY: `head <= len` bytes at `p`, inside the caller's range.
    unsafe { std::ptr::write_bytes(p, byte, head) };
    // SAFETY: SSE2 is part of the x86-64 baseline; no memory is touched.
    let v = unsafe { _mm_set1_epi8(byte as i8) };
    for line in (head..head + body).step_by(LINE) {
        for part in 0..LINE / 16 {
            // SAFETY: `line + 16 * part + 16 <= head + body <= len`, and
            // `p + line` is 64-byte aligned, so each 16-byte store is
            // aligned and inside the caller's range.
            unsafe { _mm_stream_si128(p.add(line + 16 * part).cast::<__m128i>(), v) };
        }
    }
    // SAFETY: SSE is part of the x86-64 baseline; a fence touches no memory.
    unsafe { _mm_sfence() };
    // SAFETY: the tail `[head + body, len)` is inside the caller's range.
    unsafe { std::ptr::write_bytes(p.add(head + body), byte, len - head - body) };
}

/// `memset` where streaming stores are not available.
///
/// # Safety
/// `p` must be valid for writes of `len` bytes.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_fill(p: *mut u8, len: usize, byte: u8) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::write_bytes(p, byte, len) };
}

/// `fstat(fd).st_size`.
fn file_size(fd: BorrowedFd<'_>) -> Result<u64, HostMapError> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable for a whole `struct stat`, which fstat fills
    // on success.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(last_os("fstat"));
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let size = unsafe { st.assume_init() }.st_size;
    Ok(u64::try_from(size).unwrap_or(0))
}

/// The first byte of the `n <= BLOCK` bytes at `p` that is not the byte
/// `pattern` repeats: a full block is OR-reduced word-wise first and only
/// scanned byte by byte if it differs.
///
/// # Safety
/// `p` must be valid for reads of `n` bytes.
unsafe fn scan_block(p: *const u8, n: usize, pattern: u64) -> Option<(usize, u8)> {
    // SAFETY: a full block is `BLOCK` valid bytes (caller's contract).
    if n == BLOCK && unsafe { block_diff(p, pattern) } == 0 {
        return None;
    }
    // SAFETY: `n` valid bytes (caller's contract).
    unsafe { first_byte_not(p, n, pattern as u8) }
}

/// OR of `word ^ pattern` over the 32 (unaligned) words of a 256-byte block.
///
/// # Safety
/// `p` must be valid for reads of [`BLOCK`] bytes.
unsafe fn block_diff(p: *const u8, pattern: u64) -> u64 {
    let mut diff = 0u64;
    for w in 0..BLOCK / 8 {
        // SAFETY: `8 * w + 8 <= BLOCK`, inside the caller's valid range; an
        // unaligned read forms no reference. A word another thread is
        // storing to reads as some mix of old and new bytes.
        diff |= unsafe { p.add(8 * w).cast::<u64>().read_unaligned() } ^ pattern;
    }
    diff
}

/// Index and value of the first of `n` bytes at `p` that is not `expect`.
///
/// # Safety
/// `p` must be valid for reads of `n` bytes.
unsafe fn first_byte_not(p: *const u8, n: usize, expect: u8) -> Option<(usize, u8)> {
    (0..n).find_map(|i| {
        // SAFETY: `i < n`, inside the caller's valid range. Each byte is read
        // once, so the value reported is the value compared.
        let b = unsafe { p.add(i).read() };
        (b != expect).then_some((i, b))
    })
}

impl Drop for HostMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping this value created and
        // owns; no reference into it exists and nothing uses it after drop.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    const P: u64 = PAGE_SIZE;

    /// A memfd of `size` bytes, sealed against shrinking if `seal`.
    fn memfd(size: u64, seal: bool) -> OwnedFd {
        // SAFETY: the name is a NUL-terminated static string.
        let fd = unsafe {
            libc::memfd_create(
                c"hostmem-test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on an fd we own; no memory arguments.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) }, 0);
        if seal {
            // SAFETY: F_ADD_SEALS on an fd we own; no memory arguments.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(r, 0);
        }
        fd
    }

    fn punch(fd: &OwnedFd, off: u64, len: u64) {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an fd we own; no memory arguments.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as i64, len as i64) };
        assert_eq!(r, 0);
    }

    fn map(pages: u64) -> (OwnedFd, HostMap) {
        let fd = memfd(pages * P, true);
        let m = HostMap::new(fd.as_fd()).unwrap();
        (fd, m)
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<HostMap>();
    }

    #[test]
    fn maps_the_whole_file() {
        let (_fd, m) = map(3);
        assert_eq!(m.len(), 3 * P);
        assert!(!m.is_empty());
    }

    #[test]
    fn unsealed_file_is_refused() {
        let fd = memfd(P, false);
        assert!(matches!(
            HostMap::new(fd.as_fd()),
            Err(HostMapError::NotSealed { .. })
        ));
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        let fd = memfd(0, true);
        assert_eq!(
            HostMap::new(fd.as_fd()).unwrap_err(),
            HostMapError::Length { size: 0 }
        );
        let fd = memfd(1 << 62, true);
        assert_eq!(
            HostMap::new(fd.as_fd()).unwrap_err(),
            HostMapError::Length { size: 1 << 62 }
        );
    }

    #[test]
    fn budget_refuses_what_would_exceed_it() {
        let c = AtomicU64::new(0);
        assert_eq!(reserve(&c, 6, 10), Ok(()));
        assert_eq!(reserve(&c, 5, 10), Err(6));
        assert_eq!(reserve(&c, 4, 10), Ok(()));
        assert_eq!(reserve(&c, u64::MAX, u64::MAX), Err(10));
        assert_eq!(c.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn write_read_fill_round_trip() {
        let (_fd, m) = map(2);
        m.fill(0, 2 * P, 0x11).unwrap();
        m.write(P - 2, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 6];
        m.read(P - 3, &mut b).unwrap();
        assert_eq!(b, [0x11, 1, 2, 3, 4, 0x11]);
    }

    #[test]
    fn out_of_range_is_an_error_and_touches_nothing() {
        let (_fd, m) = map(1);
        let oob = |r: Result<(), HostMapError>| matches!(r, Err(HostMapError::OutOfRange { .. }));
        assert!(oob(m.write(P - 1, &[9, 9])));
        assert!(oob(m.fill(u64::MAX, 2, 9)));
        assert!(oob(m.read(P, &mut [0u8; 1])));
        assert!(m.find_not(1, P, 0).is_err());
        assert!(m.resident_run(P, 1).is_err());
        assert_eq!(m.find_not(0, P, 0), Ok(None));
        m.read(P, &mut []).unwrap();
    }

    #[test]
    fn find_not_reports_first_bad_byte_anywhere() {
        let (_fd, m) = map(2);
        for at in [0u64, 7, 255, 256, 257, 4095, 4096, 8000, 2 * P - 1] {
            m.fill(0, 2 * P, 3).unwrap();
            m.write(at, &[4]).unwrap();
            assert_eq!(m.find_not(0, 2 * P, 3), Ok(Some((at, 4))), "at {at}");
            // From an unaligned start, and with a short tail.
            if at >= 5 {
                assert_eq!(m.find_not(5, at - 4, 3), Ok(Some((at - 5, 4))));
                assert_eq!(m.find_not(5, at - 5, 3), Ok(None));
            }
        }
        assert_eq!(m.find_not(0, 0, 1), Ok(None));
    }

    #[test]
    fn punched_pages_read_zero_through_the_mapping() {
        let (fd, m) = map(2);
        m.fill(0, 2 * P, 0xab).unwrap();
        punch(&fd, 0, P);
        assert_eq!(m.find_not(0, P, 0), Ok(None));
        assert_eq!(m.find_not(P, P, 0xab), Ok(None));
    }

    #[test]
    fn resident_run_follows_written_pages() {
        let (fd, m) = map(4);
        let run = |off, len| m.resident_run(off, len).unwrap();
        let r = |resident, len| Residency { resident, len };
        assert_eq!(run(0, 4 * P), r(false, 4 * P));
        m.fill(P, 2 * P, 1).unwrap();
        assert_eq!(run(0, 4 * P), r(false, P));
        assert_eq!(run(100, 4 * P - 100), r(false, P - 100));
        assert_eq!(run(P + 5, 3 * P - 5), r(true, 2 * P - 5));
        assert_eq!(run(P, P), r(true, P));
        assert_eq!(run(3 * P, P), r(false, P));
        assert_eq!(run(0, 0), r(false, 0));
        punch(&fd, P, P);
        assert_eq!(run(0, 4 * P), r(false, 2 * P));
    }

    #[test]
    fn streaming_fill_writes_exactly_its_range() {
        let (_fd, m) = map(600);
        for (off, len) in [
            (0, STREAM_MIN),
            (13, STREAM_MIN + 77),
            (P - 1, 2 * STREAM_MIN + 1),
        ] {
            m.fill(0, 600 * P, 1).unwrap();
            m.fill(off, len, 2).unwrap();
            assert_eq!(m.find_not(off, len, 2), Ok(None));
            assert_eq!(m.find_not(0, off, 1), Ok(None));
            let end = off + len;
            assert_eq!(m.find_not(end, 600 * P - end, 1), Ok(None));
        }
    }

    #[test]
    fn prefault_keeps_contents_and_checks_bounds() {
        let (_fd, m) = map(40);
        m.fill(0, 40 * P, 6).unwrap();
        m.prefault(100, 40 * P - 100).unwrap();
        m.prefault(0, 0).unwrap();
        assert_eq!(m.find_not(0, 40 * P, 6), Ok(None));
        assert!(m.prefault(P, 40 * P).is_err());
    }

    #[test]
    fn resident_run_spans_mincore_batches() {
        let pages = 3 * MINCORE_BATCH as u64;
        let (_fd, m) = map(pages);
        m.fill(0, (pages - 1) * P, 5).unwrap();
        let got = m.resident_run(P, (pages - 1) * P).unwrap();
        assert_eq!(
            got,
            Residency {
                resident: true,
                len: (pages - 2) * P
            }
        );
    }

    #[test]
    fn threads_share_one_mapping() {
        let (_fd, m) = map(8);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || m.fill(t * 2 * P, 2 * P, t as u8 + 1).unwrap());
            }
        });
        for t in 0..4u64 {
            assert_eq!(m.find_not(t * 2 * P, 2 * P, t as u8 + 1), Ok(None));
        }
    }
}
