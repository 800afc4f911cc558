//! `KVM_HC_MAP_GPA_RANGE` and `KVM_CAP_EXIT_HYPERCALL` (docs/semantics/caps.md, docs/semantics/hypercall.md, docs/selftests.md F30–F31).

use privmem_core::backend::{GuestOp, Vcpu, Vm};
use privmem_core::exit::MapGpaRange;
use privmem_core::{Errno, Exit, Gpa, GuestReport, Hypercall, VmType};

use super::*;

fn enabled_vm() -> (ModelHypervisor, ModelVm) {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    vm.enable_exit_hypercall(1 << 12).unwrap();
    (hv, vm)
}

#[test]
fn enable_exit_hypercall_other_bit_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert_eq!(
        errno(vm.enable_exit_hypercall(1 << 11)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn enable_exit_hypercall_zero_succeeds() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    assert!(vm.enable_exit_hypercall(0).is_ok());
}

#[test]
fn map_without_exit_enabled_returns_enosys_without_exit() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, Some(-1000)), GuestOp::Halt]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.rax(), -1000);
}

#[test]
fn map_after_disable_returns_enosys() {
    let (_hv, vm) = enabled_vm();
    vm.enable_exit_hypercall(0).unwrap();
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, None)]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.rax(), -1000);
}

#[test]
fn map_unaligned_gpa_returns_einval_without_exit() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(1, 1, true, Some(-22))]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.rax(), -22);
}

#[test]
fn map_zero_pages_returns_einval_without_exit() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(0, 0, true, Some(-22))]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn map_wrapping_range_returns_einval_without_exit() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(PG, u64::MAX, true, Some(-22))]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn map_valid_exits_with_args() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(M2, 512, true, None)]);
    let want = Exit::Hypercall(Hypercall::MapGpaRange(
        MapGpaRange::decode(M2, 512, 0x10).unwrap(),
    ));
    assert_eq!(v.run().unwrap(), want);
}

#[test]
fn map_does_not_check_memslots_or_attrs() {
    // No slot anywhere, reserved attribute bits: KVM still exits.
    let (_hv, vm) = enabled_vm();
    let op = GuestOp::Map {
        gpa: 1 << 40,
        pages: 1,
        attrs: 0xdead_0000,
        expect_ret: None,
    };
    let mut v = vcpu(&vm, 0, &[op]);
    let e = v.run().unwrap();
    assert!(matches!(
        e,
        Exit::Hypercall(Hypercall::InvalidMapGpaRange { .. })
    ));
}

#[test]
fn map_ret_is_preset_to_zero() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, Some(0)), GuestOp::Halt]);
    assert!(matches!(v.run().unwrap(), Exit::Hypercall(_)));
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.rax(), 0);
}

#[test]
fn map_completed_ret_reaches_guest() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, None), GuestOp::Halt]);
    v.run().unwrap();
    v.complete_hypercall(-14).unwrap();
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.rax(), -14);
}

#[test]
fn map_ret_mismatch_reports_and_stops() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(
        &vm,
        0,
        &[map(PG, 1, false, Some(0)), GuestOp::Sync { tag: 1 }],
    );
    v.run().unwrap();
    v.complete_hypercall(-22).unwrap();
    let want = Exit::Report(GuestReport::RetMismatch {
        gpa: Gpa(PG),
        ret: -22,
        expected: 0,
    });
    assert_eq!(v.run().unwrap(), want);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn map_enosys_mismatch_reports_ret() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, Some(0))]);
    let want = Exit::Report(GuestReport::RetMismatch {
        gpa: Gpa(0),
        ret: -1000,
        expected: 0,
    });
    assert_eq!(v.run().unwrap(), want);
}

#[test]
fn complete_hypercall_without_pending_is_invalid() {
    let (_hv, vm) = enabled_vm();
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    assert!(v.complete_hypercall(0).is_err());
}

#[test]
fn map_on_default_vm_exits_too() {
    // The generic path has no VM-type check.
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.enable_exit_hypercall(1 << 12).unwrap();
    let mut v = vcpu(&vm, 0, &[map(0, 1, true, None)]);
    assert!(matches!(v.run().unwrap(), Exit::Hypercall(_)));
}

/// Two exits on one vCPU: the first completed with -5 (userspace writes
/// `kvm_run.hypercall.ret`), the second left uncompleted. What the guest
/// gets for the second, per profile.
fn uncompleted_after_completed(profile: KernelProfile) -> i64 {
    let hv = ModelHypervisor::new(profile);
    let vm = hv.create_vm(VmType::SwProtected).unwrap();
    vm.enable_exit_hypercall(1 << 12).unwrap();
    let ops = [
        map(0, 1, true, Some(-5)),
        map(PG, 1, true, None),
        GuestOp::Halt,
    ];
    let mut v = vcpu(&vm, 0, &ops);
    assert!(matches!(v.run().unwrap(), Exit::Hypercall(_)));
    v.complete_hypercall(-5).unwrap();
    assert!(matches!(v.run().unwrap(), Exit::Hypercall(_)));
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    v.rax()
}

#[test]
fn uncompleted_map_on_6_12_gets_what_userspace_last_wrote() {
    // 6.12 never writes kvm_run.hypercall.ret itself.
    assert_eq!(uncompleted_after_completed(KernelProfile::V6_12), -5);
}

#[test]
fn uncompleted_map_on_6_18_gets_the_preset_zero() {
    assert_eq!(uncompleted_after_completed(KernelProfile::V7_3), 0);
}
