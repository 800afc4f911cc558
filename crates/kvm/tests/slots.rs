//! Memslots: ownership of backings, refusal of raw host addresses, plain
//! (shared-memory) slots running real guests.

mod common;

use common::*;
use privmem_core::{
    BackendError, Exit, GmemRef, GuestOp, GuestReport, HostMemory, Region, RegionApi, SharedKind,
    UserAddr, Vm, VmType,
};
use privmem_kvm::{KvmShared, KvmVm};

fn plain<'a>(
    slot: u32,
    gpa: u64,
    size: u64,
    userspace: UserAddr<'a, KvmShared>,
) -> Region<'a, KvmShared> {
    Region {
        api: RegionApi::V2,
        slot,
        flags: 0,
        gpa,
        size,
        userspace,
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    }
}

fn vm(hv: &privmem_kvm::KvmHypervisor) -> KvmVm {
    privmem_core::Hypervisor::create_vm(hv, VmType::Default).unwrap()
}

#[test]
fn slots_raw_aligned_nonzero_hva_is_refused() {
    let Some(hv) = kvm_or_skip("slots_raw_aligned_nonzero_hva_is_refused") else {
        return;
    };
    let vm = vm(&hv);

    let err = vm.set_user_memory_region(&plain(0, 0, 2 * MIB, UserAddr::Raw(0x7f00_0000_0000)));

    assert!(matches!(err, Err(BackendError::Invalid { .. })));
}

#[test]
fn slots_raw_unaligned_hva_reaches_kvm_einval() {
    let Some(hv) = kvm_or_skip("slots_raw_unaligned_hva_reaches_kvm_einval") else {
        return;
    };
    let vm = vm(&hv);

    let err = vm
        .set_user_memory_region(&plain(0, 0, 2 * MIB, UserAddr::Raw(0x1001)))
        .unwrap_err();

    assert_eq!(err.errno(), Some(privmem_core::Errno::EINVAL));
}

#[test]
fn slots_backing_too_small_is_refused() {
    let Some(hv) = kvm_or_skip("slots_backing_too_small_is_refused") else {
        return;
    };
    let vm = vm(&hv);
    let mem = vm.create_shared(MIB, SharedKind::Anonymous).unwrap();

    let err = vm.set_user_memory_region(&plain(
        0,
        0,
        2 * MIB,
        UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
    ));

    assert!(matches!(err, Err(BackendError::Invalid { .. })));
}

#[test]
fn slots_runtime_slot_id_is_refused() {
    let Some(hv) = kvm_or_skip("slots_runtime_slot_id_is_refused") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let _vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Halt]);
    let mem = g.vm.create_shared(2 * MIB, SharedKind::Anonymous).unwrap();

    let err = g.vm.set_user_memory_region(&plain(
        privmem_kvm::runtime_area::RUNTIME_SLOT_BASE,
        1 << 30,
        2 * MIB,
        UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
    ));

    assert!(matches!(err, Err(BackendError::Invalid { .. })));
}

#[test]
fn slots_shared_backing_guest_write_visible_to_host_after_caller_drops_it() {
    let Some(hv) =
        kvm_or_skip("slots_shared_backing_guest_write_visible_to_host_after_caller_drops_it")
    else {
        return;
    };
    for kind in [SharedKind::Anonymous, SharedKind::Memfd] {
        let vm = vm(&hv);
        let mem = vm.create_shared(4 * MIB, kind).unwrap();
        let observer = mem.clone();
        vm.set_user_memory_region(&plain(
            0,
            0,
            2 * MIB,
            UserAddr::Backing {
                mem: &mem,
                offset: 2 * MIB,
            },
        ))
        .unwrap();
        drop(mem); // the VM keeps its own clone while the slot exists
        let mut vcpu = vcpu_with(
            &vm,
            0,
            &[
                write(0x1000, 16, 0x66),
                read(0x1000, 16, 0x66),
                GuestOp::Halt,
            ],
        );

        assert_eq!(
            run_to_hlt(&mut vcpu),
            vec![Exit::Report(GuestReport::CheckPassed)]
        );
        let mut b = [0u8; 2];
        observer.read(2 * MIB + 0x1000 + 15, &mut b).unwrap();
        assert_eq!(b, [0x66, 0x00], "{kind:?}");
    }
}

#[test]
fn slots_guest_op_spanning_two_slots_works() {
    let Some(hv) = kvm_or_skip("slots_guest_op_spanning_two_slots_works") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mem = g.vm.create_shared(2 * MIB, SharedKind::Memfd).unwrap();
    g.vm.set_user_memory_region(&plain(
        1,
        2 * MIB,
        2 * MIB,
        UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
    ))
    .unwrap();
    let ops = [
        write(2 * MIB - 8, 16, 0x21),
        read(2 * MIB - 8, 16, 0x21),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::CheckPassed)]
    );
    let mut b = [0u8; 9];
    mem.read(0, &mut b).unwrap();
    assert_eq!(b, [0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0]);
}

#[test]
fn slots_reloading_program_replaces_runtime_area() {
    let Some(hv) = kvm_or_skip("slots_reloading_program_replaces_runtime_area") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mut vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Sync { tag: 1 }, GuestOp::Halt]);
    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag: 1 })]
    );

    privmem_core::Vcpu::load_program(&mut vcpu, &[GuestOp::Sync { tag: 2 }, GuestOp::Halt])
        .unwrap();

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag: 2 })]
    );
}

#[test]
fn slots_workload_slot_on_runtime_id_makes_load_program_invalid() {
    let Some(hv) = kvm_or_skip("slots_workload_slot_on_runtime_id_makes_load_program_invalid")
    else {
        return;
    };
    let vm = vm(&hv);
    let mem = vm.create_shared(2 * MIB, SharedKind::Anonymous).unwrap();
    vm.set_user_memory_region(&plain(
        privmem_kvm::runtime_area::RUNTIME_SLOT_BASE,
        0,
        2 * MIB,
        UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
    ))
    .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();

    let err = privmem_core::Vcpu::load_program(&mut vcpu, &[GuestOp::Halt]);

    assert!(matches!(err, Err(BackendError::Invalid { .. })));
}

/// A gmem-only slot with a NULL `userspace_addr` on a host whose KVM needs
/// the backend's guest_memfd mapping counts as privmem's emulation
/// (conformance reports such results as `emulated`); a plain slot does not.
#[test]
fn slots_gmem_hva_stand_in_is_counted_as_emulation() {
    let Some(hv) = shared_gmem_or_skip("slots_gmem_hva_stand_in_is_counted_as_emulation") else {
        return;
    };
    use privmem_core::{Emulation, GmemFlags, Hypervisor};
    let vm = vm(&hv);
    let shared = vm.create_shared(2 * MIB, SharedKind::Anonymous).unwrap();
    let before = hv.emulations();
    vm.set_user_memory_region(&plain(
        1,
        0,
        2 * MIB,
        UserAddr::Backing {
            mem: &shared,
            offset: 0,
        },
    ))
    .unwrap();
    assert!(hv.emulations().since(before).is_empty());
    let g = vm
        .create_guest_memfd(2 * MIB, GmemFlags::MMAP.union(GmemFlags::INIT_SHARED))
        .unwrap();
    let mut r = plain(2, 4 * MIB, 2 * MIB, UserAddr::Raw(0));
    r.flags = privmem_core::backend::MEM_GUEST_MEMFD;
    r.gmem = GmemRef::File(&g);
    vm.set_user_memory_region(&r).unwrap();
    let used = hv.emulations().since(before).get(Emulation::GmemHva);
    assert_eq!(used, u64::from(hv.quirks().gmem_hva), "gmem hva uses");
}
