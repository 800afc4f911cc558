//! Kernel profiles: which Linux version the model behaves as, and the
//! capability values and flag masks that follow from it.
//!
//! Sources: `kernel-semantics.md` §1.4 (6.18) and the v6.12 `kvm_main.c` /
//! `guest_memfd.c` (no `KVM_CAP_GUEST_MEMFD_FLAGS`, gmem flags must be 0,
//! `KVM_CAP_GUEST_MEMFD` and `KVM_MEM_GUEST_MEMFD` only for VMs with private
//! memory, `KVM_SET_MEMORY_ATTRIBUTES` reachable for every VM type because the
//! rig kernel is built with `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`).

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
    /// Linux 6.12 (the nested rig kernel, Debian's 6.12.118).
    V6_12,
    /// Linux 6.18 (this host's kernel).
    #[default]
    V6_18,
}

impl KernelProfile {
    /// A short name ("6.12", "6.18").
    pub const fn name(self) -> &'static str {
        match self {
            KernelProfile::V6_12 => "6.12",
            KernelProfile::V6_18 => "6.18",
        }
    }

    /// Maps a `KVM_CREATE_VM` type number to a VM type, or `None` (EINVAL).
    pub fn vm_type_from_raw(self, ty: u64) -> Option<VmType> {
        [VmType::Default, VmType::SwProtected, VmType::Coco]
            .into_iter()
            .find(|t| t.kvm_type() == ty)
    }

    /// `kvm_gmem_get_supported_flags(kvm)`; `vm` is `None` at system scope.
    pub fn gmem_supported_flags(self, vm: Option<VmType>) -> GmemFlags {
        match self {
            KernelProfile::V6_12 => GmemFlags(0),
            KernelProfile::V6_18 => {
                // MMAP always; INIT_SHARED if !kvm || !kvm_arch_has_private_mem.
                if vm.is_none_or(|t| !t.has_private_mem()) {
                    GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
                } else {
                    GmemFlags::MMAP
                }
            }
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

    /// True if `KVM_SET_MEMORY_ATTRIBUTES` exists for this VM. On 6.18 the
    /// model mirrors this host, whose default VMs answer ENOTTY; the 6.12 rig
    /// kernel has `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`, so the ioctl runs
    /// and validates against an empty supported set.
    pub fn has_attribute_ioctl(self, ty: VmType) -> bool {
        match self {
            KernelProfile::V6_12 => true,
            KernelProfile::V6_18 => ty.has_private_mem(),
        }
    }

    /// `kvm_arch_has_readonly_mem(kvm)`: false for VMs with protected state
    /// (SEV-ES/SNP/TDX, i.e. the model's `coco`).
    pub fn has_readonly_mem(self, ty: VmType) -> bool {
        !matches!(ty, VmType::Coco)
    }

    /// True if a guest_memfd's binding to a new memslot is recorded in the
    /// memslot commit phase (`kvm_gmem_commit_memory_region()`, after
    /// `kvm_arch_prepare_memory_region()`), so binding file pages that
    /// another memslot holds is `EEXIST`. Debian's 6.12.118 does this (its
    /// `kvm_gmem_bind()` is split into a prepare and a commit half; measured
    /// in the rig, and read in its source); 6.12.117, measured in the rig
    /// before, and the 6.18 source the spec follows bind in
    /// `kvm_gmem_bind()` and answer `EINVAL`.
    pub fn gmem_binds_at_commit(self) -> bool {
        matches!(self, KernelProfile::V6_12)
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
            KernelProfile::V6_18 => true,
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
                KernelProfile::V6_18 => 1,
            },
            Cap::VmTypes => VM_TYPES,
            Cap::PreFaultMemory => 0,
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

/// Kernel build options the model follows beyond its [`KernelProfile`]:
/// what a host's `.config` decides rather than its version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Build {
    /// `CONFIG_KVM_SMM`: VMs without private memory get a second memslot
    /// address space (`as_id` 1, `KVM_CAP_MULTI_ADDRESS_SPACE` = 2).
    pub smm: bool,
    /// `CONFIG_KVM_GUEST_MEMFD` (6.12: `CONFIG_KVM_PRIVATE_MEM`). Without
    /// it `KVM_CREATE_GUEST_MEMFD` is not a VM ioctl (`ENOTTY`),
    /// `KVM_MEM_GUEST_MEMFD` is not a valid memslot flag (`EINVAL`) and
    /// `KVM_CAP_GUEST_MEMFD` / `KVM_CAP_GUEST_MEMFD_FLAGS` read 0, as on a
    /// PVM host whose KVM is built without it.
    pub guest_memfd: bool,
}

impl Default for Build {
    /// Upstream's x86-64 defaults the model assumes: guest_memfd, no SMM.
    fn default() -> Build {
        Build {
            smm: false,
            guest_memfd: true,
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
            _ => profile.check_extension(cap, vm),
        }
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

/// `kvm_mmu_max_gfn()`'s width from what a host shows: `tdp_enabled ?
/// host MAXPHYADDR : 52`. TDP is on when KVM is not PVM and `kvm_amd.npt`
/// or `kvm_intel.ept` reads `Y`/`1`; the width is then the "address sizes :
/// NN bits physical" of `cpuinfo` (the kernel reads CPUID 0x80000008, which
/// differs only when SME/MKTME steal address bits).
pub fn max_gpa_bits_for(pvm: bool, npt: Option<&str>, ept: Option<&str>, cpuinfo: &str) -> u32 {
    let on = |v: Option<&str>| v.is_some_and(|v| matches!(v.trim(), "Y" | "y" | "1"));
    if pvm || !(on(npt) || on(ept)) {
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
    fn gmem_flags_cap_on_6_18_default_vm_is_3() {
        let p = KernelProfile::V6_18;
        assert_eq!(
            p.check_extension(Cap::GuestMemfdFlags, Some(VmType::Default)),
            3
        );
    }

    #[test]
    fn gmem_flags_cap_on_6_18_sw_protected_vm_is_mmap_only() {
        let p = KernelProfile::V6_18;
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
        let p = KernelProfile::V6_18;
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
        let p = KernelProfile::V6_18;
        assert_eq!(p.check_extension(Cap::ReadonlyMem, Some(VmType::Coco)), 0);
        assert_eq!(
            p.check_extension(Cap::ReadonlyMem, Some(VmType::Default)),
            1
        );
    }

    #[test]
    fn region_flags_gmem_excludes_log_dirty_and_readonly() {
        let p = KernelProfile::V6_18;
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
