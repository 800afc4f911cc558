//! [`Mapping`]: one owned `mmap` of guest memory, a rust-vmm
//! [`MmapRegion`] that is unmapped on drop.
//!
//! A `Mapping` never hands out a Rust reference into the memory. Host code
//! moves bytes either through the kernel ([`Mapping::read_checked`] and its
//! siblings, which never raise SIGBUS) or, for memory that cannot raise it,
//! through a [`crate::HostMap`]'s bounds-checked volatile slices. Handing the
//! address to KVM or using it as a raw pointer is `unsafe`
//! ([`Mapping::host_addr`], [`Mapping::as_ptr`]).

use std::fs::File;
use std::os::fd::BorrowedFd;

use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use crate::error::MapError;

/// The size of a page, the unit of `mincore` and `madvise`.
pub const PAGE_SIZE: u64 = 4096;
/// Pages whose residency one `mincore` call reports.
pub(crate) const MINCORE_BATCH: usize = 256;

/// Whether stores through a file mapping reach the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// `MAP_SHARED`: stores reach the file, and every mapping of it sees them.
    Shared,
    /// `MAP_PRIVATE`: copy-on-write; stores stay in this mapping.
    Private,
}

/// Whether a file mapping is also executable ([`Mapping::file_exec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// `PROT_READ|PROT_WRITE`.
    No,
    /// `PROT_READ|PROT_WRITE|PROT_EXEC`.
    Yes,
}

/// Whether pages are resident, for a run of them ([`Mapping::resident_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// The pages of the run hold data (`mincore`: an up-to-date page in the
    /// file's page cache, mapped or not). A hole, a page allocated by
    /// `fallocate` but never written, or a page swapped out is not resident.
    pub resident: bool,
    /// Bytes in the run, from the queried offset.
    pub len: u64,
}

/// A read/write mapping of anonymous shared memory or of a file range.
///
/// The region holds a duplicate of the file's descriptor (vm-memory's
/// [`FileOffset`]) for its whole life, just as the kernel's mapping holds a
/// reference on the file: closing the caller's descriptor changes nothing
/// while the mapping lives.
#[derive(Debug)]
pub struct Mapping {
    region: MmapRegion,
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE,
    /// MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0)`: zeroed shared memory
    /// that reserves nothing until touched.
    ///
    /// # Errors
    /// `Length` if `len` does not fit `usize`; `Os` if `mmap` fails (`EINVAL`
    /// for a zero length).
    pub fn anonymous(len: u64) -> Result<Mapping, MapError> {
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Mapping::build(None, len, flags)
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED or MAP_PRIVATE, fd,
    /// offset)`. The length may run past the end of the file (the kernel
    /// allows it; accesses there fault).
    ///
    /// # Errors
    /// `Os` if duplicating `fd` or `mmap` fails (the kernel's errno, e.g.
    /// `EINVAL` or `ENODEV` for a guest_memfd that refuses the mapping);
    /// `Length` if `len` does not fit `usize`.
    pub fn file(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        share: Share,
    ) -> Result<Mapping, MapError> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| MapError::os("dup", &e))?;
        let file = FileOffset::new(File::from(owned), offset);
        let flags = match share {
            Share::Shared => libc::MAP_SHARED,
            Share::Private => libc::MAP_PRIVATE,
        };
        Mapping::build(Some(file), len, flags)
    }

    /// Like [`Mapping::file`], from offset 0, with `PROT_READ|PROT_WRITE`
    /// plus `PROT_EXEC` when `exec` is [`Exec::Yes`]: what the guest_memfd
    /// mmap checks (7.3 refuses `PROT_EXEC` with `EPERM`) are tested with.
    ///
    /// # Errors
    /// As [`Mapping::file`].
    pub fn file_exec(
        fd: BorrowedFd<'_>,
        len: u64,
        share: Share,
        exec: Exec,
    ) -> Result<Mapping, MapError> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| MapError::os("dup", &e))?;
        let file = FileOffset::new(File::from(owned), 0);
        let flags = match share {
            Share::Shared => libc::MAP_SHARED,
            Share::Private => libc::MAP_PRIVATE,
        };
        let extra = match exec {
            Exec::Yes => libc::PROT_EXEC,
            Exec::No => 0,
        };
        Mapping::build_prot(Some(file), len, flags, extra)
    }

    fn build(file: Option<FileOffset>, len: u64, flags: i32) -> Result<Mapping, MapError> {
        Mapping::build_prot(file, len, flags, 0)
    }

    fn build_prot(
        file: Option<FileOffset>,
        len: u64,
        flags: i32,
        extra_prot: i32,
    ) -> Result<Mapping, MapError> {
        let size = usize::try_from(len).map_err(|_| MapError::Length { size: len })?;
        let prot = libc::PROT_READ | libc::PROT_WRITE | extra_prot;
        let region = MmapRegion::build(file, size, prot, flags).map_err(MapError::mmap)?;
        Ok(Mapping { region })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.region.size() as u64
    }

    /// True for a mapping of no bytes (`mmap` refuses those, so never).
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    /// The bytes `[offset, offset+len)` as a vm-memory volatile slice,
    /// after checking that they lie inside the mapping.
    ///
    /// CPU loads and stores through the slice raise SIGBUS where the file
    /// has no page to give (past its end, or a guest_memfd page the host may
    /// not touch); use the `_checked` accessors for such memory, or a
    /// [`crate::HostMap`], whose files cannot shrink.
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping.
    pub fn slice(&self, offset: u64, len: u64) -> Result<VolatileSlice<'_>, MapError> {
        self.checked_slice("slice", offset, len)
    }

    /// [`Mapping::slice`], with `op` naming the access in the error.
    pub(crate) fn checked_slice(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<VolatileSlice<'_>, MapError> {
        let oob = || MapError::OutOfRange {
            op,
            offset,
            len,
            size: self.len(),
        };
        let (Ok(off), Ok(n)) = (usize::try_from(offset), usize::try_from(len)) else {
            return Err(oob());
        };
        self.region.get_slice(off, n).map_err(|_| oob())
    }

    /// The host virtual address of the first byte, for KVM's
    /// `userspace_addr` (add an offset below [`Mapping::len`]).
    ///
    /// # Safety
    /// The address is only valid while `self` lives. The caller must make
    /// sure whatever it hands the address to (KVM through a memslot, a
    /// system call) stops using it before `self` is dropped, e.g. by keeping
    /// `self` alive until the memslot is deleted; otherwise KVM would access
    /// whatever is mapped there next.
    pub unsafe fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    /// The first byte as a raw pointer, valid for [`Mapping::len`] bytes
    /// while `self` lives.
    ///
    /// # Safety
    /// The caller must not use the pointer after `self` is dropped, must
    /// stay inside the mapping, and must not form Rust references to bytes
    /// that the kernel, a guest or another thread may write meanwhile: access
    /// them with volatile or atomic operations (as `vm-memory` does).
    pub unsafe fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// `madvise(MADV_REMOVE)` of `[offset, offset+len)`: frees the backing
    /// pages (anonymous shared memory or a shmem file); later reads see
    /// zeros. `offset` must be page-aligned (the kernel answers `EINVAL`).
    ///
    /// # Errors
    /// `OutOfRange` if the range is not inside the mapping; `Os` if
    /// `madvise` fails.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), MapError> {
        let s = self.checked_slice("discard", offset, len)?;
        let p = s.ptr_guard_mut();
        // SAFETY: `[p, p+len)` lies inside the live mapping (checked by
        // `slice`). MADV_REMOVE only replaces the range's pages with zeros;
        // no Rust reference into the mapping exists, so nothing observes a
        // change behind a reference.
        let r = unsafe { libc::madvise(p.as_ptr().cast(), p.len(), libc::MADV_REMOVE) };
        if r < 0 {
            return Err(MapError::last_os("madvise(MADV_REMOVE)"));
        }
        Ok(())
    }

    /// Whether the page holding `offset` is resident, and how many bytes of
    /// `[offset, offset+len)` from there lie in pages of the same residency
    /// (`mincore`, 256 pages per call). Queries never fault
    /// pages in. Residency can change right after the call; callers use it
    /// as a hint only.
    ///
    /// # Errors
    /// `OutOfRange`, or `Os` if `mincore` fails.
    pub fn resident_run(&self, offset: u64, len: u64) -> Result<Residency, MapError> {
        self.checked_slice("resident_run", offset, len)?;
        if len == 0 {
            return Ok(Residency {
                resident: false,
                len: 0,
            });
        }
        let end = offset + len;
        let mut page = offset / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        let mut first = None;
        while page <= last {
            let n = ((last - page + 1) as usize).min(MINCORE_BATCH);
            let start = page * PAGE_SIZE;
            let bytes = (n as u64 * PAGE_SIZE).min(self.len() - start);
            let vec = self.mincore(start, bytes)?;
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

    /// `mincore` of the `bytes <= MINCORE_BATCH` pages at page-aligned
    /// `start`: one byte per page, bit 0 set if resident.
    fn mincore(&self, start: u64, bytes: u64) -> Result<[u8; MINCORE_BATCH], MapError> {
        let s = self.checked_slice("resident_run", start, bytes)?;
        let p = s.ptr_guard();
        let mut vec = [0u8; MINCORE_BATCH];
        debug_assert!(p.len().div_ceil(PAGE_SIZE as usize) <= MINCORE_BATCH);
        // SAFETY: `p` is page-aligned (the mapping and `start` are) and
        // `[p, p+len)` lies inside the live mapping (checked by `slice`);
        // `vec` has room for the ceil(len / 4 KiB) <= MINCORE_BATCH entries
        // the call writes. mincore reads no mapped byte.
        let r = unsafe { libc::mincore(p.as_ptr().cast_mut().cast(), p.len(), vec.as_mut_ptr()) };
        if r < 0 {
            return Err(MapError::last_os("mincore"));
        }
        Ok(vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::{Memfd, Seal};
    use std::os::fd::AsFd;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Mapping>();
    }

    #[test]
    fn zero_and_huge_lengths_are_refused() {
        assert!(matches!(
            Mapping::anonymous(0),
            Err(MapError::Os {
                op: "mmap",
                errno: libc::EINVAL
            })
        ));
        assert!(Mapping::anonymous(u64::MAX).is_err());
    }

    #[test]
    fn slices_are_bounds_checked() {
        let m = Mapping::anonymous(2 * P).unwrap();
        assert_eq!(m.len(), 2 * P);
        assert!(!m.is_empty());
        assert!(m.checked_slice("t", 0, 2 * P).is_ok());
        assert!(m.checked_slice("t", 2 * P, 0).is_ok());
        let oob = |r: Result<VolatileSlice<'_>, MapError>| {
            matches!(r, Err(MapError::OutOfRange { op: "t", .. }))
        };
        assert!(oob(m.checked_slice("t", 1, 2 * P)));
        assert!(oob(m.checked_slice("t", u64::MAX, 2)));
        assert!(oob(m.checked_slice("t", 2 * P + 1, 0)));
    }

    #[test]
    fn private_file_mapping_keeps_stores_to_itself() {
        let f = Memfd::create("t", P, Seal::FixedSize).unwrap();
        let private = Mapping::file(f.as_fd(), 0, P, Share::Private).unwrap();
        let shared = Mapping::file(f.as_fd(), 0, P, Share::Shared).unwrap();
        private.write_checked(0, &[7]).unwrap();
        let mut b = [9u8];
        shared.read_checked(0, &mut b).unwrap();
        assert_eq!(b, [0]);
        private.read_checked(0, &mut b).unwrap();
        assert_eq!(b, [7]);
    }

    #[test]
    fn file_mapping_at_an_offset_sees_that_offset() {
        let f = Memfd::create("t", 3 * P, Seal::FixedSize).unwrap();
        let whole = Mapping::file(f.as_fd(), 0, 3 * P, Share::Shared).unwrap();
        let tail = Mapping::file(f.as_fd(), 2 * P, P, Share::Shared).unwrap();
        whole.write_checked(2 * P + 5, &[3]).unwrap();
        let mut b = [0u8];
        tail.read_checked(5, &mut b).unwrap();
        assert_eq!(b, [3]);
    }

    #[test]
    fn mapping_outlives_the_callers_descriptor() {
        let f = Memfd::create("t", P, Seal::FixedSize).unwrap();
        let m = Mapping::file(f.as_fd(), 0, P, Share::Shared).unwrap();
        drop(f);
        m.write_checked(1, &[4]).unwrap();
        let mut b = [0u8];
        m.read_checked(1, &mut b).unwrap();
        assert_eq!(b, [4]);
    }

    #[test]
    fn discard_zeroes_anonymous_pages_and_checks_bounds() {
        let m = Mapping::anonymous(2 * P).unwrap();
        m.fill_checked(0, 2 * P, 0xaa).unwrap();
        m.discard(0, P).unwrap();
        let mut b = [0u8; 2];
        m.read_checked(P - 1, &mut b).unwrap();
        assert_eq!(b, [0, 0xaa]);
        assert!(matches!(
            m.discard(P, 2 * P),
            Err(MapError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.discard(1, P),
            Err(MapError::Os {
                errno: libc::EINVAL,
                ..
            })
        ));
    }

    #[test]
    fn resident_run_follows_written_pages() {
        let f = Memfd::create("t", 4 * P, Seal::FixedSize).unwrap();
        let m = Mapping::file(f.as_fd(), 0, 4 * P, Share::Shared).unwrap();
        let run = |off, len| m.resident_run(off, len).unwrap();
        let r = |resident, len| Residency { resident, len };
        assert_eq!(run(0, 4 * P), r(false, 4 * P));
        m.fill_checked(P, 2 * P, 1).unwrap();
        assert_eq!(run(0, 4 * P), r(false, P));
        assert_eq!(run(100, 4 * P - 100), r(false, P - 100));
        assert_eq!(run(P + 5, 3 * P - 5), r(true, 2 * P - 5));
        assert_eq!(run(P, P), r(true, P));
        assert_eq!(run(3 * P, P), r(false, P));
        assert_eq!(run(0, 0), r(false, 0));
        f.punch(P, P).unwrap();
        assert_eq!(run(0, 4 * P), r(false, 2 * P));
        assert!(m.resident_run(4 * P, 1).is_err());
    }

    #[test]
    fn resident_run_spans_mincore_batches() {
        let pages = 3 * MINCORE_BATCH as u64;
        let f = Memfd::create("t", pages * P, Seal::FixedSize).unwrap();
        let m = Mapping::file(f.as_fd(), 0, pages * P, Share::Shared).unwrap();
        m.fill_checked(0, (pages - 1) * P, 5).unwrap();
        let got = m.resident_run(P, (pages - 1) * P).unwrap();
        let want = Residency {
            resident: true,
            len: (pages - 2) * P,
        };
        assert_eq!(got, want);
    }
}
