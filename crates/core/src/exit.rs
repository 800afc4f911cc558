//! privmem's own exit enum: every backend decodes into this, and the pure
//! decisions of [`decide`](crate::decide) consume it (decode first, then decide).

use crate::types::{Gpa, PAGE_SHIFT};

/// `KVM_HC_MAP_GPA_RANGE`.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` mask that forwards
/// `KVM_HC_MAP_GPA_RANGE` to userspace (`KVM_EXIT_HYPERCALL_VALID_MASK`).
pub const EXIT_HYPERCALL_MAP_GPA_RANGE: u64 = 1 << KVM_HC_MAP_GPA_RANGE;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` (bit 4): the range becomes private.
pub const MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// Bits 3:0: page-size hint.
pub const MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0xf;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
pub const MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// `KVM_EXIT_HYPERCALL_LONG_MODE`.
pub const HYPERCALL_LONG_MODE: u64 = 1;

/// Negative KVM hypercall return values (`include/uapi/linux/kvm_para.h`).
pub mod hc_ret {
    /// Success.
    pub const OK: i64 = 0;
    /// `-KVM_EPERM`.
    pub const EPERM: i64 = -1;
    /// `-KVM_EINVAL`.
    pub const EINVAL: i64 = -22;
    /// `-KVM_ENOSYS`.
    pub const ENOSYS: i64 = -1000;
}

/// The errno that came with a memory-fault exit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FaultErrno {
    /// `EFAULT`: a fault KVM could not resolve (conversion or missing backing).
    Efault,
    /// `EHWPOISON`: the guest_memfd page is hardware-poisoned.
    Ehwpoison,
}

impl FaultErrno {
    /// The errno name as the report prints it.
    pub const fn name(self) -> &'static str {
        match self {
            FaultErrno::Efault => "EFAULT",
            FaultErrno::Ehwpoison => "EHWPOISON",
        }
    }
    /// The errno value.
    pub const fn errno(self) -> i32 {
        match self {
            FaultErrno::Efault => 14,
            FaultErrno::Ehwpoison => 133,
        }
    }
}

/// `KVM_EXIT_MEMORY_FAULT`, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemoryFault {
    /// Page-aligned faulting GPA.
    pub gpa: Gpa,
    /// Faulting size in bytes (4096 on x86 6.18).
    pub size: u64,
    /// The access was private.
    pub private: bool,
    /// EFAULT or EHWPOISON.
    pub errno: FaultErrno,
}

/// Errors decoding an exit. Unknown values are typed errors, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `memory_fault.flags` has bits KVM does not define.
    #[error("memory fault at {gpa:#x} has unknown flags {flags:#x}")]
    UnknownFaultFlags {
        /// The faulting GPA.
        gpa: u64,
        /// The raw flags.
        flags: u64,
    },
    /// `hypercall.flags` has bits in `KVM_EXIT_HYPERCALL_MBZ`.
    #[error("hypercall {nr} has must-be-zero flags {flags:#x}")]
    HypercallFlags {
        /// Hypercall number.
        nr: u64,
        /// The raw flags.
        flags: u64,
    },
    /// The `kvm_run` buffer is too short for the exit.
    #[error("kvm_run buffer of {len} bytes is too short (need {need})")]
    ShortRun {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// `KVM_RUN` failed with an errno that is not a memory-fault exit.
    #[error("KVM_RUN failed with errno {errno}")]
    RunFailed {
        /// The errno.
        errno: i32,
    },
}

impl MemoryFault {
    /// Decodes `{flags, gpa, size}` strictly: only `KVM_MEMORY_EXIT_FLAG_PRIVATE` may be set.
    pub fn decode(flags: u64, gpa: u64, size: u64, errno: FaultErrno) -> Result<Self, DecodeError> {
        if flags & !MEMORY_EXIT_FLAG_PRIVATE != 0 {
            return Err(DecodeError::UnknownFaultFlags { gpa, flags });
        }
        Ok(MemoryFault {
            gpa: Gpa(gpa),
            size,
            private: flags & MEMORY_EXIT_FLAG_PRIVATE != 0,
            errno,
        })
    }
    /// The raw flags KVM would report.
    pub const fn flags(&self) -> u64 {
        if self.private {
            MEMORY_EXIT_FLAG_PRIVATE
        } else {
            0
        }
    }
}

/// The preferred page size of a `MAP_GPA_RANGE` request (attribute bits 3:0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PageSizeHint {
    /// `KVM_MAP_GPA_RANGE_PAGE_SZ_4K`.
    Size4K,
    /// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M`.
    Size2M,
    /// `KVM_MAP_GPA_RANGE_PAGE_SZ_1G`.
    Size1G,
}

/// A strictly decoded `KVM_HC_MAP_GPA_RANGE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MapGpaRange {
    /// First page.
    pub gpa: Gpa,
    /// Number of 4 KiB pages (nonzero; `gpa + pages*4K` does not wrap).
    pub pages: u64,
    /// Bit 4 of the attributes: the range becomes private.
    pub to_private: bool,
    /// Bits 3:0 of the attributes.
    pub page_size_hint: PageSizeHint,
}

/// Why a `MAP_GPA_RANGE` request is invalid. The guest gets `-KVM_EINVAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapGpaRangeError {
    /// GPA not page-aligned.
    #[error("map_gpa_range gpa {gpa:#x} is not page-aligned")]
    Unaligned {
        /// GPA.
        gpa: u64,
    },
    /// Zero pages.
    #[error("map_gpa_range at {gpa:#x} has zero pages")]
    ZeroPages {
        /// GPA.
        gpa: u64,
    },
    /// `gpa + pages * 4K` wraps.
    #[error("map_gpa_range at {gpa:#x} with {pages} pages wraps")]
    Wraps {
        /// GPA.
        gpa: u64,
        /// Pages.
        pages: u64,
    },
    /// Page-size bits are not 0, 1 or 2.
    #[error("map_gpa_range at {gpa:#x} has invalid page-size bits {bits:#x}")]
    PageSize {
        /// GPA.
        gpa: u64,
        /// The bits.
        bits: u64,
    },
    /// Bits 63:5 are set.
    #[error("map_gpa_range at {gpa:#x} has reserved attribute bits {attrs:#x}")]
    ReservedBits {
        /// GPA.
        gpa: u64,
        /// The attributes.
        attrs: u64,
    },
}

impl MapGpaRange {
    /// Decodes `(a0, a1, a2)` strictly per `Documentation/virt/kvm/x86/hypercalls.rst` §8.
    pub fn decode(gpa: u64, pages: u64, attrs: u64) -> Result<Self, MapGpaRangeError> {
        if !gpa.is_multiple_of(crate::types::PAGE_SIZE) {
            return Err(MapGpaRangeError::Unaligned { gpa });
        }
        if pages == 0 {
            return Err(MapGpaRangeError::ZeroPages { gpa });
        }
        let end_gfn = (gpa >> PAGE_SHIFT).checked_add(pages);
        if end_gfn.is_none_or(|e| e > (u64::MAX >> PAGE_SHIFT)) {
            return Err(MapGpaRangeError::Wraps { gpa, pages });
        }
        let page_size_hint = match attrs & MAP_GPA_RANGE_PAGE_SZ_MASK {
            0 => PageSizeHint::Size4K,
            1 => PageSizeHint::Size2M,
            2 => PageSizeHint::Size1G,
            bits => return Err(MapGpaRangeError::PageSize { gpa, bits }),
        };
        if attrs & !(MAP_GPA_RANGE_PAGE_SZ_MASK | MAP_GPA_RANGE_ENCRYPTED) != 0 {
            return Err(MapGpaRangeError::ReservedBits { gpa, attrs });
        }
        Ok(MapGpaRange {
            gpa: Gpa(gpa),
            pages,
            to_private: attrs & MAP_GPA_RANGE_ENCRYPTED != 0,
            page_size_hint,
        })
    }
    /// The raw attribute word this request encodes.
    pub const fn attrs(&self) -> u64 {
        let size = match self.page_size_hint {
            PageSizeHint::Size4K => 0,
            PageSizeHint::Size2M => 1,
            PageSizeHint::Size1G => 2,
        };
        size | if self.to_private {
            MAP_GPA_RANGE_ENCRYPTED
        } else {
            0
        }
    }
}

/// A `KVM_EXIT_HYPERCALL`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hypercall {
    /// A valid `KVM_HC_MAP_GPA_RANGE`.
    MapGpaRange(MapGpaRange),
    /// A `KVM_HC_MAP_GPA_RANGE` whose arguments fail strict decoding.
    InvalidMapGpaRange {
        /// `args[0..3]`.
        args: [u64; 3],
        /// Why.
        error: MapGpaRangeError,
    },
    /// Any other hypercall number.
    Other {
        /// `hypercall.nr`.
        nr: u64,
        /// `hypercall.args`.
        args: [u64; 6],
    },
}

impl Hypercall {
    /// Decodes a hypercall exit from its number and arguments.
    pub fn decode(nr: u64, args: [u64; 6]) -> Hypercall {
        if nr != KVM_HC_MAP_GPA_RANGE {
            return Hypercall::Other { nr, args };
        }
        match MapGpaRange::decode(args[0], args[1], args[2]) {
            Ok(m) => Hypercall::MapGpaRange(m),
            Err(error) => Hypercall::InvalidMapGpaRange {
                args: [args[0], args[1], args[2]],
                error,
            },
        }
    }
}

/// A port-I/O exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoExit {
    /// Port number.
    pub port: u16,
    /// True for `out`.
    pub write: bool,
    /// Access size (1, 2 or 4).
    pub size: u8,
    /// The data written (little-endian, zero-extended) for `out`.
    pub data: u32,
}

/// An MMIO exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MmioExit {
    /// Guest physical address.
    pub gpa: Gpa,
    /// Access length.
    pub len: u8,
    /// True for a write.
    pub write: bool,
}

/// A guest-protocol report: privmem's guest code tells the host something.
///
/// On KVM these arrive as port I/O on privmem's protocol ports and are decoded
/// by the backend; the model produces them directly.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestReport {
    /// `sync` op.
    Sync {
        /// The tag.
        tag: u64,
    },
    /// A `read` op found a wrong byte.
    CheckFailed {
        /// First bad address.
        gpa: Gpa,
        /// The byte seen.
        seen: u8,
        /// The byte expected.
        expected: u8,
    },
    /// A `map` op's return value differed from `expect_ret`.
    RetMismatch {
        /// The map's GPA argument.
        gpa: Gpa,
        /// What the guest got in RAX.
        ret: i64,
        /// What the op expected.
        expected: i64,
    },
    /// A `read` op passed.
    CheckPassed,
}

/// Every exit privmem distinguishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exit {
    /// `KVM_EXIT_MEMORY_FAULT` (39) with `KVM_RUN` = -1 and EFAULT/EHWPOISON.
    MemoryFault(MemoryFault),
    /// `KVM_EXIT_HYPERCALL` (3), or the port-I/O hypercall transport on PVM.
    Hypercall(Hypercall),
    /// `KVM_EXIT_IO` (2) on a port privmem's protocol does not own.
    Io(IoExit),
    /// `KVM_EXIT_MMIO` (6).
    Mmio(MmioExit),
    /// A guest-protocol report.
    Report(GuestReport),
    /// `KVM_EXIT_HLT` (5).
    Hlt,
    /// `KVM_EXIT_SHUTDOWN` (8), e.g. a triple fault.
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` (17).
    InternalError {
        /// `internal.suberror`.
        suberror: u32,
    },
    /// Any other exit reason.
    Unknown(u32),
}

impl Exit {
    /// A short name, used as the report's exit counter key.
    pub const fn kind(&self) -> &'static str {
        match self {
            Exit::MemoryFault(_) => "memory_fault",
            Exit::Hypercall(_) => "hypercall",
            Exit::Io(_) | Exit::Report(_) => "io",
            Exit::Mmio(_) => "mmio",
            Exit::Hlt => "hlt",
            Exit::Shutdown => "shutdown",
            Exit::InternalError { .. } => "internal_error",
            Exit::Unknown(_) => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_gpa_range_bit4_means_private() {
        let m = MapGpaRange::decode(0x1000, 1, 0x10).unwrap();
        assert!(m.to_private);
        assert_eq!(m.page_size_hint, PageSizeHint::Size4K);
    }

    #[test]
    fn map_gpa_range_page_size_bit_is_not_private() {
        // libkrun's bug: bit 0 (2M hint) read as "private".
        let m = MapGpaRange::decode(0x200000, 512, 1).unwrap();
        assert!(!m.to_private);
        assert_eq!(m.page_size_hint, PageSizeHint::Size2M);
    }

    #[test]
    fn map_gpa_range_invalid_page_size_is_error() {
        assert!(matches!(
            MapGpaRange::decode(0, 1, 3),
            Err(MapGpaRangeError::PageSize { bits: 3, .. })
        ));
    }

    #[test]
    fn map_gpa_range_reserved_bits_is_error() {
        assert!(matches!(
            MapGpaRange::decode(0, 1, 1 << 5),
            Err(MapGpaRangeError::ReservedBits { .. })
        ));
    }

    #[test]
    fn map_gpa_range_unaligned_zero_and_wrap_are_errors() {
        assert!(matches!(
            MapGpaRange::decode(1, 1, 0),
            Err(MapGpaRangeError::Unaligned { .. })
        ));
        assert!(matches!(
            MapGpaRange::decode(0, 0, 0),
            Err(MapGpaRangeError::ZeroPages { .. })
        ));
        assert!(matches!(
            MapGpaRange::decode(0x1000, 1 << 63, 0),
            Err(MapGpaRangeError::Wraps { .. })
        ));
        assert!(matches!(
            MapGpaRange::decode(!0xfff, 1, 0),
            Err(MapGpaRangeError::Wraps { .. })
        ));
    }

    #[test]
    fn map_gpa_range_attrs_roundtrip() {
        let m = MapGpaRange::decode(0, 1, 0x11).unwrap();
        assert_eq!(m.attrs(), 0x11);
    }

    #[test]
    fn memory_fault_unknown_flags_is_error() {
        assert!(matches!(
            MemoryFault::decode(1, 0, 4096, FaultErrno::Efault),
            Err(DecodeError::UnknownFaultFlags { flags: 1, .. })
        ));
    }

    #[test]
    fn hypercall_other_nr_is_other() {
        assert!(matches!(
            Hypercall::decode(5, [0; 6]),
            Hypercall::Other { nr: 5, .. }
        ));
    }
}
