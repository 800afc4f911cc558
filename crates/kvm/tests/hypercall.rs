//! `KVM_HC_MAP_GPA_RANGE` from real guests: the kernel's synchronous errors,
//! the exit, and the return value the guest sees (through `expect_ret`).

mod common;

use common::*;
use privmem_core::exit::{MapGpaRange, EXIT_HYPERCALL_MAP_GPA_RANGE as EXIT_MAP_GPA_RANGE};
use privmem_core::{Exit, Gpa, GuestOp, GuestReport, Hypercall, Vcpu, Vm};

fn map(gpa: u64, pages: u64, attrs: u64, expect_ret: Option<i64>) -> GuestOp {
    GuestOp::Map {
        gpa,
        pages,
        attrs,
        expect_ret,
    }
}

#[test]
fn map_without_exit_enabled_returns_enosys_without_exit() {
    let Some(hv) = kvm_or_skip("map_without_exit_enabled_returns_enosys_without_exit") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let ops = [
        map(0x1000, 1, 0x10, Some(-1000)),
        GuestOp::Sync { tag: 9 },
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    assert_eq!(exits, vec![Exit::Report(GuestReport::Sync { tag: 9 })]);
}

#[test]
fn map_without_exit_enabled_mismatch_reports_ret() {
    let Some(hv) = kvm_or_skip("map_without_exit_enabled_mismatch_reports_ret") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mut vcpu = vcpu_with(&g.vm, 0, &[map(0x1000, 1, 0x10, Some(0)), GuestOp::Halt]);

    let exits = run_to_hlt(&mut vcpu);

    let mismatch = GuestReport::RetMismatch {
        gpa: Gpa(0x1000),
        ret: -1000,
        expected: 0,
    };
    assert_eq!(exits, vec![Exit::Report(mismatch)]);
}

#[test]
fn map_with_exit_enabled_exits_and_guest_sees_completed_ret() {
    let Some(hv) = kvm_or_skip("map_with_exit_enabled_exits_and_guest_sees_completed_ret") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_MAP_GPA_RANGE).unwrap();
    let ops = [
        map(0x2000, 3, 0x10, Some(-7)),
        GuestOp::Sync { tag: 1 },
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exit = vcpu_next(&mut vcpu);
    let expected = MapGpaRange::decode(0x2000, 3, 0x10).unwrap();
    assert_eq!(exit, Exit::Hypercall(Hypercall::MapGpaRange(expected)));
    vcpu.complete_hypercall(-7).unwrap();

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag: 1 })]
    );
}

#[test]
fn map_with_exit_enabled_uncompleted_ret_is_preset_zero() {
    let Some(hv) = kvm_or_skip("map_with_exit_enabled_uncompleted_ret_is_preset_zero") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_MAP_GPA_RANGE).unwrap();
    let ops = [
        map(0x0, 1, 0, Some(0)),
        GuestOp::Sync { tag: 2 },
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    assert!(
        matches!(vcpu_next(&mut vcpu), Exit::Hypercall(Hypercall::MapGpaRange(m)) if !m.to_private)
    );

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag: 2 })]
    );
}

#[test]
fn map_with_exit_enabled_bad_args_return_einval_without_exit() {
    let Some(hv) = kvm_or_skip("map_with_exit_enabled_bad_args_return_einval_without_exit") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_MAP_GPA_RANGE).unwrap();
    let ops = [
        map(0x1001, 1, 0, Some(-22)),        // unaligned
        map(0x1000, 0, 0, Some(-22)),        // zero pages
        map(0x1000, u64::MAX, 0, Some(-22)), // gfn + npages wraps
        GuestOp::Sync { tag: 3 },
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag: 3 })]
    );
}

#[test]
fn map_reserved_attr_bits_still_exit() {
    // KVM does not check a2; privmem's strict decoding flags it instead.
    let Some(hv) = kvm_or_skip("map_reserved_attr_bits_still_exit") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_MAP_GPA_RANGE).unwrap();
    let mut vcpu = vcpu_with(&g.vm, 0, &[map(0x1000, 1, 1 << 5, None), GuestOp::Halt]);

    let exit = vcpu_next(&mut vcpu);

    assert!(matches!(
        exit,
        Exit::Hypercall(Hypercall::InvalidMapGpaRange { .. })
    ));
    vcpu.complete_hypercall(-22).unwrap();
    assert_eq!(run_to_hlt(&mut vcpu), vec![]);
}

#[test]
fn map_byte_end_past_2_64_without_gfn_wrap_still_exits() {
    // KVM checks `gfn + npages <= gfn` in u64 page units only: a range whose
    // byte end passes 2^64 but whose gfn sum does not wrap exits to userspace.
    let Some(hv) = kvm_or_skip("map_byte_end_past_2_64_without_gfn_wrap_still_exits") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_MAP_GPA_RANGE).unwrap();
    let mut vcpu = vcpu_with(
        &g.vm,
        0,
        &[map(!0xfff, 1 << 52, 0, Some(-22)), GuestOp::Halt],
    );

    let exit = vcpu_next(&mut vcpu);

    assert!(matches!(
        exit,
        Exit::Hypercall(Hypercall::InvalidMapGpaRange { .. })
    ));
    vcpu.complete_hypercall(-22).unwrap();
    assert_eq!(run_to_hlt(&mut vcpu), vec![]);
}

#[test]
fn complete_hypercall_without_pending_exit_is_invalid() {
    let Some(hv) = kvm_or_skip("complete_hypercall_without_pending_exit_is_invalid") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mut vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Halt]);

    assert!(vcpu.complete_hypercall(0).is_err());
}
