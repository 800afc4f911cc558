//! [`HostMap`]: a shared read/write mapping of a whole sealed memfd, for
//! host code that moves bytes in and out of memory other threads use at the
//! same time (the model's page store, whose other users are other vCPUs;
//! the baselines' memory). Every method takes an offset and returns
//! [`MapError::OutOfRange`] instead of panicking.
//!
//! # Access stance (rust-vmm `vm-memory`)
//!
//! Memory shared with a guest may change under us at any time. `HostMap`
//! therefore never forms a Rust reference (`&[u8]`, `&mut [u8]`) into the
//! mapping: bytes move through vm-memory [`VolatileSlice`]s, cut from the
//! mapping with a bounds check, between the mapping and caller-owned
//! buffers (`copy_to`/`copy_from`, and raw loops over the slice's pointer
//! for streaming stores and the word-wise compare). A copy that races with
//! another thread's store to the same bytes yields some mix of old and new
//! bytes (possibly torn words), exactly what a guest sees when two vCPUs
//! race on real memory; the values are plain bytes, so no Rust invariant
//! depends on them.
//!
//! # No SIGBUS inside the bounds
//!
//! A load or store past the end of a file raises SIGBUS. [`HostMap::new`]
//! therefore maps only files sealed with `F_SEAL_SHRINK` (a memfd created
//! with `MFD_ALLOW_SEALING`, e.g. [`crate::Seal::FixedSize`]), and always
//! exactly the file's size, so every in-bounds byte stays backed for the
//! mapping's life. (Allocation failure when a store or load faults in a page
//! that is not resident would still kill the process, as it would any
//! program touching shared memory; the model only goes through the mapping
//! for resident pages, see [`HostMap::resident_run`].)
//!
//! # Address-space budget
//!
//! A mapping reserves virtual address space only (nothing populated), but
//! x86-64 user space is 128 TiB and tests create files of up to 2^62 bytes.
//! So one mapping is at most [`MAX_MAP_LEN`] (1 TiB) and all live `HostMap`s
//! of the process together at most [`MAP_BUDGET`] (16 TiB, an eighth of the
//! address space). Beyond either, [`HostMap::new`] fails and the caller
//! keeps using `pread`/`pwrite`.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{VolatileMemory, VolatileSlice};

use crate::error::MapError;
use crate::mapping::{Mapping, Residency, Share};
use crate::scan;

/// Largest file [`HostMap::new`] maps: 1 TiB.
pub const MAX_MAP_LEN: u64 = 1 << 40;
/// Most bytes all live [`HostMap`]s of the process may map together: 16 TiB.
pub const MAP_BUDGET: u64 = 16 << 40;

/// Bytes currently mapped by live `HostMap`s.
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// The kernel's default `fault_around_bytes`: a read fault maps the cached
/// pages of the aligned 64 KiB block around it.
const FAULT_AROUND: u64 = 64 << 10;
/// Fills of at least this many bytes use streaming stores.
const STREAM_MIN: u64 = 1 << 20;

/// A share of [`MAPPED`], given back on drop.
#[derive(Debug)]
struct Reservation {
    len: u64,
}

impl Reservation {
    /// Reserves `len` bytes of [`MAP_BUDGET`].
    fn take(len: u64) -> Result<Reservation, MapError> {
        reserve(&MAPPED, len, MAP_BUDGET)
            .map_err(|mapped| MapError::Budget { size: len, mapped })?;
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

/// A `MAP_SHARED` read/write mapping of a whole sealed memfd, unmapped on
/// drop. See the module docs for the access stance and limits.
#[derive(Debug)]
pub struct HostMap {
    map: Mapping,
    // Dropped after `map` unmapped the range.
    _budget: Reservation,
}

impl HostMap {
    /// Maps all of `fd` (a file sealed with `F_SEAL_SHRINK`) shared,
    /// read/write.
    ///
    /// # Errors
    /// `Length` (empty or above [`MAX_MAP_LEN`]), `Budget`, `NotSealed`, or
    /// `Os` for a failed `fstat`/`fcntl`/`dup`/`mmap`.
    pub fn new(fd: BorrowedFd<'_>) -> Result<HostMap, MapError> {
        let st = rustix::fs::fstat(fd).map_err(|e| MapError::rustix("fstat", e))?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size == 0 || size > MAX_MAP_LEN {
            return Err(MapError::Length { size });
        }
        let seals = rustix::fs::fcntl_get_seals(fd)
            .map_err(|e| MapError::rustix("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(MapError::NotSealed {
                seals: seals.bits(),
            });
        }
        let budget = Reservation::take(size)?;
        let map = Mapping::file(fd, 0, size, Share::Shared)?;
        Ok(HostMap {
            map,
            _budget: budget,
        })
    }

    /// Length in bytes (the file's size when mapped).
    pub fn len(&self) -> u64 {
        self.map.len()
    }

    /// Always false: empty files are not mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes `[offset, offset+len)` as a vm-memory volatile slice, after
    /// checking that they lie inside the mapping. Every byte of it is backed
    /// (module docs), so accesses through it never raise SIGBUS.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping.
    pub fn slice(&self, offset: u64, len: u64) -> Result<VolatileSlice<'_>, MapError> {
        self.map.checked_slice("slice", offset, len)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing copied).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MapError> {
        let s = self.map.checked_slice("read", offset, buf.len() as u64)?;
        s.copy_to(buf);
        Ok(())
    }

    /// Copies `data` to `offset`.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing copied).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), MapError> {
        let s = self.map.checked_slice("write", offset, data.len() as u64)?;
        s.copy_from(data);
        Ok(())
    }

    /// Stores `len` copies of `byte` at `offset`: `memset`, or from 1 MiB
    /// on, non-temporal stores (as one `memset` of hundreds of MiB does).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping (nothing stored).
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), MapError> {
        let s = self.map.checked_slice("fill", offset, len)?;
        let p = s.ptr_guard_mut();
        if len >= STREAM_MIN {
            // SAFETY: `p` is valid for `p.len()` bytes of the live, writable
            // mapping (bounds-checked by `slice`); no reference into the
            // mapping exists.
            unsafe { scan::stream_fill(p.as_ptr(), p.len(), byte) };
        } else {
            // SAFETY: as above.
            unsafe { std::ptr::write_bytes(p.as_ptr(), byte, p.len()) };
        }
        Ok(())
    }

    /// Loads one byte per 64 KiB block of `[offset, offset+len)` so that
    /// pages not yet in the page table are mapped in batches before a store:
    /// a read fault maps the cached pages around it (up to 16, writable in a
    /// shared mapping), a write fault only its own page. A block already
    /// mapped costs one load. Each touched page that is a hole gets
    /// allocated (a zeroed page), so callers touch only resident ranges
    /// ([`HostMap::resident_run`]).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping.
    pub fn prefault(&self, offset: u64, len: u64) -> Result<(), MapError> {
        let s = self.map.checked_slice("prefault", offset, len)?;
        let mut at = 0u64;
        while at < len {
            // A volatile load, never elided; its value is discarded.
            let byte = s
                .get_ref::<u8>(at as usize)
                .map_err(|_| MapError::OutOfRange {
                    op: "prefault",
                    offset: offset + at,
                    len: 1,
                    size: self.len(),
                })?;
            byte.load();
            at = ((offset + at) / FAULT_AROUND + 1) * FAULT_AROUND - offset;
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
    ) -> Result<Option<(u64, u8)>, MapError> {
        let s = self.map.checked_slice("find_not", offset, len)?;
        let p = s.ptr_guard();
        // SAFETY: `p` is valid for reads of `p.len()` bytes of the live
        // mapping (bounds-checked by `slice`; every in-bounds byte is backed).
        let bad = unsafe { scan::scan(p.as_ptr(), p.len(), expect) };
        Ok(bad.map(|(i, seen)| (i as u64, seen)))
    }

    /// Whether the page holding `offset` is resident, and how many bytes of
    /// `[offset, offset+len)` from there lie in pages of the same residency
    /// ([`Mapping::resident_run`]). A page punched meanwhile reads as zeros
    /// whichever path a caller then takes.
    ///
    /// # Errors
    /// `OutOfRange`, or `Os` if `mincore` fails.
    pub fn resident_run(&self, offset: u64, len: u64) -> Result<Residency, MapError> {
        self.map.resident_run(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::PAGE_SIZE;
    use crate::memfd::{Memfd, Seal};
    use std::os::fd::AsFd;

    const P: u64 = PAGE_SIZE;

    fn map(pages: u64) -> (Memfd, HostMap) {
        let fd = Memfd::create("hostmap-test", pages * P, Seal::FixedSize).unwrap();
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
        let fd = Memfd::create("t", P, Seal::None).unwrap();
        assert!(matches!(
            HostMap::new(fd.as_fd()),
            Err(MapError::NotSealed { .. })
        ));
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        let fd = Memfd::create("t", 0, Seal::FixedSize).unwrap();
        assert_eq!(
            HostMap::new(fd.as_fd()).unwrap_err(),
            MapError::Length { size: 0 }
        );
        let fd = Memfd::create("t", 1 << 62, Seal::FixedSize).unwrap();
        assert_eq!(
            HostMap::new(fd.as_fd()).unwrap_err(),
            MapError::Length { size: 1 << 62 }
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
    fn live_maps_hold_their_share_of_the_budget() {
        // Other tests of this binary map concurrently: compare through a
        // mapping far larger than any of theirs.
        let before = MAPPED.load(Ordering::Relaxed);
        let (_fd, m) = map(1 << 18);
        assert!(MAPPED.load(Ordering::Relaxed) >= before + m.len() / 2);
        drop(m);
        assert!(MAPPED.load(Ordering::Relaxed) < before + (1 << 18) * P / 2);
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
        let oob = |r: Result<(), MapError>| matches!(r, Err(MapError::OutOfRange { .. }));
        m.fill(0, P, 5).unwrap();
        assert!(oob(m.write(P - 1, &[9, 9])));
        assert!(oob(m.fill(u64::MAX, 2, 9)));
        assert!(oob(m.fill(1, P, 9)));
        assert!(oob(m.read(P, &mut [0u8; 1])));
        assert!(m.find_not(1, P, 0).is_err());
        assert!(m.resident_run(P, 1).is_err());
        assert!(m.slice(P, 1).is_err());
        assert_eq!(m.find_not(0, P, 5), Ok(None));
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
        fd.punch(0, P).unwrap();
        assert_eq!(m.find_not(0, P, 0), Ok(None));
        assert_eq!(m.find_not(P, P, 0xab), Ok(None));
    }

    #[test]
    fn resident_run_follows_written_pages() {
        let (fd, m) = map(4);
        let r = |resident, len| Residency { resident, len };
        assert_eq!(m.resident_run(0, 4 * P).unwrap(), r(false, 4 * P));
        m.fill(P, 2 * P, 1).unwrap();
        assert_eq!(
            m.resident_run(P + 5, 3 * P - 5).unwrap(),
            r(true, 2 * P - 5)
        );
        fd.punch(P, P).unwrap();
        assert_eq!(m.resident_run(0, 4 * P).unwrap(), r(false, 2 * P));
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

    #[test]
    fn volatile_slices_see_the_mapping() {
        use vm_memory::Bytes;
        let (_fd, m) = map(1);
        m.fill(0, P, 9).unwrap();
        let s = m.slice(10, 20).unwrap();
        assert_eq!(s.len(), 20);
        s.write_slice(&[1, 2], 0).unwrap();
        let mut b = [0u8; 3];
        m.read(9, &mut b).unwrap();
        assert_eq!(b, [9, 1, 2]);
    }
}
