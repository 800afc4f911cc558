//! [`Memfd`]: an anonymous file of a given size, the backing behind
//! `userspace_addr` and the baselines' memory.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

use crate::error::MapError;

/// Whether a [`Memfd`]'s size may change after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// No seals: anyone holding the fd may truncate it, and a load or store
    /// through a mapping past the new end raises SIGBUS.
    None,
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: the size is fixed for
    /// good, so every byte of a whole-file mapping stays backed (what
    /// [`crate::HostMap::new`] requires).
    FixedSize,
}

/// A `memfd_create` file of `size` bytes (all holes at first).
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
}

impl Memfd {
    /// `memfd_create(name, MFD_CLOEXEC)` + `ftruncate(size)`, then the seals
    /// `seal` asks for (`MFD_ALLOW_SEALING` only then).
    ///
    /// # Errors
    /// `Os` naming the call that failed.
    pub fn create(name: &str, size: u64, seal: Seal) -> Result<Memfd, MapError> {
        let flags = match seal {
            Seal::None => MemfdFlags::CLOEXEC,
            Seal::FixedSize => MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        };
        let fd = rustix::fs::memfd_create(name, flags)
            .map_err(|e| MapError::rustix("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| MapError::rustix("ftruncate", e))?;
        if seal == Seal::FixedSize {
            let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
            rustix::fs::fcntl_add_seals(&fd, seals)
                .map_err(|e| MapError::rustix("fcntl(F_ADD_SEALS)", e))?;
        }
        Ok(Memfd { fd, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE, off, len)`: frees the range's pages
    /// (later reads see zeros, through mappings too).
    ///
    /// # Errors
    /// `Os` if the call fails.
    pub fn punch(&self, off: u64, len: u64) -> Result<(), MapError> {
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.fd, mode, off, len)
            .map_err(|e| MapError::rustix("fallocate(PUNCH_HOLE)", e))
    }

    /// A `dup` of the fd as a `File`, for `pread`/`pwrite`. On a
    /// [`Seal::FixedSize`] file, `set_len` through it fails with `EPERM`.
    ///
    /// # Errors
    /// `Os` if `dup` fails.
    pub fn file(&self) -> Result<File, MapError> {
        let fd = self.fd.try_clone().map_err(|e| MapError::os("dup", &e))?;
        Ok(File::from(fd))
    }

    /// Gives up the memfd, keeping its fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_memfd_refuses_truncation() {
        let m = Memfd::create("t", 8192, Seal::FixedSize).unwrap();
        assert_eq!(m.size(), 8192);
        let f = m.file().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192);
        let err = f.set_len(4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(f.set_len(16384).is_err());
    }

    #[test]
    fn unsealed_memfd_can_be_truncated() {
        let m = Memfd::create("t", 8192, Seal::None).unwrap();
        m.file().unwrap().set_len(4096).unwrap();
    }

    #[test]
    fn punch_frees_written_pages() {
        use std::os::unix::fs::FileExt;
        let m = Memfd::create("t", 8192, Seal::FixedSize).unwrap();
        let f = m.file().unwrap();
        f.write_all_at(&[1u8; 8192], 0).unwrap();
        m.punch(0, 4096).unwrap();
        let mut b = [9u8; 2];
        f.read_exact_at(&mut b, 4095).unwrap();
        assert_eq!(b, [0, 1]);
        assert!(m.punch(u64::MAX, 1).is_err());
    }
}
