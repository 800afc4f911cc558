//! Backend-neutral errors: an errno with the operation that produced it, or a
//! typed "unsupported" that names the missing capability.

use std::fmt;

/// A Linux errno value, printed by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// EPERM
    pub const EPERM: Errno = Errno(1);
    /// ENOENT
    pub const ENOENT: Errno = Errno(2);
    /// EINTR
    pub const EINTR: Errno = Errno(4);
    /// EIO
    pub const EIO: Errno = Errno(5);
    /// EBADF
    pub const EBADF: Errno = Errno(9);
    /// EAGAIN
    pub const EAGAIN: Errno = Errno(11);
    /// ENOMEM
    pub const ENOMEM: Errno = Errno(12);
    /// EFAULT
    pub const EFAULT: Errno = Errno(14);
    /// EBUSY
    pub const EBUSY: Errno = Errno(16);
    /// EEXIST
    pub const EEXIST: Errno = Errno(17);
    /// ENODEV
    pub const ENODEV: Errno = Errno(19);
    /// EINVAL
    pub const EINVAL: Errno = Errno(22);
    /// ENOTTY
    pub const ENOTTY: Errno = Errno(25);
    /// ENOSPC
    pub const ENOSPC: Errno = Errno(28);
    /// ESPIPE
    pub const ESPIPE: Errno = Errno(29);
    /// E2BIG
    pub const E2BIG: Errno = Errno(7);
    /// ENOSYS
    pub const ENOSYS: Errno = Errno(38);
    /// EOPNOTSUPP
    pub const EOPNOTSUPP: Errno = Errno(95);
    /// EHWPOISON
    pub const EHWPOISON: Errno = Errno(133);

    /// The symbolic name, or the number.
    pub fn name(self) -> String {
        let known = [
            (1, "EPERM"),
            (2, "ENOENT"),
            (4, "EINTR"),
            (5, "EIO"),
            (7, "E2BIG"),
            (9, "EBADF"),
            (11, "EAGAIN"),
            (12, "ENOMEM"),
            (14, "EFAULT"),
            (16, "EBUSY"),
            (17, "EEXIST"),
            (19, "ENODEV"),
            (22, "EINVAL"),
            (25, "ENOTTY"),
            (28, "ENOSPC"),
            (29, "ESPIPE"),
            (38, "ENOSYS"),
            (95, "EOPNOTSUPP"),
            (133, "EHWPOISON"),
        ];
        known
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or_else(|| format!("errno {}", self.0), |(_, s)| (*s).to_string())
    }
    /// From an `io::Error`; EIO if it has no OS code.
    pub fn from_io(e: &std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(5))
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// An error from a hypervisor backend operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The kernel (or the model of it) failed the operation with an errno.
    #[error("{op} failed with {errno}")]
    Os {
        /// The operation, e.g. "KVM_SET_USER_MEMORY_REGION2".
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The backend or host does not support the operation.
    #[error("{op} is unsupported: {missing}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The missing capability or VM type, e.g. "KVM_CAP_MEMORY_ATTRIBUTES=0".
        missing: String,
    },
    /// privmem refused an argument before reaching the kernel.
    #[error("{op}: invalid argument: {why}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// Why.
        why: String,
    },
}

impl BackendError {
    /// An `Os` error.
    pub fn os(op: &'static str, errno: Errno) -> BackendError {
        BackendError::Os { op, errno }
    }
    /// An `Invalid` error: privmem refused `op`'s argument, for `why`.
    pub fn invalid(op: &'static str, why: impl Into<String>) -> BackendError {
        BackendError::Invalid {
            op,
            why: why.into(),
        }
    }
    /// The errno, for `Os` errors.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            BackendError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Shorthand for backend results.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;
