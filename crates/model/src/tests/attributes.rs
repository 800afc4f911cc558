//! `KVM_SET_MEMORY_ATTRIBUTES` (docs/semantics/attributes.md).

use privmem_core::backend::{Cap, Hypervisor, Vm};
use privmem_core::{Errno, GmemFlags, Gpa, VmType};

use super::*;

const PRIV: u64 = 8;

#[test]
fn attributes_without_generic_memory_attributes_return_enotty() {
    // A kernel built without CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES (the PVM
    // hosts): the ioctl does not exist, whatever the arguments.
    for profile in KernelProfile::ALL {
        let hv = ModelHypervisor::new(profile).with_memory_attributes(false);
        let vm = hv.create_vm(VmType::Default).unwrap();
        assert_eq!(
            errno(vm.set_memory_attributes(0, PG, PRIV, 0)),
            Some(Errno::ENOTTY)
        );
        assert_eq!(
            errno(vm.set_memory_attributes(0, PG, 0, 0)),
            Some(Errno::ENOTTY)
        );
        assert_eq!(vm.check_extension(Cap::MemoryAttributes).unwrap(), 0);
        assert_eq!(hv.check_extension(Cap::MemoryAttributes).unwrap(), 0);
    }
}

#[test]
fn without_generic_memory_attributes_only_default_vms_exist() {
    let hv = ModelHypervisor::new(KernelProfile::V7_3).with_memory_attributes(false);
    assert_eq!(hv.check_extension(Cap::VmTypes).unwrap(), 1);
    assert_eq!(
        errno(hv.create_vm(VmType::SwProtected)),
        Some(Errno::EINVAL)
    );
    assert_eq!(errno(hv.create_vm(VmType::Coco)), Some(Errno::EINVAL));
}

#[test]
fn attributes_on_7_3_default_vm_private_returns_einval_clear_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert_eq!(
        errno(vm.set_memory_attributes(0, PG, PRIV, 0)),
        Some(Errno::EINVAL)
    );
    assert!(vm.set_memory_attributes(0, PG, 0, 0).is_ok());
}

#[test]
fn attributes_on_6_12_default_vm_private_returns_einval() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let vm = hv.create_vm(VmType::Default).unwrap();
    assert_eq!(
        errno(vm.set_memory_attributes(0, PG, PRIV, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn attributes_on_6_12_default_vm_shared_succeeds() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let vm = hv.create_vm(VmType::Default).unwrap();
    assert!(vm.set_memory_attributes(0, PG, 0, 0).is_ok());
}

#[test]
fn attributes_nonzero_flags_return_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(
        errno(vm.set_memory_attributes(0, PG, PRIV, 1)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn attributes_unknown_bits_return_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    for bits in [1, 2, 4, 16, 1 << 63] {
        let r = vm.set_memory_attributes(0, PG, bits, 0);
        assert_eq!(errno(r), Some(Errno::EINVAL), "attrs {bits:#x}");
    }
}

#[test]
fn attributes_zero_size_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(
        errno(vm.set_memory_attributes(0, 0, PRIV, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn attributes_wrapping_range_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let r = vm.set_memory_attributes(u64::MAX - PG + 1, PG, PRIV, 0);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn attributes_unaligned_address_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(
        errno(vm.set_memory_attributes(1, PG, PRIV, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn attributes_unaligned_size_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(
        errno(vm.set_memory_attributes(0, PG + 1, PRIV, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn attributes_without_memslot_succeed() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert!(vm.set_memory_attributes(GPA_C0, M2, PRIV, 0).is_ok());
    assert!(vm.is_private(Gpa(GPA_C0 + PG)));
}

#[test]
fn attributes_noop_returns_zero() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    vm.set_memory_attributes(0, M2, PRIV, 0).unwrap();
    assert!(vm.set_memory_attributes(PG, PG, PRIV, 0).is_ok());
    assert!(vm.set_memory_attributes(M2, PG, 0, 0).is_ok());
    assert_eq!(vm.attributes().len(), 1);
}

#[test]
fn attributes_are_coalesced() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    vm.set_memory_attributes(PG, PG, PRIV, 0).unwrap();
    vm.set_memory_attributes(2 * PG, PG, PRIV, 0).unwrap();
    assert_eq!(vm.attributes().len(), 1);
}

#[test]
fn attributes_survive_slot_deletion() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, GPA_C0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    delete_slot(&vm, 10).unwrap();
    assert!(vm.is_private(Gpa(GPA_C0)));
}

#[test]
fn attributes_injected_enomem_changes_nothing() {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    hv.inject_failure(crate::InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    let r = vm.set_memory_attributes(0, PG, PRIV, 0);
    assert_eq!(errno(r), Some(Errno::ENOMEM));
    assert!(!vm.is_private(Gpa(0)));
}

#[test]
fn attributes_never_touch_data() {
    // Converting to private and back leaves the shared backing's bytes.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mem = add_shared_slot(&vm, 0, 0, PG);
    privmem_core::backend::HostMemory::fill(&mem, 0, PG, 0x11).unwrap();
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    vm.set_memory_attributes(0, PG, 0, 0).unwrap();
    let mut b = [0u8; 8];
    privmem_core::backend::HostMemory::read(&mem, 0, &mut b).unwrap();
    assert_eq!(b, [0x11; 8]);
}
