//! Kernel profiles: which Linux version the model behaves as, and the
//! capability values and flag masks that follow from it.
//!
//! Two profiles, each checked against a real kernel in the rig: Debian's
//! 6.12.118 and 7.3.4 (`linux-source-7.3`). Where they differ for
//! userspace:
//!
//! | | 6.12 | 7.3 |
//! |---|---|---|
//! | `KVM_CAP_GUEST_MEMFD` | 1 at system scope, per VM only with private memory | 1 for every VM |
//! | `KVM_CAP_GUEST_MEMFD_FLAGS` | 0 (unknown) | MMAP, plus INIT_SHARED without private memory: 3 system/default, 1 sw-protected |
//! | `KVM_CREATE_GUEST_MEMFD` flags | any → EINVAL | outside the VM's cap → EINVAL |
//! | `KVM_MEM_GUEST_MEMFD` | VMs with private memory | every VM |
//! | guest_memfd `mmap` | ENODEV | PROT_EXEC EPERM, no MMAP ENODEV, not shared EINVAL |
//! | gmem-only slots, NUMA policy, `madvise` | — | yes (files with MMAP) |
//! | clearing attributes | reserves (can ENOMEM) | never reserves |
//! | pre-fault over a slot being deleted/moved | retries until a signal (EINTR) | EAGAIN |
//!
//! Identical in both (source-checked): the binding order (EEXIST for an
//! overlapping file range, at commit), the fault path and its exits,
//! `KVM_PRE_FAULT_MEMORY`'s range rules, hardware poison. What depends on a
//! host's build or hardware rather than the version is in [`Build`].
//!
//! The former "6.18" profile, which modelled the PVM hosts' 6.18.44 and was
//! never checked against a kernel with private memory, is retired: its two
//! host facts became build options read off the host
//! ([`Build::memory_attributes`], [`Build::tdp`]), the rest equals 7.3
//! except the overlap of guest_memfd file ranges, EINVAL in upstream 6.18.

use privmem_core::backend::{MEM_GUEST_MEMFD, MEM_LOG_DIRTY_PAGES, MEM_READONLY};
use privmem_core::{Attrs, Cap, GmemFlags, VmType};

/// `KVM_USER_MEM_SLOTS` on x86 (`KVM_CAP_NR_MEMSLOTS`).
pub const NR_MEMSLOTS: u16 = 32764;
/// `KVM_MEM_MAX_NR_PAGES` on x86: `(1 << 31) - 1`.
pub const MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;
/// `KVM_EXIT_HYPERCALL_VALID_MASK`: only `KVM_HC_MAP_GPA_RANGE` (bit 12).
pub use privmem_core::exit::EXIT_HYPERCALL_MAP_GPA_RANGE as EXIT_HYPERCALL_VALID_MASK;
/// x86-64 `TASK_SIZE_MAX` with 4-level paging: the `access_ok` limit.
pub const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;
/// Highest accepted vCPU index (`KVM_MAX_VCPU_IDS` on x86 without extras).
pub const MAX_VCPU_IDS: u32 = 4096;

/// `KVM_CAP_VM_TYPES` as the model reports it:
/// `BIT(KVM_X86_DEFAULT_VM) | BIT(KVM_X86_SW_PROTECTED_VM) | BIT(KVM_X86_SNP_VM)`.
///
/// The model's `coco` VM is created with type 4 ([`VmType::kvm_type`]), so
/// the bitmap advertises SNP (bit 4) and nothing else beyond 0 and 1.
pub const VM_TYPES: u64 = (1 << VmType::Default.kvm_type())
    | (1 << VmType::SwProtected.kvm_type())
    | (1 << VmType::Coco.kvm_type());

/// Which kernel the model behaves as.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum KernelProfile {
    /// Linux 6.12 (Debian's 6.12.118, the rig's first kernel).
    V6_12,
    /// Linux 7.3 (Debian's 7.3.4 from trixie-backports, the rig's default).
    #[default]
    V7_3,
}

/// What `KVM_PRE_FAULT_MEMORY` does when the memslot under the page it is
/// mapping is being deleted or moved (`KVM_MEMSLOT_INVALID`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PreFaultInvalidSlot {
    /// 6.12: `kvm_tdp_map_page` retries (`RET_PF_RETRY`) until a signal is
    /// pending, then EINTR. The deletion waits for the pre-fault's SRCU
    /// read side, so without a signal neither finishes.
    RetryUntilSignal,
    /// 7.3: `kvm_mmu_faultin_pfn` gives the pre-fault EAGAIN.
    Again,
}

impl KernelProfile {
    /// Every profile, oldest first.
    pub const ALL: [KernelProfile; 2] = [KernelProfile::V6_12, KernelProfile::V7_3];

    /// A short name ("6.12", "7.3").
    pub const fn name(self) -> &'static str {
        match self {
            KernelProfile::V6_12 => "6.12",
            KernelProfile::V7_3 => "7.3",
        }
    }

    /// The profile named `name` ("6.12", "7.3").
    pub fn from_name(name: &str) -> Option<KernelProfile> {
        KernelProfile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Maps a `KVM_CREATE_VM` type number to a VM type, or `None` (EINVAL).
    /// 7.3 knows `KVM_X86_TDX_VM` (5) and 6.12 does not, but neither
    /// supports it without TDX hardware: both answer EINVAL, as for every
    /// type missing from `KVM_CAP_VM_TYPES`.
    pub fn vm_type_from_raw(self, ty: u64) -> Option<VmType> {
        [VmType::Default, VmType::SwProtected, VmType::Coco]
            .into_iter()
            .find(|t| t.kvm_type() == ty)
    }

    /// `kvm_gmem_get_supported_flags(kvm)`; `vm` is `None` at system scope.
    pub fn gmem_supported_flags(self, vm: Option<VmType>) -> GmemFlags {
        match self {
            KernelProfile::V6_12 => GmemFlags(0),
            KernelProfile::V7_3 => {
                // MMAP always; INIT_SHARED if !kvm || !kvm_arch_has_private_mem.
                if vm.is_none_or(|t| !t.has_private_mem()) {
                    GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
                } else {
                    GmemFlags::MMAP
                }
            }
        }
    }

    /// True if `mmap` of a guest_memfd with `PROT_EXEC` is EPERM before any
    /// guest_memfd check: 7.3's guest_memfd filesystem is mounted noexec
    /// (`do_mmap`'s `path_noexec`). 6.12's anon inode has no `mmap` at all
    /// (ENODEV for every prot).
    pub fn gmem_mmap_noexec(self) -> bool {
        matches!(self, KernelProfile::V7_3)
    }

    /// True if `KVM_SET_MEMORY_ATTRIBUTES` reserves xarray entries (where
    /// it can fail with ENOMEM) also when clearing (`attributes == 0`).
    /// 7.3 reserves only when setting.
    pub fn attr_clear_reserves(self) -> bool {
        matches!(self, KernelProfile::V6_12)
    }

    /// What a pre-fault does over a memslot being deleted or moved.
    pub fn pre_fault_invalid_slot(self) -> PreFaultInvalidSlot {
        match self {
            KernelProfile::V6_12 => PreFaultInvalidSlot::RetryUntilSignal,
            KernelProfile::V7_3 => PreFaultInvalidSlot::Again,
        }
    }

    /// `kvm_supported_mem_attributes(kvm)`.
    pub fn supported_attributes(self, vm: Option<VmType>) -> u64 {
        if vm.is_none_or(VmType::has_private_mem) {
            Attrs::PRIVATE.0
        } else {
            0
        }
    }

    /// `kvm_arch_has_readonly_mem(kvm)`: false for VMs with protected state
    /// (SEV-ES/SNP/TDX, i.e. the model's `coco`).
    pub fn has_readonly_mem(self, ty: VmType) -> bool {
        !matches!(ty, VmType::Coco)
    }

    /// True if `KVM_HC_MAP_GPA_RANGE` presets `kvm_run.hypercall.ret` to 0
    /// before its exit to userspace, and stores in-kernel results (the
    /// synchronous `-KVM_ENOSYS`/`-KVM_EINVAL`) there too: a guest whose
    /// exit userspace does not complete gets 0. 6.12 (Debian's 6.12.118)
    /// does neither, so such a guest gets whatever userspace last wrote to
    /// `ret`; upstream presets it since the `____kvm_emulate_hypercall`
    /// rework (the "QEMU <= 9.2" comment), as do 6.18 and 7.3.
    pub fn presets_hypercall_ret(self) -> bool {
        !matches!(self, KernelProfile::V6_12)
    }

    /// `check_memory_region_flags()`: the valid flag mask for `flags`.
    pub fn valid_region_flags(self, ty: VmType, flags: u32) -> u32 {
        let mut valid = MEM_LOG_DIRTY_PAGES;
        let gmem_ok = match self {
            KernelProfile::V6_12 => ty.has_private_mem(),
            KernelProfile::V7_3 => true,
        };
        if gmem_ok {
            valid |= MEM_GUEST_MEMFD;
        }
        if flags & MEM_GUEST_MEMFD != 0 {
            valid &= !MEM_LOG_DIRTY_PAGES;
        }
        if self.has_readonly_mem(ty) && flags & MEM_GUEST_MEMFD == 0 {
            valid |= MEM_READONLY;
        }
        valid
    }

    /// `KVM_CHECK_EXTENSION`; `vm` is `None` at system scope.
    pub fn check_extension(self, cap: Cap, vm: Option<VmType>) -> u64 {
        match cap {
            Cap::UserMemory2 | Cap::MemoryFaultInfo => 1,
            Cap::MemoryAttributes => self.supported_attributes(vm),
            Cap::GuestMemfd => match self {
                KernelProfile::V6_12 => u64::from(vm.is_none_or(VmType::has_private_mem)),
                KernelProfile::V7_3 => 1,
            },
            Cap::VmTypes => VM_TYPES,
            // `tdp_enabled`, a property of the host: see [`Build::tdp`].
            Cap::PreFaultMemory => 1,
            Cap::GuestMemfdFlags => self.gmem_supported_flags(vm).0,
            Cap::ExitHypercall => EXIT_HYPERCALL_VALID_MASK,
            Cap::NrMemslots => u64::from(NR_MEMSLOTS),
            Cap::ReadonlyMem => u64::from(vm.is_none_or(|t| self.has_readonly_mem(t))),
            // Without CONFIG_KVM_SMM the capability is not compiled in; the
            // model's SMM setting lives outside the profile (see
            // [`multi_address_space`]), and this is its answer without SMM.
            Cap::MultiAddressSpace => 0,
        }
    }
}

/// `KVM_CAP_MULTI_ADDRESS_SPACE`: 0 without `CONFIG_KVM_SMM` (one address
/// space); with it `KVM_MAX_NR_ADDRESS_SPACES` (2) at system scope and
/// `kvm_arch_nr_memslot_as_ids(kvm)` at VM scope: 1 for VMs with private
/// memory (no SMM for them), else 2.
pub fn multi_address_space(smm: bool, vm: Option<VmType>) -> u64 {
    match (smm, vm) {
        (false, _) => 0,
        (true, Some(t)) if t.has_private_mem() => 1,
        (true, _) => 2,
    }
}

/// Kernel build options and host hardware the model follows beyond its
/// [`KernelProfile`]: what a host's `.config` or CPU decides rather than
/// its version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Build {
    /// `CONFIG_KVM_SMM`: VMs without private memory get a second memslot
    /// address space (`as_id` 1, `KVM_CAP_MULTI_ADDRESS_SPACE` = 2).
    pub smm: bool,
    /// `CONFIG_KVM_GUEST_MEMFD` (6.12: `CONFIG_KVM_PRIVATE_MEM`). Without
    /// it `KVM_CREATE_GUEST_MEMFD` is not a VM ioctl (`ENOTTY`),
    /// `KVM_MEM_GUEST_MEMFD` is not a valid memslot flag (`EINVAL`) and
    /// `KVM_CAP_GUEST_MEMFD` / `KVM_CAP_GUEST_MEMFD_FLAGS` read 0, as on a
    /// PVM host whose KVM is built without it. (7.3 always selects it on
    /// x86-64.)
    pub guest_memfd: bool,
    /// `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES` (selected by
    /// `KVM_SW_PROTECTED_VM` and the SEV/TDX options). Without it
    /// `KVM_SET_MEMORY_ATTRIBUTES` is not a VM ioctl (`ENOTTY`),
    /// `KVM_CAP_MEMORY_ATTRIBUTES` reads 0 at every scope, and no VM type
    /// with private memory exists (`KVM_CAP_VM_TYPES` = 1), as on the PVM
    /// hosts.
    pub memory_attributes: bool,
    /// `tdp_enabled`: two-dimensional paging (NPT/EPT). It is
    /// `KVM_CAP_PRE_FAULT_MEMORY`; without it (shadow paging, PVM)
    /// `KVM_PRE_FAULT_MEMORY` is EOPNOTSUPP.
    pub tdp: bool,
}

impl Default for Build {
    /// The rig's x86-64 kernels: guest_memfd, memory attributes and TDP,
    /// no SMM.
    fn default() -> Build {
        Build {
            smm: false,
            guest_memfd: true,
            memory_attributes: true,
            tdp: true,
        }
    }
}

impl Build {
    /// `KVM_CHECK_EXTENSION` of a `profile` kernel with these options;
    /// `vm` is `None` at system scope.
    pub fn check_extension(self, profile: KernelProfile, cap: Cap, vm: Option<VmType>) -> u64 {
        match cap {
            Cap::MultiAddressSpace => multi_address_space(self.smm, vm),
            Cap::GuestMemfd | Cap::GuestMemfdFlags if !self.guest_memfd => 0,
            Cap::MemoryAttributes if !self.memory_attributes => 0,
            Cap::VmTypes => self.vm_types(),
            Cap::PreFaultMemory => u64::from(self.tdp),
            _ => profile.check_extension(cap, vm),
        }
    }

    /// `KVM_CAP_VM_TYPES`: [`VM_TYPES`], or only the default VM without
    /// memory attributes.
    pub fn vm_types(self) -> u64 {
        if self.memory_attributes {
            VM_TYPES
        } else {
            1 << VmType::Default.kvm_type()
        }
    }

    /// Maps a `KVM_CREATE_VM` type number to a VM type this kernel
    /// supports, or `None` (EINVAL).
    pub fn vm_type_from_raw(self, profile: KernelProfile, ty: u64) -> Option<VmType> {
        profile
            .vm_type_from_raw(ty)
            .filter(|t| self.vm_types() & (1 << t.kvm_type()) != 0)
    }

    /// `check_memory_region_flags()`'s valid mask for `flags` on a VM of
    /// type `ty`.
    pub fn valid_region_flags(self, profile: KernelProfile, ty: VmType, flags: u32) -> u32 {
        let valid = profile.valid_region_flags(ty, flags);
        if self.guest_memfd {
            valid
        } else {
            valid & !MEM_GUEST_MEMFD
        }
    }
}

/// `kvm_arch_nr_memslot_as_ids(kvm)`: how many memslot address spaces a VM
/// of type `ty` has (`as_id` must be below it).
pub fn nr_memslot_as_ids(smm: bool, ty: VmType) -> u32 {
    multi_address_space(smm, Some(ty)).max(1) as u32
}

/// `kvm_mmu_max_gfn()` width with shadow paging (and the model's default).
pub const DEFAULT_MAX_GPA_BITS: u32 = 52;

/// The guest-physical width KVM's MMU allows on this host: 52 with shadow
/// paging (PVM, or TDP off), else the CPU's physical address width.
pub fn host_max_gpa_bits() -> u32 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    max_gpa_bits_for(
        std::path::Path::new("/sys/module/kvm_pvm").exists(),
        read("/sys/module/kvm_amd/parameters/npt").as_deref(),
        read("/sys/module/kvm_intel/parameters/ept").as_deref(),
        &read("/proc/cpuinfo").unwrap_or_default(),
    )
}

/// `tdp_enabled` from what a host shows: not PVM, and `kvm_amd.npt` or
/// `kvm_intel.ept` reading `Y`/`1`.
pub(crate) fn tdp_for(pvm: bool, npt: Option<&str>, ept: Option<&str>) -> bool {
    let on = |v: Option<&str>| v.is_some_and(|v| matches!(v.trim(), "Y" | "y" | "1"));
    !pvm && (on(npt) || on(ept))
}

/// `kvm_mmu_max_gfn()`'s width from what a host shows: `tdp_enabled ?
/// host MAXPHYADDR : 52`. TDP is on when KVM is not PVM and `kvm_amd.npt`
/// or `kvm_intel.ept` reads `Y`/`1`; the width is then the "address sizes :
/// NN bits physical" of `cpuinfo` (the kernel reads CPUID 0x80000008, which
/// differs only when SME/MKTME steal address bits).
pub fn max_gpa_bits_for(pvm: bool, npt: Option<&str>, ept: Option<&str>, cpuinfo: &str) -> u32 {
    if !tdp_for(pvm, npt, ept) {
        return DEFAULT_MAX_GPA_BITS;
    }
    cpuinfo
        .lines()
        .find(|l| l.starts_with("address sizes"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .filter(|b| (32..=52).contains(b))
        .unwrap_or(DEFAULT_MAX_GPA_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO_40: &str = "processor\t: 0\naddress sizes\t: 40 bits physical, 48 bits virtual\n";

    #[test]
    fn max_gpa_bits_is_52_with_shadow_paging() {
        // PVM is shadow paging whatever the vendor modules say.
        assert_eq!(max_gpa_bits_for(true, Some("Y\n"), None, CPUINFO_40), 52);
        // TDP disabled or vendor module absent.
        assert_eq!(max_gpa_bits_for(false, Some("N\n"), None, CPUINFO_40), 52);
        assert_eq!(max_gpa_bits_for(false, None, Some("N\n"), CPUINFO_40), 52);
        assert_eq!(max_gpa_bits_for(false, None, None, CPUINFO_40), 52);
    }

    #[test]
    fn max_gpa_bits_is_host_phys_bits_with_tdp() {
        assert_eq!(max_gpa_bits_for(false, Some("Y\n"), None, CPUINFO_40), 40);
        assert_eq!(max_gpa_bits_for(false, None, Some("1\n"), CPUINFO_40), 40);
        // No parsable width: the shadow-paging default.
        assert_eq!(
            max_gpa_bits_for(false, Some("Y"), None, "flags : svm\n"),
            52
        );
    }

    #[test]
    fn vm_types_is_default_swprot_and_snp() {
        assert_eq!(VM_TYPES, 0x13);
    }

    #[test]
    fn gmem_flags_cap_on_7_3_default_vm_is_3() {
        let p = KernelProfile::V7_3;
        assert_eq!(
            p.check_extension(Cap::GuestMemfdFlags, Some(VmType::Default)),
            3
        );
    }

    #[test]
    fn gmem_flags_cap_on_7_3_sw_protected_vm_is_mmap_only() {
        let p = KernelProfile::V7_3;
        assert_eq!(
            p.check_extension(Cap::GuestMemfdFlags, Some(VmType::SwProtected)),
            1
        );
    }

    #[test]
    fn gmem_flags_cap_on_6_12_is_zero() {
        let p = KernelProfile::V6_12;
        assert_eq!(p.check_extension(Cap::GuestMemfdFlags, None), 0);
    }

    #[test]
    fn guest_memfd_cap_on_6_12_default_vm_is_zero() {
        let p = KernelProfile::V6_12;
        assert_eq!(p.check_extension(Cap::GuestMemfd, Some(VmType::Default)), 0);
        assert_eq!(p.check_extension(Cap::GuestMemfd, None), 1);
    }

    #[test]
    fn memory_attributes_cap_is_zero_on_default_vm() {
        let p = KernelProfile::V7_3;
        assert_eq!(
            p.check_extension(Cap::MemoryAttributes, Some(VmType::Default)),
            0
        );
        assert_eq!(
            p.check_extension(Cap::MemoryAttributes, Some(VmType::Coco)),
            8
        );
        assert_eq!(p.check_extension(Cap::MemoryAttributes, None), 8);
    }

    #[test]
    fn readonly_mem_cap_is_zero_on_coco_vm() {
        let p = KernelProfile::V7_3;
        assert_eq!(p.check_extension(Cap::ReadonlyMem, Some(VmType::Coco)), 0);
        assert_eq!(
            p.check_extension(Cap::ReadonlyMem, Some(VmType::Default)),
            1
        );
    }

    #[test]
    fn region_flags_gmem_excludes_log_dirty_and_readonly() {
        let p = KernelProfile::V7_3;
        let valid = p.valid_region_flags(VmType::Default, MEM_GUEST_MEMFD);
        assert_eq!(valid, MEM_GUEST_MEMFD);
    }

    #[test]
    fn region_flags_6_12_default_vm_rejects_gmem() {
        let p = KernelProfile::V6_12;
        let valid = p.valid_region_flags(VmType::Default, MEM_GUEST_MEMFD);
        assert_eq!(valid & MEM_GUEST_MEMFD, 0);
    }
}
