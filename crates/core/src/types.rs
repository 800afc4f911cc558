//! Address and size newtypes with checked arithmetic only.
//!
//! Following vm-memory, no arithmetic operators are implemented: callers use
//! `checked_*` so an overflowing guest-supplied value is an error, never a wrap.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The x86 base page size (KVM's `PAGE_SIZE`).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// 2 MiB, the x86 large page size.
pub const HUGE_2M: u64 = 2 << 20;

/// A guest physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// `self + len`, or `None` on overflow.
    pub fn checked_add(self, len: u64) -> Option<Gpa> {
        self.0.checked_add(len).map(Gpa)
    }
    /// `self - other`, or `None` if `other > self`.
    pub fn checked_offset_from(self, other: Gpa) -> Option<u64> {
        self.0.checked_sub(other.0)
    }
    /// True if the address is 4 KiB aligned.
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }
    /// The guest frame number.
    pub const fn gfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    /// The start of the page holding this address.
    pub const fn page_base(self) -> Gpa {
        Gpa(self.0 & !(PAGE_SIZE - 1))
    }
}

impl fmt::Debug for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpa({:#x})", self.0)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A number of 4 KiB pages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PageCount(pub u64);

impl PageCount {
    /// The size in bytes, or `None` on overflow.
    pub fn bytes(self) -> Option<u64> {
        self.0.checked_mul(PAGE_SIZE)
    }
    /// The number of whole pages in `bytes`, or `None` if not page-aligned.
    pub fn from_bytes(bytes: u64) -> Option<PageCount> {
        bytes
            .is_multiple_of(PAGE_SIZE)
            .then_some(PageCount(bytes / PAGE_SIZE))
    }
    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: PageCount) -> Option<PageCount> {
        self.0.checked_add(other.0).map(PageCount)
    }
}

/// A memslot id (bits 15:0 of `kvm_userspace_memory_region2.slot`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct SlotId(pub u16);

/// A non-empty, non-wrapping half-open GPA range `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GpaRange {
    start: Gpa,
    end: Gpa,
}

/// Why a [`GpaRange`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The length is zero.
    #[error("empty range at {gpa:#x}")]
    Empty {
        /// Start address.
        gpa: u64,
    },
    /// `start + len` overflows.
    #[error("range at {gpa:#x} with length {len:#x} wraps")]
    Wraps {
        /// Start address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Start or length is not page-aligned.
    #[error("range at {gpa:#x} with length {len:#x} is not page-aligned")]
    Unaligned {
        /// Start address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl GpaRange {
    /// `[start, start+len)`; any alignment.
    pub fn new(start: Gpa, len: u64) -> Result<GpaRange, RangeError> {
        if len == 0 {
            return Err(RangeError::Empty { gpa: start.0 });
        }
        let end = start
            .checked_add(len)
            .ok_or(RangeError::Wraps { gpa: start.0, len })?;
        Ok(GpaRange { start, end })
    }
    /// `[start, start+len)`, both page-aligned.
    pub fn new_pages(start: Gpa, len: u64) -> Result<GpaRange, RangeError> {
        if !start.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::Unaligned { gpa: start.0, len });
        }
        GpaRange::new(start, len)
    }
    /// `[start, end)`; `None` if `end <= start`.
    pub fn from_bounds(start: Gpa, end: Gpa) -> Option<GpaRange> {
        (end > start).then_some(GpaRange { start, end })
    }
    /// First address.
    pub const fn start(self) -> Gpa {
        self.start
    }
    /// One past the last address.
    pub const fn end(self) -> Gpa {
        self.end
    }
    /// Length in bytes (never zero).
    pub const fn len(self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Always false: ranges are non-empty by construction.
    pub const fn is_empty(self) -> bool {
        false
    }
    /// Number of pages touched (rounded out to page boundaries).
    pub const fn pages(self) -> u64 {
        let first = self.start.0 >> PAGE_SHIFT;
        let last = (self.end.0 - 1) >> PAGE_SHIFT;
        last - first + 1
    }
    /// True if `gpa` lies inside.
    pub fn contains(self, gpa: Gpa) -> bool {
        self.start <= gpa && gpa < self.end
    }
    /// The overlap of two ranges, if any.
    pub fn intersect(self, other: GpaRange) -> Option<GpaRange> {
        GpaRange::from_bounds(self.start.max(other.start), self.end.min(other.end))
    }
    /// True if the ranges share at least one byte.
    pub fn overlaps(self, other: GpaRange) -> bool {
        self.intersect(other).is_some()
    }
}

impl fmt::Debug for GpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

impl fmt::Display for GpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The guest-physical address width: every guest-physical address is below
/// `2^bits`, and a range ending above that does not exist for the guest.
///
/// x86 caps MAXPHYADDR at 52 bits ([`GpaLimit::X86_MAXPHYADDR`], the
/// default); a VMM whose guest has a narrower width (e.g. the host's
/// `kvm_mmu_max_gfn`) gives that instead. The conversion engine answers a
/// request past the limit as invalid, the way KVM answers `MAP_GPA_RANGE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GpaLimit {
    bits: u32,
}

impl GpaLimit {
    /// x86's architectural maximum: 52 address bits.
    pub const X86_MAXPHYADDR: GpaLimit = GpaLimit { bits: 52 };
    /// Fewest bits accepted: one page.
    pub const MIN_BITS: u32 = PAGE_SHIFT;
    /// Most bits accepted, so that the limit itself fits in a `u64`.
    pub const MAX_BITS: u32 = 63;

    /// A limit of `bits` address bits, or `None` outside
    /// [`MIN_BITS`](Self::MIN_BITS)`..=`[`MAX_BITS`](Self::MAX_BITS).
    pub const fn from_bits(bits: u32) -> Option<GpaLimit> {
        if bits >= Self::MIN_BITS && bits <= Self::MAX_BITS {
            Some(GpaLimit { bits })
        } else {
            None
        }
    }
    /// The number of address bits.
    pub const fn bits(self) -> u32 {
        self.bits
    }
    /// One past the highest guest-physical address: `2^bits`.
    pub const fn end(self) -> Gpa {
        Gpa(1 << self.bits)
    }
    /// True if every byte of `range` is below the limit.
    pub fn contains(self, range: GpaRange) -> bool {
        range.end() <= self.end()
    }
}

impl Default for GpaLimit {
    fn default() -> Self {
        GpaLimit::X86_MAXPHYADDR
    }
}

impl fmt::Display for GpaLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit guest-physical limit", self.bits)
    }
}

/// Memory attributes of a page (`KVM_SET_MEMORY_ATTRIBUTES`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Attrs(pub u64);

impl Attrs {
    /// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
    pub const PRIVATE: Attrs = Attrs(1 << 3);
    /// No attributes: shared.
    pub const SHARED: Attrs = Attrs(0);
    /// True if the private bit is set.
    pub const fn is_private(self) -> bool {
        self.0 & Self::PRIVATE.0 != 0
    }
    /// PRIVATE or SHARED from a bool.
    pub const fn from_private(private: bool) -> Attrs {
        if private {
            Self::PRIVATE
        } else {
            Self::SHARED
        }
    }
}

/// x86 VM types (`KVM_CREATE_VM` argument), as far as privmem knows them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VmType {
    /// `KVM_X86_DEFAULT_VM` (0).
    Default,
    /// `KVM_X86_SW_PROTECTED_VM` (1).
    SwProtected,
    /// A confidential VM whose accesses carry private/shared intent (TDX/SNP style).
    /// KVM runs these as SNP (4) or TDX (5); the model runs them directly.
    Coco,
}

impl VmType {
    /// The `KVM_CREATE_VM` type number (`Coco` maps to `KVM_X86_SNP_VM`).
    pub const fn kvm_type(self) -> u64 {
        match self {
            VmType::Default => 0,
            VmType::SwProtected => 1,
            VmType::Coco => 4,
        }
    }
    /// The workload spelling.
    pub const fn name(self) -> &'static str {
        match self {
            VmType::Default => "default",
            VmType::SwProtected => "sw-protected",
            VmType::Coco => "coco",
        }
    }
    /// Parses the workload spelling.
    pub fn from_name(s: &str) -> Option<VmType> {
        [VmType::Default, VmType::SwProtected, VmType::Coco]
            .into_iter()
            .find(|t| t.name() == s)
    }
    /// True if the VM type has private memory (`kvm_arch_has_private_mem`).
    pub const fn has_private_mem(self) -> bool {
        !matches!(self, VmType::Default)
    }
}

/// `kvm_create_guest_memfd.flags`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct GmemFlags(pub u64);

impl GmemFlags {
    /// `GUEST_MEMFD_FLAG_MMAP`.
    pub const MMAP: GmemFlags = GmemFlags(1);
    /// `GUEST_MEMFD_FLAG_INIT_SHARED`.
    pub const INIT_SHARED: GmemFlags = GmemFlags(2);
    /// True if every bit of `other` is set.
    pub const fn contains(self, other: GmemFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Bitwise or.
    pub const fn union(self, other: GmemFlags) -> GmemFlags {
        GmemFlags(self.0 | other.0)
    }
}

/// An owned guest_memfd: the file descriptor, its size and creation flags.
///
/// `token` lets a backend observe the final close (the model uses it to
/// implement `kvm_gmem_release`); the KVM backend leaves it `None`.
#[derive(Debug)]
pub struct GuestMemfd {
    fd: OwnedFd,
    size: u64,
    flags: GmemFlags,
    token: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl GuestMemfd {
    /// Wraps a freshly created guest_memfd.
    pub fn new(fd: OwnedFd, size: u64, flags: GmemFlags) -> GuestMemfd {
        GuestMemfd {
            fd,
            size,
            flags,
            token: None,
        }
    }
    /// Wraps a guest_memfd with a backend token dropped on close.
    pub fn with_token(
        fd: OwnedFd,
        size: u64,
        flags: GmemFlags,
        token: Arc<dyn std::any::Any + Send + Sync>,
    ) -> GuestMemfd {
        GuestMemfd {
            fd,
            size,
            flags,
            token: Some(token),
        }
    }
    /// File size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }
    /// Creation flags.
    pub const fn flags(&self) -> GmemFlags {
        self.flags
    }
    /// The backend token, if any.
    pub fn token(&self) -> Option<&Arc<dyn std::any::Any + Send + Sync>> {
        self.token.as_ref()
    }
    /// A second owned handle to the same file (`dup`), sharing the token.
    pub fn try_clone(&self) -> std::io::Result<GuestMemfd> {
        Ok(GuestMemfd {
            fd: self.fd.try_clone()?,
            size: self.size,
            flags: self.flags,
            token: self.token.clone(),
        })
    }
}

impl AsFd for GuestMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn checked_align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpa_limit_bounds_bits_and_contains_ranges_up_to_its_end() {
        assert_eq!(GpaLimit::from_bits(11), None);
        assert_eq!(GpaLimit::from_bits(64), None);
        assert_eq!(GpaLimit::default(), GpaLimit::X86_MAXPHYADDR);
        let l = GpaLimit::from_bits(52).unwrap();
        assert_eq!(l.end(), Gpa(1 << 52));
        let last = GpaRange::new(Gpa((1 << 52) - PAGE_SIZE), PAGE_SIZE).unwrap();
        assert!(l.contains(last));
        let past = GpaRange::new(Gpa(1 << 52), PAGE_SIZE).unwrap();
        assert!(!l.contains(past));
        assert!(!GpaLimit::from_bits(47).unwrap().contains(last));
    }

    #[test]
    fn gpa_range_wrapping_returns_error() {
        assert_eq!(
            GpaRange::new(Gpa(u64::MAX - 10), 4096),
            Err(RangeError::Wraps {
                gpa: u64::MAX - 10,
                len: 4096
            })
        );
    }

    #[test]
    fn gpa_range_empty_returns_error() {
        assert!(matches!(
            GpaRange::new(Gpa(0), 0),
            Err(RangeError::Empty { .. })
        ));
    }

    #[test]
    fn gpa_range_unaligned_pages_returns_error() {
        assert!(matches!(
            GpaRange::new_pages(Gpa(1), 4096),
            Err(RangeError::Unaligned { .. })
        ));
    }

    #[test]
    fn gpa_range_pages_counts_partial_pages() {
        let r = GpaRange::new(Gpa(4095), 2).unwrap();
        assert_eq!(r.pages(), 2);
    }

    #[test]
    fn gpa_range_intersect_disjoint_is_none() {
        let a = GpaRange::new(Gpa(0), 4096).unwrap();
        let b = GpaRange::new(Gpa(4096), 4096).unwrap();
        assert_eq!(a.intersect(b), None);
        assert!(!a.overlaps(b));
    }

    #[test]
    fn page_count_bytes_overflow_is_none() {
        assert_eq!(PageCount(1 << 63).bytes(), None);
    }

    #[test]
    fn align_up_overflow_is_none() {
        assert_eq!(checked_align_up(u64::MAX, 4096), None);
        assert_eq!(checked_align_up(4097, 4096), Some(8192));
    }
}
