//! The crate's errors: [`MapError`] for creating and using a mapping, and
//! [`Fault`] for a kernel-mediated access that hit a page the kernel would
//! not let it touch.

use crate::hostmap::{MAP_BUDGET, MAX_MAP_LEN};

/// Why a mapping could not be created or accessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The length to map is zero, does not fit the address space, or (for a
    /// [`crate::HostMap`]) the file is larger than [`MAX_MAP_LEN`].
    #[error("cannot map {size:#x} bytes: empty, or above the {MAX_MAP_LEN:#x}-byte cap")]
    Length {
        /// The requested length (the file size for a `HostMap`).
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
        /// The file's seals (`F_GET_SEALS`).
        seals: u32,
    },
    /// A system call failed.
    #[error("{op} failed with errno {errno}")]
    Os {
        /// The call, e.g. "mmap".
        op: &'static str,
        /// The raw errno.
        errno: i32,
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
    /// A helper process privmem forked (e.g. for
    /// [`crate::Mapping::inject_hwpoison`]) did not finish its job.
    #[error("{op}: the helper process {how}")]
    Helper {
        /// The helper's job, e.g. "madvise(MADV_HWPOISON)".
        op: &'static str,
        /// What happened to it, e.g. "was killed by signal 7".
        how: String,
    },
}

impl MapError {
    /// The errno closest to the error, for callers that report errnos:
    /// `Os`'s own, `EFAULT` for `OutOfRange`, `EFBIG` for `Length`, `ENOMEM`
    /// for `Budget`, `EPERM` for `NotSealed`, `ECHILD` for `Helper`.
    pub fn errno(&self) -> i32 {
        match self {
            MapError::Os { errno, .. } => *errno,
            MapError::OutOfRange { .. } => libc::EFAULT,
            MapError::Length { .. } => libc::EFBIG,
            MapError::Budget { .. } => libc::ENOMEM,
            MapError::NotSealed { .. } => libc::EPERM,
            MapError::Helper { .. } => libc::ECHILD,
        }
    }

    /// `Os` for `op` with the calling thread's last OS error.
    pub(crate) fn last_os(op: &'static str) -> MapError {
        MapError::os(op, &std::io::Error::last_os_error())
    }

    /// `Os` for `op` with the errno of `e` (`EIO` if it carries none).
    pub(crate) fn os(op: &'static str, e: &std::io::Error) -> MapError {
        MapError::Os {
            op,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// `Os` for `op` from a rustix errno.
    pub(crate) fn rustix(op: &'static str, e: rustix::io::Errno) -> MapError {
        MapError::Os {
            op,
            errno: e.raw_os_error(),
        }
    }

    /// The error for a failed `MmapRegion` build.
    pub(crate) fn mmap(e: vm_memory::mmap::MmapRegionError) -> MapError {
        use vm_memory::mmap::MmapRegionError as E;
        let errno = match e {
            E::Mmap(io) => io.raw_os_error().unwrap_or(libc::EIO),
            // Offset overflow, a MAP_FIXED request, an unaligned pointer,
            // overlapping or past-EOF mappings: invalid arguments.
            _ => libc::EINVAL,
        };
        MapError::Os { op: "mmap", errno }
    }
}

/// A kernel-mediated access ([`crate::Mapping::read_checked`] and friends)
/// stopped at `offset`: the first byte that did not move. Every byte before
/// it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host access faulted at offset {offset:#x} of the mapping")]
pub struct Fault {
    /// Offset, within the mapping, of the first byte not transferred.
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_follow_the_variant() {
        let e = |err: MapError| err.errno();
        assert_eq!(e(MapError::Os { op: "x", errno: 5 }), 5);
        let oob = MapError::OutOfRange {
            op: "read",
            offset: 1,
            len: 1,
            size: 1,
        };
        assert_eq!(e(oob), libc::EFAULT);
        assert_eq!(e(MapError::Length { size: 0 }), libc::EFBIG);
        assert_eq!(e(MapError::Budget { size: 1, mapped: 1 }), libc::ENOMEM);
        assert_eq!(e(MapError::NotSealed { seals: 0 }), libc::EPERM);
    }
}
