//! Arguments of the memory operations beyond the basic guest_memfd file
//! calls: `KVM_PRE_FAULT_MEMORY`, and `mmap`/`mbind`/`get_mempolicy`/
//! `madvise` on a guest_memfd (Linux 7.3 gives guest_memfd its own
//! filesystem, NUMA policy and `madvise` answers).
//!
//! Values stay raw where conformance must reach the kernel with invalid
//! ones (a policy mode of 999, a pre-fault `flags` word); everything else is
//! typed.

/// `struct kvm_pre_fault_memory`, in and out: `KVM_PRE_FAULT_MEMORY` maps
/// `[gpa, gpa+size)` into the guest's page tables as a guest access would,
/// and passes the range back advanced past what it mapped, even when it
/// fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PreFaultRange {
    /// The first byte not yet mapped.
    pub gpa: u64,
    /// Bytes not yet mapped.
    pub size: u64,
    /// Must be 0 (EINVAL otherwise).
    pub flags: u64,
}

impl PreFaultRange {
    /// `[gpa, gpa+size)` with flags 0.
    pub const fn new(gpa: u64, size: u64) -> PreFaultRange {
        PreFaultRange {
            gpa,
            size,
            flags: 0,
        }
    }
}

/// The protection of a guest_memfd mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MmapProt {
    /// `PROT_READ | PROT_WRITE`.
    #[default]
    ReadWrite,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` (7.3: EPERM, guest_memfd's
    /// filesystem is mounted noexec).
    ReadWriteExec,
}

/// Whether a mapping is `MAP_SHARED` or `MAP_PRIVATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MmapSharing {
    /// `MAP_SHARED` (the only kind guest_memfd accepts).
    #[default]
    Shared,
    /// `MAP_PRIVATE` (copy-on-write: EINVAL on a guest_memfd).
    Private,
}

/// How to `mmap` a guest_memfd: protection and sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmapOptions {
    /// `prot`.
    pub prot: MmapProt,
    /// `MAP_SHARED` or `MAP_PRIVATE`.
    pub sharing: MmapSharing,
}

impl MmapOptions {
    /// `PROT_READ | PROT_WRITE`, `MAP_SHARED`.
    pub const SHARED_RW: MmapOptions = MmapOptions {
        prot: MmapProt::ReadWrite,
        sharing: MmapSharing::Shared,
    };
}

/// `MPOL_DEFAULT`: the task's (or the system's) policy.
pub const MPOL_DEFAULT: u32 = 0;
/// `MPOL_PREFERRED`.
pub const MPOL_PREFERRED: u32 = 1;
/// `MPOL_BIND`.
pub const MPOL_BIND: u32 = 2;
/// `MPOL_INTERLEAVE`.
pub const MPOL_INTERLEAVE: u32 = 3;
/// `MPOL_LOCAL`.
pub const MPOL_LOCAL: u32 = 4;
/// `MPOL_PREFERRED_MANY`.
pub const MPOL_PREFERRED_MANY: u32 = 5;
/// `MPOL_WEIGHTED_INTERLEAVE`.
pub const MPOL_WEIGHTED_INTERLEAVE: u32 = 6;
/// `MPOL_MAX`: modes at or above it are EINVAL.
pub const MPOL_MAX: u32 = 7;
/// `MPOL_F_STATIC_NODES` (a mode flag).
pub const MPOL_F_STATIC_NODES: u32 = 1 << 15;
/// `MPOL_F_RELATIVE_NODES` (a mode flag).
pub const MPOL_F_RELATIVE_NODES: u32 = 1 << 14;
/// `MPOL_F_NUMA_BALANCING` (a mode flag).
pub const MPOL_F_NUMA_BALANCING: u32 = 1 << 13;
/// Every mode flag (`MPOL_MODE_FLAGS`).
pub const MPOL_MODE_FLAGS: u32 =
    MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | MPOL_F_NUMA_BALANCING;
/// `mbind` flag `MPOL_MF_STRICT`.
pub const MPOL_MF_STRICT: u32 = 1 << 0;
/// `mbind` flag `MPOL_MF_MOVE`.
pub const MPOL_MF_MOVE: u32 = 1 << 1;
/// `mbind` flag `MPOL_MF_MOVE_ALL`.
pub const MPOL_MF_MOVE_ALL: u32 = 1 << 2;
/// The `mbind` flags userspace may pass (`MPOL_MF_VALID`).
pub const MPOL_MF_VALID: u32 = MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL;

/// A NUMA memory policy as `mbind` takes it and `get_mempolicy` returns it:
/// the raw mode (with its mode flags) and a node mask of up to 64 nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemPolicy {
    /// `MPOL_*`, or'ed with `MPOL_F_*` mode flags; raw, so an invalid
    /// mode reaches the kernel.
    pub mode: u32,
    /// Bit n = node n.
    pub nodes: u64,
}

impl MemPolicy {
    /// The default policy (`MPOL_DEFAULT`, no nodes).
    pub const DEFAULT: MemPolicy = MemPolicy {
        mode: MPOL_DEFAULT,
        nodes: 0,
    };

    /// `mode` over `nodes`.
    pub const fn new(mode: u32, nodes: u64) -> MemPolicy {
        MemPolicy { mode, nodes }
    }
}

/// `madvise` advice privmem issues on guest_memfd mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Advice {
    /// `MADV_DONTNEED` (4): drop the host page-table entries; a shared
    /// file mapping's pages stay in the file.
    DontNeed,
    /// `MADV_HUGEPAGE` (14).
    HugePage,
    /// `MADV_NOHUGEPAGE` (15).
    NoHugePage,
    /// `MADV_COLLAPSE` (25): collapse into a transparent huge page now.
    Collapse,
}

impl Advice {
    /// The `MADV_*` number.
    pub const fn raw(self) -> i32 {
        match self {
            Advice::DontNeed => 4,
            Advice::HugePage => 14,
            Advice::NoHugePage => 15,
            Advice::Collapse => 25,
        }
    }

    /// The `MADV_*` name.
    pub const fn name(self) -> &'static str {
        match self {
            Advice::DontNeed => "MADV_DONTNEED",
            Advice::HugePage => "MADV_HUGEPAGE",
            Advice::NoHugePage => "MADV_NOHUGEPAGE",
            Advice::Collapse => "MADV_COLLAPSE",
        }
    }
}
