//! The hypervisor traits, in domain terms, implemented by the KVM backend and
//! by the model. Static dispatch: code is written `fn f<H: Hypervisor>(..)`.
//!
//! Calls keep the kernel's raw argument space where conformance needs it (a
//! size of 0, an unaligned offset, a bogus fd must reach the backend so the
//! errno can be compared), and typed handles everywhere else.

use std::os::fd::BorrowedFd;

use crate::error::{BackendError, Result};
use crate::exit::{DecodeError, Exit};
use crate::memops::{Advice, MemPolicy, MmapOptions, MmapProt, MmapSharing, PreFaultRange};
use crate::types::{GmemFlags, Gpa, GuestMemfd, VmType};

/// Capabilities privmem probes (`KVM_CHECK_EXTENSION`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Cap {
    /// `KVM_CAP_READONLY_MEM` (81).
    ReadonlyMem,
    /// `KVM_CAP_EXIT_HYPERCALL` (201).
    ExitHypercall,
    /// `KVM_CAP_USER_MEMORY2` (231).
    UserMemory2,
    /// `KVM_CAP_MEMORY_FAULT_INFO` (232).
    MemoryFaultInfo,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` (233).
    MemoryAttributes,
    /// `KVM_CAP_GUEST_MEMFD` (234).
    GuestMemfd,
    /// `KVM_CAP_VM_TYPES` (235).
    VmTypes,
    /// `KVM_CAP_PRE_FAULT_MEMORY` (236).
    PreFaultMemory,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` (244).
    GuestMemfdFlags,
    /// `KVM_CAP_NR_MEMSLOTS` (10).
    NrMemslots,
    /// `KVM_CAP_MULTI_ADDRESS_SPACE` (118): memslot address spaces (0 when
    /// the kernel has no SMM support, meaning one).
    MultiAddressSpace,
}

impl Cap {
    /// Every capability, in report order.
    pub const ALL: [Cap; 11] = [
        Cap::UserMemory2,
        Cap::MemoryFaultInfo,
        Cap::MemoryAttributes,
        Cap::GuestMemfd,
        Cap::VmTypes,
        Cap::GuestMemfdFlags,
        Cap::ExitHypercall,
        Cap::NrMemslots,
        Cap::ReadonlyMem,
        Cap::PreFaultMemory,
        Cap::MultiAddressSpace,
    ];
    /// The `KVM_CAP_*` number.
    pub const fn number(self) -> u32 {
        match self {
            Cap::ReadonlyMem => 81,
            Cap::ExitHypercall => 201,
            Cap::UserMemory2 => 231,
            Cap::MemoryFaultInfo => 232,
            Cap::MemoryAttributes => 233,
            Cap::GuestMemfd => 234,
            Cap::VmTypes => 235,
            Cap::PreFaultMemory => 236,
            Cap::GuestMemfdFlags => 244,
            Cap::NrMemslots => 10,
            Cap::MultiAddressSpace => 118,
        }
    }
    /// The `KVM_CAP_*` name.
    pub const fn name(self) -> &'static str {
        match self {
            Cap::ReadonlyMem => "KVM_CAP_READONLY_MEM",
            Cap::ExitHypercall => "KVM_CAP_EXIT_HYPERCALL",
            Cap::UserMemory2 => "KVM_CAP_USER_MEMORY2",
            Cap::MemoryFaultInfo => "KVM_CAP_MEMORY_FAULT_INFO",
            Cap::MemoryAttributes => "KVM_CAP_MEMORY_ATTRIBUTES",
            Cap::GuestMemfd => "KVM_CAP_GUEST_MEMFD",
            Cap::VmTypes => "KVM_CAP_VM_TYPES",
            Cap::PreFaultMemory => "KVM_CAP_PRE_FAULT_MEMORY",
            Cap::GuestMemfdFlags => "KVM_CAP_GUEST_MEMFD_FLAGS",
            Cap::NrMemslots => "KVM_CAP_NR_MEMSLOTS",
            Cap::MultiAddressSpace => "KVM_CAP_MULTI_ADDRESS_SPACE",
        }
    }
}

/// Memslot flag `KVM_MEM_LOG_DIRTY_PAGES`.
pub const MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// Memslot flag `KVM_MEM_READONLY`.
pub const MEM_READONLY: u32 = 1 << 1;
/// Memslot flag `KVM_MEM_GUEST_MEMFD`.
pub const MEM_GUEST_MEMFD: u32 = 1 << 2;
/// `FALLOC_FL_KEEP_SIZE`.
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
/// `FALLOC_FL_PUNCH_HOLE`.
pub const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
/// `FALLOC_FL_ZERO_RANGE`.
pub const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// The signal a CPU load or store raises where a host access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostSignal {
    /// `SIGBUS`: the page lies inside the mapping, but its file refuses it
    /// (`VM_FAULT_SIGBUS`: beyond the file size, a guest_memfd page that is
    /// not shared, a poisoned page).
    Bus,
    /// `SIGSEGV`: nothing is mapped there (beyond the end of the mapping).
    Segv,
}

impl HostSignal {
    /// `"SIGBUS"` or `"SIGSEGV"`.
    pub const fn name(self) -> &'static str {
        match self {
            HostSignal::Bus => "SIGBUS",
            HostSignal::Segv => "SIGSEGV",
        }
    }
}

impl std::fmt::Display for HostSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host access to memory failed: the model's and the KVM backend's stand-in
/// for the signal a real load or store would raise (the access is never
/// allowed to kill the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host access faulted ({signal}) at offset {offset:#x}")]
pub struct HostFault {
    /// Offset into the mapping of the first byte that could not be accessed.
    pub offset: u64,
    /// How it failed.
    pub signal: HostSignal,
}

impl HostFault {
    /// A `SIGBUS` at `offset`: the file refused the page.
    pub const fn bus(offset: u64) -> HostFault {
        HostFault {
            offset,
            signal: HostSignal::Bus,
        }
    }

    /// A `SIGSEGV` at `offset`: past the end of the mapping.
    pub const fn segv(offset: u64) -> HostFault {
        HostFault {
            offset,
            signal: HostSignal::Segv,
        }
    }
}

/// Host-side access to a mapping (a guest_memfd mmap or a shared backing).
///
/// Writes that precede a fault land, as with real stores (selftest A6).
pub trait HostMemory: Send + Sync {
    /// Length of the mapping in bytes.
    fn len(&self) -> u64;
    /// True if the mapping has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault>;
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault>;
    /// Writes `len` copies of `byte` at `offset`.
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault>;
}

/// How a shared (host) backing is allocated; decides how it is discarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SharedKind {
    /// `MAP_SHARED|MAP_ANONYMOUS`: discarded with `madvise(MADV_REMOVE)`.
    Anonymous,
    /// A memfd mapping: discarded with `fallocate(PUNCH_HOLE)`.
    Memfd,
}

/// A shared backing for `userspace_addr`. Clones share the same memory; the
/// backend keeps a clone for as long as a memslot uses it.
pub trait SharedMemory: HostMemory + Clone + 'static {
    /// How it was allocated.
    fn kind(&self) -> SharedKind;
    /// Frees `[offset, offset+len)` so it reads back as zeros (page-aligned).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
}

/// Which struct a memslot call uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionApi {
    /// `KVM_SET_USER_MEMORY_REGION` (32-byte struct; v2-only flags are EINVAL).
    V1,
    /// `KVM_SET_USER_MEMORY_REGION2`.
    V2,
}

/// The `userspace_addr` of a memslot.
#[derive(Debug)]
pub enum UserAddr<'a, S> {
    /// Offset `offset` into an owned shared backing.
    Backing {
        /// The backing.
        mem: &'a S,
        /// Byte offset into it.
        offset: u64,
    },
    /// A raw value, for validation tests only. Backends that run real guests
    /// refuse nonzero page-aligned raw values rather than hand KVM arbitrary
    /// host memory; 0 (`NULL`, accepted by KVM) and unaligned values pass.
    Raw(u64),
}

/// The `guest_memfd` field of a memslot.
#[derive(Debug, Clone, Copy)]
pub enum GmemRef<'a> {
    /// A guest_memfd.
    File(&'a GuestMemfd),
    /// Some other open file (a memfd, /dev/null, ...).
    Fd(BorrowedFd<'a>),
    /// A raw fd number (e.g. -1 or a closed fd), for validation tests.
    Raw(i32),
}

/// Arguments of `KVM_SET_USER_MEMORY_REGION{,2}`; `size == 0` deletes.
#[derive(Debug)]
pub struct Region<'a, S> {
    /// Which ioctl.
    pub api: RegionApi,
    /// Raw `slot` (bits 31:16 address space, 15:0 id).
    pub slot: u32,
    /// Raw flags.
    pub flags: u32,
    /// `guest_phys_addr`.
    pub gpa: u64,
    /// `memory_size`; 0 deletes.
    pub size: u64,
    /// `userspace_addr`.
    pub userspace: UserAddr<'a, S>,
    /// `guest_memfd` (ignored unless `flags` has `KVM_MEM_GUEST_MEMFD`).
    pub gmem: GmemRef<'a>,
    /// `guest_memfd_offset`.
    pub gmem_offset: u64,
}

impl<'a, S> Region<'a, S> {
    /// [`Quirks::gmem_hva`]: the guest_memfd whose own mapping privmem's KVM
    /// backend stands in for `userspace_addr`: a v2 `KVM_MEM_GUEST_MEMFD`
    /// request with a NULL `userspace_addr`, a `MMAP|INIT_SHARED` file and a
    /// page-aligned, non-empty range inside the file. One predicate for the
    /// backend and the model that mirrors it.
    pub fn gmem_hva_file(&self) -> Option<&'a GuestMemfd> {
        let GmemRef::File(g) = self.gmem else {
            return None;
        };
        let shared = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
        let in_file = self
            .gmem_offset
            .checked_add(self.size)
            .is_some_and(|e| e <= g.size());
        let eligible = self.api == RegionApi::V2
            && self.flags & MEM_GUEST_MEMFD != 0
            && self.size > 0
            && matches!(self.userspace, UserAddr::Raw(0))
            && g.flags().contains(shared)
            && in_file
            && self.gmem_offset.is_multiple_of(crate::types::PAGE_SIZE);
        eligible.then_some(g)
    }
}

/// `fstat` of a guest_memfd.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStat {
    /// `st_size`.
    pub size: u64,
    /// `st_mode`.
    pub mode: u32,
    /// `st_blksize`.
    pub blksize: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// A plain file operation on a guest_memfd (all fail on a real one).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileIo {
    /// `read(fd, buf, 64)`.
    Read,
    /// `write(fd, buf, 64)`.
    Write,
    /// `pread(fd, buf, 64, 0)`.
    Pread,
    /// `pwrite(fd, buf, 64, 0)`.
    Pwrite,
    /// `lseek(fd, 0, SEEK_SET)`.
    Lseek,
}

/// Whether a guest access is private or shared (for `coco` VMs, the guest's
/// intent; ignored by VM types where the attribute decides).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Access {
    /// Shared (the default).
    #[default]
    Shared,
    /// Private.
    Private,
}

/// One guest operation (workload.md "Ops"); backends compile or interpret it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestOp {
    /// Write `byte` over `[gpa, gpa+len)`.
    Write {
        /// Start.
        gpa: Gpa,
        /// Length in bytes.
        len: u64,
        /// Fill byte.
        byte: u8,
        /// Intent.
        access: Access,
    },
    /// Read `[gpa, gpa+len)` and check every byte is `expect`; reports
    /// `CheckPassed` or `CheckFailed` (then stops at `Hlt`).
    Read {
        /// Start.
        gpa: Gpa,
        /// Length in bytes.
        len: u64,
        /// Expected byte.
        expect: u8,
        /// Intent.
        access: Access,
    },
    /// `KVM_HC_MAP_GPA_RANGE(gpa, pages, attrs)`, raw arguments. If
    /// `expect_ret` is set and RAX differs, reports `RetMismatch` and stops.
    Map {
        /// a0
        gpa: u64,
        /// a1
        pages: u64,
        /// a2
        attrs: u64,
        /// Expected RAX.
        expect_ret: Option<i64>,
    },
    /// Report `Sync { tag }`.
    Sync {
        /// Tag.
        tag: u64,
    },
    /// Stop (`KVM_EXIT_HLT`).
    Halt,
    /// Loop forever without exiting (a hung or hostile guest): only a kick
    /// (`--timeout`) ends the run.
    Spin,
}

/// Why `Vcpu::run` returned without an exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// EINTR: retry.
    #[error("KVM_RUN interrupted (EINTR)")]
    Interrupted,
    /// EAGAIN: retry.
    #[error("KVM_RUN returned EAGAIN")]
    Again,
    /// The exit could not be decoded.
    #[error("exit decode failed")]
    Decode(#[from] DecodeError),
    /// Any other backend failure.
    #[error("vcpu run failed")]
    Backend(#[from] BackendError),
}

/// Ways a backend's host deviates from upstream KVM: not kernel semantics,
/// but what privmem observes through these traits there. All off means
/// upstream behaviour (the model's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quirks {
    /// The host's KVM is PVM (`kvm_pvm`, software virtualization): default
    /// VMs' guest faults are always served through `userspace_addr`, never
    /// from guest_memfd, whatever the slot's gmem flags (NULL or unmapped →
    /// `KVM_EXIT_MMIO`), and releasing a bound guest_memfd changes nothing
    /// for the guest. Upstream serves gmem-only (MMAP) slots from
    /// guest_memfd.
    pub pvm: bool,
    /// privmem's KVM backend stands in a `MAP_SHARED` mmap of the slot's
    /// guest_memfd range for `userspace_addr` when a
    /// `KVM_SET_USER_MEMORY_REGION2` request has `KVM_MEM_GUEST_MEMFD`,
    /// [`UserAddr::Raw`]`(0)` and a `MMAP|INIT_SHARED` [`GmemRef::File`];
    /// the mapping holds a file reference until the slot is deleted. An
    /// emulation the KVM backend's caller opts into (off by default; the
    /// CLI turns it on on PVM hosts, where gmem-only slots are otherwise
    /// unreachable); each VM reports it in [`Vm::emulations`] once it acted.
    pub gmem_hva: bool,
}

impl Quirks {
    /// A PVM host with the guest_memfd mapping opted in (what the CLI uses
    /// there).
    pub const PVM: Quirks = Quirks {
        pvm: true,
        gmem_hva: true,
    };

    /// True if no quirk is on.
    pub fn is_upstream(self) -> bool {
        self == Quirks::default()
    }
}

/// Kernel behaviour a backend produced itself instead of the kernel, on a
/// host where the kernel path is not reachable: a result obtained through
/// one of these is privmem's, not the kernel's (conformance reports it as
/// emulated). Each flag says the emulation *acted* on this VM at least once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Emulations {
    /// A guest `KVM_HC_MAP_GPA_RANGE` arrived over the port-I/O transport
    /// (PVM hosts, where `vmcall`/`vmmcall` never exit) and the backend
    /// answered KVM's synchronous checks itself (-1000 when the exit is not
    /// enabled, -22 for bad arguments) or built the hypercall exit.
    pub hypercall: bool,
    /// A gmem-only memslot's `userspace_addr = 0` was replaced by a mapping
    /// of its guest_memfd range ([`Quirks::gmem_hva`]).
    pub gmem_hva: bool,
}

impl Emulations {
    /// True if no emulation acted.
    pub fn is_none(self) -> bool {
        self == Emulations::default()
    }

    /// The names of the emulations that acted: "hypercall", "gmem_hva".
    pub fn names(self) -> Vec<&'static str> {
        [("hypercall", self.hypercall), ("gmem_hva", self.gmem_hva)]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }
}

fn shared_gmem_caps(check: impl Fn(Cap) -> Result<u64>) -> bool {
    let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED).0;
    check(Cap::GuestMemfd).unwrap_or(0) != 0
        && check(Cap::GuestMemfdFlags).unwrap_or(0) & flags == flags
}

/// A hypervisor: `/dev/kvm`, or the model of it.
pub trait Hypervisor: Send + Sync + 'static {
    /// The VM type.
    type Vm: Vm;
    /// A host mmap of a guest_memfd. Holds a reference on the file.
    type Mapping: HostMemory;

    /// "kvm" or "model".
    fn name(&self) -> &'static str;
    /// System-scope `KVM_CHECK_EXTENSION`.
    fn check_extension(&self, cap: Cap) -> Result<u64>;
    /// True if `KVM_CAP_GUEST_MEMFD` and both `MMAP` and `INIT_SHARED` in
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` are here: a guest_memfd can be a
    /// default VM's shared memory. False on kernels without guest_memfd.
    fn has_shared_gmem(&self) -> bool {
        shared_gmem_caps(|c| self.check_extension(c))
    }
    /// `KVM_CREATE_VM(type)`.
    fn create_vm(&self, ty: VmType) -> Result<Self::Vm>;
    /// `KVM_CREATE_VM` with a raw type number (for validation tests).
    fn create_vm_raw(&self, ty: u64) -> Result<Self::Vm>;

    /// `fallocate(gmem, mode, offset, len)` with raw arguments.
    fn gmem_fallocate(&self, gmem: &GuestMemfd, mode: i32, offset: i64, len: i64) -> Result<()>;
    /// A plain file operation on the guest_memfd.
    fn gmem_file_io(&self, gmem: &GuestMemfd, io: FileIo) -> Result<usize>;
    /// `ftruncate(gmem, len)`.
    fn gmem_truncate(&self, gmem: &GuestMemfd, len: u64) -> Result<()>;
    /// `fstat(gmem)`.
    fn gmem_stat(&self, gmem: &GuestMemfd) -> Result<FileStat>;
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, gmem, 0)`.
    fn gmem_mmap(&self, gmem: &GuestMemfd, len: u64, shared: bool) -> Result<Self::Mapping>;
    /// The host quirks this backend shows (none: upstream behaviour).
    fn quirks(&self) -> Quirks {
        Quirks::default()
    }
    /// The release of the kernel whose behaviour this backend shows, as
    /// `uname -r` gives it (`6.12.118-amd64`, or a model profile's name,
    /// `6.12`): what conformance picks its per-kernel expectations by.
    /// Default: the running kernel's.
    fn kernel_release(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
    }
    /// How often this backend (and every VM and vCPU it created) answered
    /// with privmem's own emulation instead of the kernel's code (none by
    /// default). See [`crate::emulation`].
    fn emulations(&self) -> crate::EmulationCounts {
        crate::EmulationCounts::default()
    }
    /// `mmap(NULL, len, prot, flags, gmem, 0)` with the protection and
    /// sharing of `opts` (Linux 7.3 checks, in order: `PROT_EXEC` EPERM, no
    /// `GUEST_MEMFD_FLAG_MMAP` ENODEV, not `MAP_SHARED` EINVAL).
    ///
    /// The default serves read/write mappings through [`Hypervisor::gmem_mmap`]
    /// and answers `Unsupported` for executable ones.
    fn gmem_mmap_with(
        &self,
        gmem: &GuestMemfd,
        len: u64,
        opts: MmapOptions,
    ) -> Result<Self::Mapping> {
        match opts.prot {
            MmapProt::ReadWrite => self.gmem_mmap(gmem, len, opts.sharing == MmapSharing::Shared),
            MmapProt::ReadWriteExec => Err(unsupported(
                "mmap",
                format!(
                    "PROT_EXEC mappings of a guest_memfd on the {} backend",
                    self.name()
                ),
            )),
        }
    }
    /// `mbind(map + offset, len, policy.mode, &policy.nodes, 65, flags)`:
    /// sets the NUMA policy of the guest_memfd pages under the range (7.3
    /// keeps it per file offset, so it outlives the mapping).
    ///
    /// This and the other mapping calls below refuse (`Invalid`) a range
    /// that reaches past the mapping before the kernel sees it: the kernel
    /// would act on whatever else is mapped there. The default answers
    /// `Unsupported`.
    fn gmem_mbind(
        &self,
        map: &Self::Mapping,
        offset: u64,
        len: u64,
        policy: MemPolicy,
        flags: u32,
    ) -> Result<()> {
        let _ = (map, len, policy, flags);
        Err(unsupported(
            "mbind",
            format!(
                "mbind on a guest_memfd mapping (offset {offset:#x}) on the {} backend",
                self.name()
            ),
        ))
    }
    /// `get_mempolicy(&mode, &nodes, 65, map + offset, MPOL_F_ADDR)`.
    ///
    /// The default answers `Unsupported`.
    fn gmem_get_mempolicy(&self, map: &Self::Mapping, offset: u64) -> Result<MemPolicy> {
        let _ = map;
        Err(unsupported(
            "get_mempolicy",
            format!(
                "get_mempolicy on a guest_memfd mapping (offset {offset:#x}) on the {} backend",
                self.name()
            ),
        ))
    }
    /// `madvise(map + offset, len, advice)`.
    ///
    /// The default answers `Unsupported`.
    fn gmem_madvise(
        &self,
        map: &Self::Mapping,
        offset: u64,
        len: u64,
        advice: Advice,
    ) -> Result<()> {
        let _ = (map, offset, len);
        Err(unsupported(
            "madvise",
            format!(
                "{} on a guest_memfd mapping on the {} backend",
                advice.name(),
                self.name()
            ),
        ))
    }
    /// Hardware-poisons the guest_memfd page under `map + offset`, as
    /// `madvise(MADV_HWPOISON)` does on Linux 7.3 (`memory_failure` →
    /// `kvm_gmem_error_folio`: the folio stays in the file, later guest
    /// faults there get `EHWPOISON`, host touches SIGBUS, `PUNCH_HOLE`
    /// drops it). `Ok` once the page is poisoned: the kernel's own answer
    /// (-1 EBUSY, and a SIGBUS to the caller) is the backend's to absorb.
    ///
    /// The default answers `Unsupported`.
    fn gmem_poison(&self, map: &Self::Mapping, offset: u64) -> Result<()> {
        let _ = map;
        Err(unsupported(
            "madvise(MADV_HWPOISON)",
            format!(
                "hardware-poison injection at mapping offset {offset:#x} on the {} backend",
                self.name()
            ),
        ))
    }
}

/// A VM.
pub trait Vm: Send + Sync + 'static {
    /// The vCPU type.
    type Vcpu: Vcpu;
    /// The shared-backing type.
    type Shared: SharedMemory;

    /// The type this VM was created with.
    fn vm_type(&self) -> VmType;
    /// VM-scope `KVM_CHECK_EXTENSION`.
    fn check_extension(&self, cap: Cap) -> Result<u64>;
    /// True if this VM can have a `MMAP|INIT_SHARED` guest_memfd (see
    /// [`Hypervisor::has_shared_gmem`]; false for VMs with private memory).
    fn has_shared_gmem(&self) -> bool {
        shared_gmem_caps(|c| self.check_extension(c))
    }
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, mask)`.
    fn enable_exit_hypercall(&self, mask: u64) -> Result<()>;
    /// `KVM_CREATE_GUEST_MEMFD(size, flags)` with raw values.
    fn create_guest_memfd(&self, size: u64, flags: GmemFlags) -> Result<GuestMemfd>;
    /// `KVM_SET_USER_MEMORY_REGION{,2}`.
    fn set_user_memory_region(&self, region: &Region<'_, Self::Shared>) -> Result<()>;
    /// `KVM_SET_MEMORY_ATTRIBUTES(address, size, attributes, flags)` with raw values.
    fn set_memory_attributes(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<()>;
    /// Allocates a shared backing of `size` bytes (page-aligned).
    fn create_shared(&self, size: u64, kind: SharedKind) -> Result<Self::Shared>;
    /// `KVM_CREATE_VCPU(index)`.
    fn create_vcpu(&self, index: u32) -> Result<Self::Vcpu>;
    /// How guest `map` ops reach the host: "vmcall", "vmmcall", "port-io" or "direct".
    fn hypercall_transport(&self) -> &'static str;
    /// The VM's own file descriptor, for backends whose VMs are files (a
    /// KVM VM fd). Conformance passes it where a guest_memfd is expected
    /// (selftest B3: EINVAL). The model's VMs are not files: `None`.
    fn vm_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// The emulations that have acted on this VM so far (none for a backend
    /// that leaves everything to its kernel, e.g. the model).
    fn emulations(&self) -> Emulations {
        Emulations::default()
    }
    /// Marks the guest_memfd page backing `gpa` hardware-poisoned (fault injection).
    /// Backends that cannot do this safely return `Unsupported`.
    fn poison_page(&self, gpa: Gpa) -> Result<()> {
        Err(unsupported(
            "poison_page",
            format!("hardware-poison injection at {gpa} (only the model backend can inject it)"),
        ))
    }
}

/// A vCPU. `run` is called from the vCPU's own thread.
pub trait Vcpu: Send + 'static {
    /// Its index.
    fn index(&self) -> u32;
    /// Loads the guest program (compiled to x86 code on KVM, interpreted by the model).
    fn load_program(&mut self, ops: &[GuestOp]) -> Result<()>;
    /// `KVM_RUN`, decoded. Re-entry after an exit retries a faulting access.
    fn run(&mut self) -> Result<Exit, RunError>;
    /// Sets `hypercall.ret` for the pending hypercall exit; the guest sees it in
    /// RAX on the next `run`.
    fn complete_hypercall(&mut self, ret: i64) -> Result<()>;
    /// A handle other threads use to make a running (or the next) `run`
    /// return [`RunError::Interrupted`] promptly (timeouts, shutdown).
    fn kicker(&self) -> std::sync::Arc<dyn Kick>;
    /// `KVM_PRE_FAULT_MEMORY(range)`: maps the range into the guest's page
    /// tables as guest accesses would (private where the attribute at each
    /// page says so), without running the guest. `range` comes back
    /// advanced past what was mapped, on success and on failure; the call
    /// succeeds when at least one page was mapped. A kick interrupts it
    /// (`EINTR`), as a signal does.
    ///
    /// The default answers `Unsupported`.
    fn pre_fault_memory(&mut self, range: &mut PreFaultRange) -> Result<()> {
        Err(unsupported(
            "KVM_PRE_FAULT_MEMORY",
            format!(
                "pre-faulting {:#x}+{:#x} on this backend",
                range.gpa, range.size
            ),
        ))
    }
}

/// Interrupts a vCPU from another thread.
pub trait Kick: Send + Sync {
    /// Makes the vCPU's current or next `run` return `RunError::Interrupted`.
    fn kick(&self);
}

/// Convenience: an `Unsupported` error.
pub fn unsupported(op: &'static str, missing: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        op,
        missing: missing.into(),
    }
}
