//! `KVM_CREATE_GUEST_MEMFD` (docs/semantics/guest-memfd.md) and capabilities (docs/semantics/caps.md).

use privmem_core::backend::{Cap, Hypervisor, Vm};
use privmem_core::{Errno, GmemFlags, VmType};

use super::*;

#[test]
fn create_gmem_zero_size_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert_eq!(
        errno(vm.create_guest_memfd(0, GmemFlags(0))),
        Some(Errno::EINVAL)
    );
}

#[test]
fn create_gmem_unaligned_size_returns_einval() {
    // A3: every size in 1..page_size is EINVAL; 4097 too.
    let (_hv, vm) = setup_vm(VmType::Default);
    for size in (1..PG).chain([PG + 1]) {
        assert_eq!(
            errno(vm.create_guest_memfd(size, GmemFlags(0))),
            Some(Errno::EINVAL)
        );
    }
}

#[test]
fn create_gmem_negative_loff_size_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let size = 0u64.wrapping_sub(PG);
    assert_eq!(
        errno(vm.create_guest_memfd(size, GmemFlags(0))),
        Some(Errno::EINVAL)
    );
}

#[test]
fn create_gmem_2_pow_62_succeeds_without_allocating() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 1 << 62, GmemFlags(0));
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
    assert_eq!(g.size(), 1 << 62);
}

#[test]
fn create_gmem_each_supported_flag_succeeds_on_default_vm() {
    // A1 on a default 7.3 VM: bits 0 and 1 are supported.
    let (_hv, vm) = setup_vm(VmType::Default);
    assert!(vm.create_guest_memfd(PG, GmemFlags::MMAP).is_ok());
    assert!(vm.create_guest_memfd(PG, GmemFlags::INIT_SHARED).is_ok());
}

#[test]
fn create_gmem_unknown_flag_bits_return_einval() {
    // A1: bits 2..63 → EINVAL.
    let (_hv, vm) = setup_vm(VmType::Default);
    for bit in 2..64 {
        let r = vm.create_guest_memfd(PG, GmemFlags(1 << bit));
        assert_eq!(errno(r), Some(Errno::EINVAL), "bit {bit}");
    }
}

#[test]
fn create_gmem_init_shared_on_sw_protected_vm_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let r = vm.create_guest_memfd(PG, GmemFlags::INIT_SHARED);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn create_gmem_mmap_on_sw_protected_vm_succeeds() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert!(vm.create_guest_memfd(PG, GmemFlags::MMAP).is_ok());
}

#[test]
fn create_gmem_flags_match_vm_cap_for_every_bit_and_type() {
    // A1 as the selftest runs it, for every VM type in VM_TYPES.
    for ty in [VmType::Default, VmType::SwProtected, VmType::Coco] {
        let (_hv, vm) = setup_vm(ty);
        let cap = vm.check_extension(Cap::GuestMemfdFlags).unwrap();
        for bit in 0..64 {
            let r = vm.create_guest_memfd(PG, GmemFlags(1 << bit));
            let supported = cap & (1 << bit) != 0;
            assert_eq!(r.is_ok(), supported, "{ty:?} bit {bit}");
        }
    }
}

#[test]
fn create_gmem_on_6_12_with_any_flag_returns_einval() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let vm = hv.create_vm(VmType::SwProtected).unwrap();
    assert_eq!(
        errno(vm.create_guest_memfd(PG, GmemFlags::MMAP)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn create_gmem_on_6_12_default_vm_succeeds() {
    // kvm_vm_ioctl has no VM-type check for KVM_CREATE_GUEST_MEMFD; only
    // the cap and the memslot flag depend on private memory.
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let vm = hv.create_vm(VmType::Default).unwrap();
    assert!(vm.create_guest_memfd(PG, GmemFlags(0)).is_ok());
}

#[test]
fn create_gmem_injected_enomem_fails() {
    let (hv, vm) = setup_vm(VmType::Default);
    hv.inject_failure(crate::InjectOp::CreateGuestMemfd, 1, Errno::ENOMEM);
    assert_eq!(
        errno(vm.create_guest_memfd(PG, GmemFlags(0))),
        Some(Errno::ENOMEM)
    );
    assert!(vm.create_guest_memfd(PG, GmemFlags(0)).is_ok());
}

#[test]
fn create_vm_unsupported_types_return_einval() {
    let hv = setup_hv();
    for ty in [2, 3, 5, 6, 1 << 40] {
        assert_eq!(
            errno(hv.create_vm_raw(ty)),
            Some(Errno::EINVAL),
            "type {ty}"
        );
    }
}

#[test]
fn create_vm_types_in_cap_succeed() {
    let hv = setup_hv();
    let types = hv.check_extension(Cap::VmTypes).unwrap();
    assert_eq!(types, 0x13);
    for ty in [0, 1, 4] {
        assert!(hv.create_vm_raw(ty).is_ok());
    }
}

#[test]
fn system_caps_match_7_3_table() {
    let hv = setup_hv();
    let cap = |c| hv.check_extension(c).unwrap();
    assert_eq!(cap(Cap::UserMemory2), 1);
    assert_eq!(cap(Cap::MemoryFaultInfo), 1);
    assert_eq!(cap(Cap::MemoryAttributes), 8);
    assert_eq!(cap(Cap::GuestMemfd), 1);
    assert_eq!(cap(Cap::GuestMemfdFlags), 3);
    assert_eq!(cap(Cap::ExitHypercall), 4096);
    assert_eq!(cap(Cap::NrMemslots), 32764);
    assert_eq!(cap(Cap::ReadonlyMem), 1);
    // tdp_enabled on the default build (the rig's NPT).
    assert_eq!(cap(Cap::PreFaultMemory), 1);
}

#[test]
fn default_vm_caps_have_no_attributes() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert_eq!(vm.check_extension(Cap::MemoryAttributes).unwrap(), 0);
    assert_eq!(vm.check_extension(Cap::GuestMemfd).unwrap(), 1);
    assert_eq!(vm.check_extension(Cap::GuestMemfdFlags).unwrap(), 3);
}

#[test]
fn sw_protected_vm_caps_have_private_attribute() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(vm.check_extension(Cap::MemoryAttributes).unwrap(), 8);
    assert_eq!(vm.check_extension(Cap::GuestMemfdFlags).unwrap(), 1);
}

#[test]
fn gmem_from_6_12_profile_caps_have_no_flags_cap() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    assert_eq!(hv.check_extension(Cap::GuestMemfdFlags).unwrap(), 0);
    let vm = hv.create_vm(VmType::Default).unwrap();
    assert_eq!(vm.check_extension(Cap::GuestMemfd).unwrap(), 0);
}

#[test]
fn create_vcpu_duplicate_index_returns_eexist() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let _a = vm.create_vcpu(0).unwrap();
    assert_eq!(errno(vm.create_vcpu(0)), Some(Errno::EEXIST));
}

#[test]
fn create_vcpu_index_too_large_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert_eq!(errno(vm.create_vcpu(4096)), Some(Errno::EINVAL));
}
