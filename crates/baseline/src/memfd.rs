//! [`BareMemfd`] and [`BareMap`]: the memory of the `fault`, `convert` and
//! `access` baselines.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use privmem_mem::{HostMap, Memfd, Seal};

use crate::error::BaselineError;

/// A sparse memfd of a fixed size: sealed against shrinking and growing, so
/// no holder of its fd (not even a [`BareMemfd::file`] clone) can truncate
/// it under a mapping.
#[derive(Debug)]
pub struct BareMemfd {
    memfd: Memfd,
}

impl BareMemfd {
    /// `memfd_create` + `ftruncate(size)` + the size seals.
    ///
    /// # Errors
    /// `Mem` naming the call that failed.
    pub fn new(size: u64) -> Result<BareMemfd, BaselineError> {
        let memfd = Memfd::create("privmem-bench", size, Seal::FixedSize)?;
        Ok(BareMemfd { memfd })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.memfd.size()
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE, off, len)`.
    ///
    /// # Errors
    /// `Mem` if the call fails.
    pub fn punch(&self, off: u64, len: u64) -> Result<(), BaselineError> {
        Ok(self.memfd.punch(off, len)?)
    }

    /// A `dup` of the fd as a `File`, for plain `pread`/`pwrite` (its size is
    /// sealed: `set_len` fails with `EPERM`).
    ///
    /// # Errors
    /// `Mem` if `dup` fails.
    pub fn file(&self) -> Result<File, BaselineError> {
        Ok(self.memfd.file()?)
    }

    /// Writes `len` bytes of `byte` at `off` with `pwrite` (allocating the
    /// pages without mapping them, as the model writes its memfds).
    ///
    /// # Errors
    /// `Mem` if `dup` fails, `Write` if a write fails.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), BaselineError> {
        let file = self.file()?;
        let buf = vec![byte; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let offset = off + done;
            std::os::unix::fs::FileExt::write_all_at(&file, &buf[..n], offset)
                .map_err(|source| BaselineError::Write { offset, source })?;
            done += n as u64;
        }
        Ok(())
    }

    /// Maps the whole file shared, read/write. Consumes the memfd, so a file
    /// is mapped at most once; the map keeps it (see [`BareMap::memfd`]).
    ///
    /// # Errors
    /// `Mem` if the mapping fails (including the address-space budget).
    pub fn map(self) -> Result<BareMap, BaselineError> {
        let map = HostMap::new(self.memfd.as_fd())?;
        Ok(BareMap { map, memfd: self })
    }
}

impl AsFd for BareMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

/// The one shared mapping of a [`BareMemfd`], reached through vm-memory
/// volatile slices: a plain `memset` and a plain word-wise compare, the
/// `access` baseline's host-side equivalent of the guest's write and check.
#[derive(Debug)]
pub struct BareMap {
    // Unmapped before the memfd is closed (declaration order).
    map: HostMap,
    memfd: BareMemfd,
}

impl BareMap {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.map.len()
    }

    /// Always false: empty files are not mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The mapped file, e.g. to punch it.
    pub fn memfd(&self) -> &BareMemfd {
        &self.memfd
    }

    /// One `memset` of the whole mapping to `byte`.
    ///
    /// # Errors
    /// `Mem` if the mapping's slice cannot be cut (never for a live map).
    pub fn memset(&self, byte: u8) -> Result<(), BaselineError> {
        let s = self.map.slice(0, self.len())?;
        let p = s.ptr_guard_mut();
        // SAFETY: the slice covers the whole live mapping of a file whose
        // size is sealed, so every byte is backed and writable; no Rust
        // reference into the mapping exists.
        unsafe { std::ptr::write_bytes(p.as_ptr(), byte, p.len()) };
        Ok(())
    }

    /// True if every byte of the mapping is `byte`: 64-byte chunks, each
    /// reduced word-wise (vectorisable), stopping at the first differing
    /// chunk.
    ///
    /// # Errors
    /// `Mem` if the mapping's slice cannot be cut (never for a live map).
    pub fn all_equal(&self, byte: u8) -> Result<bool, BaselineError> {
        let s = self.map.slice(0, self.len())?;
        let p = s.ptr_guard();
        // SAFETY: the slice covers the whole live mapping, every byte of
        // which is backed (sealed size); the reads form no reference.
        Ok(unsafe { all_equal(p.as_ptr(), p.len(), byte) })
    }
}

/// True if the `len` bytes at `p` all equal `byte`.
///
/// # Safety
/// `p` must be valid for reads of `len` bytes.
unsafe fn all_equal(p: *const u8, len: usize, byte: u8) -> bool {
    const CHUNK: usize = 64;
    let pat = u64::from_ne_bytes([byte; 8]);
    let body = len / CHUNK * CHUNK;
    for c in (0..body).step_by(CHUNK) {
        let mut diff = 0u64;
        for w in (0..CHUNK).step_by(8) {
            // SAFETY: `c + w + 8 <= body <= len`; an unaligned read forms no
            // reference.
            diff |= unsafe { p.add(c + w).cast::<u64>().read_unaligned() } ^ pat;
        }
        if diff != 0 {
            return false;
        }
    }
    // SAFETY: the tail `[body, len)` lies inside the caller's range.
    (body..len).all(|i| unsafe { p.add(i).read() } == byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_mem::PAGE_SIZE;

    #[test]
    fn punch_zeroes_mapped_bytes() {
        let map = BareMemfd::new(2 * PAGE_SIZE).unwrap().map().unwrap();
        map.memset(0xab).unwrap();
        assert!(map.all_equal(0xab).unwrap());
        map.memfd().punch(0, PAGE_SIZE).unwrap();
        assert!(!map.all_equal(0xab).unwrap());
        assert!(!map.all_equal(0).unwrap());
        map.memfd().punch(PAGE_SIZE, PAGE_SIZE).unwrap();
        assert!(map.all_equal(0).unwrap());
    }

    #[test]
    fn fill_writes_bytes_the_map_sees() {
        let m = BareMemfd::new(3 * PAGE_SIZE).unwrap();
        m.fill(0, 3 * PAGE_SIZE, 7).unwrap();
        let map = m.map().unwrap();
        assert!(map.all_equal(7).unwrap());
        map.memfd().fill(PAGE_SIZE + 5, 1, 8).unwrap();
        assert!(!map.all_equal(7).unwrap());
    }

    #[test]
    fn a_byte_anywhere_breaks_equality() {
        let m = BareMemfd::new(PAGE_SIZE).unwrap();
        let file = m.file().unwrap();
        let map = m.map().unwrap();
        for at in [0u64, 63, 64, 100, PAGE_SIZE - 1] {
            map.memset(1).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[2], at).unwrap();
            assert!(!map.all_equal(1).unwrap(), "at {at}");
        }
    }

    #[test]
    fn the_file_cannot_be_truncated_under_the_map() {
        let m = BareMemfd::new(PAGE_SIZE).unwrap();
        let file = m.file().unwrap();
        let map = m.map().unwrap();
        assert!(file.set_len(0).is_err());
        map.memset(3).unwrap();
        assert!(map.all_equal(3).unwrap());
    }

    #[test]
    fn tail_bytes_are_compared() {
        let mut v = [5u8; 64 + 7];
        // SAFETY: `v` is valid for its length.
        assert!(unsafe { all_equal(v.as_ptr(), v.len(), 5) });
        v[64 + 6] = 4;
        // SAFETY: as above.
        assert!(!unsafe { all_equal(v.as_ptr(), v.len(), 5) });
    }
}
