//! What every case gets: the hypervisor, its probed capabilities, the
//! `Check` result type with fail/skip, and helpers that turn backend errors
//! into failures (never panics) and missing capabilities into named skips.

use std::fmt::Display;

use privmem_core::backend::{GmemRef, Region, RegionApi, UserAddr};
use privmem_core::{BackendError, Cap, Errno, GmemFlags, Hypervisor, Quirks, Vm, VmType};

use crate::kernels::Kernel;

/// Why a case stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A check failed.
    Fail(String),
    /// The backend lacks a capability or VM type (named in the reason).
    Skip(String),
    /// The case ran to its end, but skipped some of its checks (the reason
    /// names them and what is missing). Only ever returned last.
    Partial(String),
}

/// A case body's result.
pub(crate) type Check<T = ()> = Result<T, Stop>;

/// The shared-backing type of `H`'s VMs.
pub(crate) type Shared<H> = <<H as Hypervisor>::Vm as Vm>::Shared;

/// A failure with `msg`.
pub(crate) fn fail(msg: impl Into<String>) -> Stop {
    Stop::Fail(msg.into())
}

/// Fails the case with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::ctx::Stop::Fail(format!($($arg)+)));
        }
    };
}
pub(crate) use ensure;

/// Backend results → case results: an error is a failure naming what was
/// being done; `Unsupported` is a skip naming what is missing.
pub(crate) trait OrFail<T> {
    /// `Err(e)` becomes `Stop::Fail("{what}: {e}")`.
    fn or_fail(self, what: impl Display) -> Check<T>;
}

impl<T> OrFail<T> for Result<T, BackendError> {
    fn or_fail(self, what: impl Display) -> Check<T> {
        self.map_err(|e| match e {
            BackendError::Unsupported { missing, .. } => Stop::Skip(missing),
            e => Stop::Fail(format!("{what}: {e}")),
        })
    }
}

/// Checks that `r` failed with exactly `want`.
pub(crate) fn expect_errno<T>(
    r: Result<T, BackendError>,
    want: Errno,
    what: impl Display,
) -> Check {
    match r {
        Err(e) if e.errno() == Some(want) => Ok(()),
        Err(e) => Err(fail(format!("{what}: expected {want}, got {e}"))),
        Ok(_) => Err(fail(format!("{what}: expected {want}, got success"))),
    }
}

/// `KVM_CREATE_VM` type names.
pub(crate) fn vm_type_name(raw: u64) -> String {
    match raw {
        0 => "KVM_X86_DEFAULT_VM".into(),
        1 => "KVM_X86_SW_PROTECTED_VM".into(),
        2 => "KVM_X86_SEV_VM".into(),
        3 => "KVM_X86_SEV_ES_VM".into(),
        4 => "KVM_X86_SNP_VM".into(),
        5 => "KVM_X86_TDX_VM".into(),
        n => format!("VM type {n}"),
    }
}

/// guest_memfd flag names, `|`-joined.
pub(crate) fn gmem_flag_names(flags: u64) -> String {
    if flags == 0 {
        return "0".into();
    }
    (0..64)
        .filter(|b| flags & (1 << b) != 0)
        .map(|b| match b {
            0 => "GUEST_MEMFD_FLAG_MMAP".to_string(),
            1 => "GUEST_MEMFD_FLAG_INIT_SHARED".to_string(),
            b => format!("bit {b}"),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// System-scope capabilities, probed once per suite run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SysCaps {
    /// `KVM_CAP_VM_TYPES` as reported (0 on kernels without it).
    pub vm_types: u64,
    /// `KVM_CAP_GUEST_MEMFD`.
    pub guest_memfd: u64,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS`.
    pub gmem_flags: u64,
    /// `KVM_CAP_MEMORY_ATTRIBUTES`.
    pub memory_attributes: u64,
    /// `KVM_CAP_EXIT_HYPERCALL`.
    pub exit_hypercall: u64,
    /// `KVM_CAP_NR_MEMSLOTS`.
    pub nr_memslots: u64,
    /// `KVM_CAP_USER_MEMORY2`.
    pub user_memory2: u64,
}

impl SysCaps {
    /// Probes `hv`; a failing probe reads as 0 (absent).
    pub fn probe<H: Hypervisor>(hv: &H) -> SysCaps {
        let cap = |c| hv.check_extension(c).unwrap_or(0);
        SysCaps {
            vm_types: cap(Cap::VmTypes),
            guest_memfd: cap(Cap::GuestMemfd),
            gmem_flags: cap(Cap::GuestMemfdFlags),
            memory_attributes: cap(Cap::MemoryAttributes),
            exit_hypercall: cap(Cap::ExitHypercall),
            nr_memslots: cap(Cap::NrMemslots),
            user_memory2: cap(Cap::UserMemory2),
        }
    }

    /// The VM type bitmap the selftests use: `BIT(0)` when the cap is 0.
    pub fn vm_type_bits(&self) -> u64 {
        if self.vm_types == 0 {
            1
        } else {
            self.vm_types
        }
    }
}

/// The context a case runs in.
pub(crate) struct Ctx<'h, H: Hypervisor> {
    /// The hypervisor under test.
    pub(crate) hv: &'h H,
    /// Its system-scope capabilities.
    pub(crate) caps: SysCaps,
    /// The kernel whose behaviour the cases expect where kernels differ.
    pub(crate) kernel: Kernel,
}

impl<'h, H: Hypervisor> Ctx<'h, H> {
    /// Probes `hv`.
    pub(crate) fn new(hv: &'h H) -> Self {
        Ctx {
            hv,
            caps: SysCaps::probe(hv),
            kernel: Kernel::from_release(&hv.kernel_release()),
        }
    }

    /// True if `KVM_CAP_VM_TYPES` has `ty`.
    pub(crate) fn has_vm_type(&self, ty: VmType) -> bool {
        self.caps.vm_type_bits() & (1 << ty.kvm_type()) != 0
    }

    /// Skips unless the backend can create VMs of type `ty`.
    pub(crate) fn require_vm_type(&self, ty: VmType) -> Check {
        if self.has_vm_type(ty) {
            return Ok(());
        }
        Err(Stop::Skip(format!(
            "KVM_CAP_VM_TYPES={:#x} lacks {}",
            self.caps.vm_type_bits(),
            vm_type_name(ty.kvm_type())
        )))
    }

    /// Skips unless `KVM_CAP_GUEST_MEMFD` is set at system scope.
    pub(crate) fn require_guest_memfd(&self) -> Check {
        if self.caps.guest_memfd != 0 {
            return Ok(());
        }
        Err(Stop::Skip("KVM_CAP_GUEST_MEMFD=0".into()))
    }

    /// Skips unless `KVM_CAP_EXIT_HYPERCALL` can forward `KVM_HC_MAP_GPA_RANGE`.
    pub(crate) fn require_map_gpa_exit(&self) -> Check {
        if self.caps.exit_hypercall & (1 << 12) != 0 {
            return Ok(());
        }
        Err(Stop::Skip(format!(
            "KVM_CAP_EXIT_HYPERCALL={:#x} lacks KVM_HC_MAP_GPA_RANGE (bit 12)",
            self.caps.exit_hypercall
        )))
    }

    /// `KVM_CREATE_VM(ty)`; a failure fails the case.
    pub(crate) fn create_vm(&self, ty: VmType) -> Check<H::Vm> {
        self.hv.create_vm(ty).or_fail(format_args!(
            "KVM_CREATE_VM({})",
            vm_type_name(ty.kvm_type())
        ))
    }

    /// `KVM_CREATE_VM` with a raw type.
    pub(crate) fn create_vm_raw(&self, ty: u64) -> Check<H::Vm> {
        self.hv
            .create_vm_raw(ty)
            .or_fail(format_args!("KVM_CREATE_VM({})", vm_type_name(ty)))
    }

    /// The raw VM types to exercise: every bit of `KVM_CAP_VM_TYPES`.
    pub(crate) fn vm_types(&self) -> Vec<u64> {
        let bits = self.caps.vm_type_bits();
        (0..64).filter(|b| bits & (1 << b) != 0).collect()
    }

    /// A VM that has private memory if the backend supports one, else a
    /// default VM that can bind guest_memfd; skips when neither exists.
    pub(crate) fn gmem_slot_vm(&self) -> Check<H::Vm> {
        let private = self.has_vm_type(VmType::SwProtected);
        let vm = self.create_vm(if private {
            VmType::SwProtected
        } else {
            VmType::Default
        })?;
        if vm.check_extension(Cap::GuestMemfd).unwrap_or(0) != 0 {
            return Ok(vm);
        }
        Err(Stop::Skip(if private {
            "the sw-protected VM has KVM_CAP_GUEST_MEMFD=0 (a kernel without guest_memfd)".into()
        } else {
            format!(
                "KVM_CAP_VM_TYPES={:#x} lacks KVM_X86_SW_PROTECTED_VM and the default VM has KVM_CAP_GUEST_MEMFD=0",
                self.caps.vm_type_bits()
            )
        }))
    }
}

/// The VM-scope `KVM_CAP_GUEST_MEMFD_FLAGS`.
pub(crate) fn vm_gmem_flags<V: Vm>(vm: &V) -> u64 {
    vm.check_extension(Cap::GuestMemfdFlags).unwrap_or(0)
}

/// Skips unless the VM accepts every flag in `want`.
pub(crate) fn require_gmem_flags<V: Vm>(vm: &V, want: GmemFlags) -> Check {
    let have = vm_gmem_flags(vm);
    if have & want.0 == want.0 {
        return Ok(());
    }
    Err(Stop::Skip(format!(
        "KVM_CAP_GUEST_MEMFD_FLAGS={have:#x} ({}) lacks {}",
        vm_type_name(vm.vm_type().kvm_type()),
        gmem_flag_names(want.0 & !have)
    )))
}

/// Skip reason: the host's KVM is PVM ([`Quirks::pvm`]).
pub(crate) const PVM_SKIP: &str =
    "host KVM is PVM: guest_memfd-only slots are not served from guest_memfd (kvm_pvm)";
/// Skip reason: the KVM backend's guest_memfd mapping ([`Quirks::gmem_hva`]).
pub(crate) const GMEM_HVA_SKIP: &str = "privmem's KVM backend maps the guest_memfd for a NULL \
     userspace_addr (PRIVMEM_GMEM_HVA) and the mapping keeps the file open";

/// Skips if a default VM's gmem-only slot with a NULL `userspace_addr` and
/// a guest_memfd with `flags` cannot serve the guest from guest_memfd on
/// this backend: on PVM only the KVM backend's mapping of a
/// `MMAP|INIT_SHARED` file reaches it.
pub(crate) fn require_gmem_only_faults(quirks: Quirks, flags: GmemFlags) -> Check {
    let mapped = quirks.gmem_hva && flags.contains(GmemFlags::MMAP.union(GmemFlags::INIT_SHARED));
    if quirks.pvm && !mapped {
        return Err(Stop::Skip(PVM_SKIP.into()));
    }
    Ok(())
}

/// Skips unless releasing a default VM's gmem-only guest_memfd is visible
/// to the guest: on PVM it never is, and the KVM backend's mapping of a
/// `MMAP|INIT_SHARED` file holds the file.
pub(crate) fn require_gmem_release_visible(quirks: Quirks, flags: GmemFlags) -> Check {
    require_gmem_only_faults(quirks, flags)?;
    if quirks.pvm {
        return Err(Stop::Skip(PVM_SKIP.into()));
    }
    if quirks.gmem_hva && flags.contains(GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)) {
        return Err(Stop::Skip(GMEM_HVA_SKIP.into()));
    }
    Ok(())
}

/// A memslot request; `userspace` and `gmem` default to NULL and fd -1.
pub(crate) fn region<'a, S>(slot: u32, flags: u32, gpa: u64, size: u64) -> Region<'a, S> {
    Region {
        api: RegionApi::V2,
        slot,
        flags,
        gpa,
        size,
        userspace: UserAddr::Raw(0),
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    }
}

/// A delete request for `slot`.
pub(crate) fn delete<'a, S>(slot: u32) -> Region<'a, S> {
    region(slot, 0, 0, 0)
}
