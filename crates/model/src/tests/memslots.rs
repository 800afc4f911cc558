//! `KVM_SET_USER_MEMORY_REGION{,2}` (docs/semantics/memslots.md, selftests B1–B4).

use std::os::fd::AsFd;

use privmem_core::backend::{
    GmemRef, Hypervisor, Region, RegionApi, SharedKind, UserAddr, Vm, MEM_GUEST_MEMFD,
    MEM_LOG_DIRTY_PAGES, MEM_READONLY,
};
use privmem_core::{BackendError, Cap, Errno, GmemFlags, Gpa, VmType};

use super::*;

fn plain(slot: u32, flags: u32, gpa: u64, size: u64) -> Region<'static, ModelShared> {
    region_raw(slot, flags, gpa, size, GmemRef::Raw(-1), 0)
}

fn v1(slot: u32, flags: u32, gpa: u64, size: u64) -> Region<'static, ModelShared> {
    Region {
        api: RegionApi::V1,
        ..plain(slot, flags, gpa, size)
    }
}

#[test]
fn region_v1_with_guest_memfd_flag_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&v1(0, MEM_GUEST_MEMFD, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_v1_unsupported_flag_bits_return_einval() {
    // B1: every bit other than LOG_DIRTY|READONLY.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    for bit in 2..32 {
        let r = vm.set_user_memory_region(&v1(0, 1 << bit, 0, M2));
        assert_eq!(errno(r), Some(Errno::EINVAL), "bit {bit}");
    }
}

#[test]
fn region_v2_unknown_flag_bits_return_einval() {
    // B1: v2 with an unsupported bit and gmem fd 0.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    for bit in 3..32 {
        let r = region_raw(0, 1 << bit, 0, M2, GmemRef::Raw(0), 0);
        assert_eq!(
            errno(vm.set_user_memory_region(&r)),
            Some(Errno::EINVAL),
            "bit {bit}"
        );
    }
}

#[test]
fn region_gmem_with_log_dirty_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = region_raw(
        0,
        MEM_GUEST_MEMFD | MEM_LOG_DIRTY_PAGES,
        0,
        M2,
        GmemRef::File(&g),
        0,
    );
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_with_readonly_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = region_raw(
        0,
        MEM_GUEST_MEMFD | MEM_READONLY,
        0,
        M2,
        GmemRef::File(&g),
        0,
    );
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_readonly_on_coco_vm_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let r = vm.set_user_memory_region(&plain(0, MEM_READONLY, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_readonly_on_default_vm_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert!(vm
        .set_user_memory_region(&plain(0, MEM_READONLY, 0, M2))
        .is_ok());
}

#[test]
fn region_gmem_on_6_12_default_vm_returns_einval() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = region_raw(0, MEM_GUEST_MEMFD, 0, M2, GmemRef::File(&g), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_on_6_18_default_vm_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, M2, GmemFlags(0));
    assert!(add_gmem_slot(&vm, 0, 0, M2, &g, 0).is_ok());
}

#[test]
fn region_slot_id_at_limit_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(32764, 0, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_last_slot_id_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert!(vm.set_user_memory_region(&plain(32763, 0, 0, M2)).is_ok());
}

#[test]
fn region_max_slots_then_one_more_returns_einval() {
    // B2.
    let (_hv, vm) = setup_vm(VmType::Default);
    for i in 0..32764u32 {
        let r = v1(i, 0, u64::from(i) * M2, M2);
        vm.set_user_memory_region(&r).unwrap();
    }
    let r = vm.set_user_memory_region(&v1(32764, 0, 32764 * M2, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
    assert_eq!(vm.slot_count(), 32764);
}

#[test]
fn region_unaligned_size_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(0, 0, 0, PG + 1));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_unaligned_gpa_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(0, 0, 1, PG));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_unaligned_hva_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = Region {
        userspace: UserAddr::Raw(1),
        ..plain(0, 0, 0, PG)
    };
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_unaligned_backing_offset_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mem = vm.create_shared(2 * PG, SharedKind::Memfd).unwrap();
    let r = Region {
        userspace: UserAddr::Backing {
            mem: &mem,
            offset: 1,
        },
        ..plain(0, 0, 0, PG)
    };
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_raw_nonzero_aligned_hva_is_refused_by_backend() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = Region {
        userspace: UserAddr::Raw(0x7000_0000),
        ..plain(0, 0, 0, PG)
    };
    let res = vm.set_user_memory_region(&r);
    assert!(matches!(res, Err(BackendError::Invalid { .. })));
}

#[test]
fn region_backing_too_small_is_refused_by_backend() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    let r = Region {
        userspace: UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
        ..plain(0, 0, 0, 2 * PG)
    };
    let res = vm.set_user_memory_region(&r);
    assert!(matches!(res, Err(BackendError::Invalid { .. })));
}

#[test]
fn region_null_hva_beyond_user_space_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(0, 0, 0, 1 << 47));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_offset_unaligned_returns_einval() {
    // B3: offsets 1..4095.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, 2 * M2, GmemFlags(0));
    for off in 1..PG {
        let r = add_gmem_slot(&vm, 10, 0xc000_0000, M2, &g, off);
        assert_eq!(errno(r), Some(Errno::EINVAL), "offset {off}");
    }
}

#[test]
fn region_gmem_offset_wrapping_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = add_gmem_slot(&vm, 10, 0, M2, &g, u64::MAX - PG + 1);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_offset_negative_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = add_gmem_slot(&vm, 10, 0, PG, &g, 1 << 63);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_range_beyond_file_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let r = add_gmem_slot(&vm, 10, 0, M2, &g, PG);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_without_gmem_flag_ignores_gmem_offset() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = region_raw(0, 0, 0, PG, GmemRef::Raw(-1), 123);
    assert!(vm.set_user_memory_region(&r).is_ok());
}

#[test]
fn region_as_id_1_returns_einval() {
    // Without CONFIG_KVM_SMM (the default, as this host) one address space.
    let (hv, vm) = setup_vm(VmType::Default);
    assert!(!hv.smm());
    let r = vm.set_user_memory_region(&plain(1 << 16, 0, 0, PG));
    assert_eq!(errno(r), Some(Errno::EINVAL));
    assert_eq!(vm.check_extension(Cap::MultiAddressSpace).ok(), Some(0));
}

fn smm_vm(ty: VmType) -> ModelVm {
    let hv = ModelHypervisor::new(KernelProfile::V6_12).with_smm(true);
    assert_eq!(hv.check_extension(Cap::MultiAddressSpace).ok(), Some(2));
    hv.create_vm(ty).expect("create_vm")
}

#[test]
fn smm_default_vm_has_two_address_spaces() {
    let vm = smm_vm(VmType::Default);
    assert_eq!(vm.check_extension(Cap::MultiAddressSpace).ok(), Some(2));
    // The same GPA range in both address spaces is no overlap.
    vm.set_user_memory_region(&plain(3, 0, 0, M2))
        .expect("as 0");
    vm.set_user_memory_region(&plain(1 << 16 | 3, 0, 0, M2))
        .expect("as 1 at the same GPA");
    // Within address space 1 the overlap rule holds.
    let r = vm.set_user_memory_region(&plain(1 << 16 | 4, 0, M2 / 2, M2));
    assert_eq!(errno(r), Some(Errno::EEXIST));
    // as_id 2 is out of range.
    let r = vm.set_user_memory_region(&plain(2 << 16 | 3, 0, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
    assert_eq!(vm.slot_count(), 2);
}

#[test]
fn smm_address_space_1_slots_are_separate_from_address_space_0() {
    let vm = smm_vm(VmType::Default);
    vm.set_user_memory_region(&plain(1 << 16 | 3, 0, 0, M2))
        .expect("as 1");
    // Guests fault in address space 0 only: no slot there yet.
    assert!(vm.slot_of(Gpa(0)).is_none());
    vm.set_user_memory_region(&plain(3, 0, M2, M2))
        .expect("as 0");
    assert_eq!(vm.slot_of(Gpa(M2)), Some(3));
    // Deleting as 1's slot 3 leaves as 0's slot 3; deleting it twice is EINVAL.
    vm.set_user_memory_region(&plain(1 << 16 | 3, 0, 0, 0))
        .expect("delete as 1 slot 3");
    let r = vm.set_user_memory_region(&plain(1 << 16 | 3, 0, 0, 0));
    assert_eq!(errno(r), Some(Errno::EINVAL));
    assert_eq!(vm.slot_of(Gpa(M2)), Some(3));
    assert_eq!(vm.slot_count(), 1);
}

#[test]
fn smm_private_memory_vm_has_one_address_space() {
    let vm = smm_vm(VmType::SwProtected);
    assert_eq!(vm.check_extension(Cap::MultiAddressSpace).ok(), Some(1));
    let r = vm.set_user_memory_region(&plain(1 << 16, 0, 0, PG));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn smm_gmem_range_bound_in_one_address_space_is_eexist_in_the_other() {
    let hv = ModelHypervisor::new(KernelProfile::V7_3).with_smm(true);
    let vm = hv.create_vm(VmType::Default).expect("create_vm");
    let g = gmem(&vm, M2, GmemFlags(0));
    let bind = |slot: u32, gpa: u64| {
        vm.set_user_memory_region(&region_raw(
            slot,
            MEM_GUEST_MEMFD,
            gpa,
            M2,
            GmemRef::File(&g),
            0,
        ))
    };
    bind(1 << 16 | 5, 0).expect("bind in as 1");
    assert_eq!(errno(bind(5, 0)), Some(Errno::EEXIST));
    vm.set_user_memory_region(&plain(1 << 16 | 5, MEM_GUEST_MEMFD, 0, 0))
        .expect("delete as 1 slot 5");
    bind(5, 0).expect("bind in as 0 once as 1 let go");
}

#[test]
fn region_gpa_wrap_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(0, 0, u64::MAX - PG + 1, 2 * PG));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_too_many_pages_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = vm.set_user_memory_region(&plain(0, 0, 0, 1 << 43));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_delete_nonexistent_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    assert_eq!(errno(delete_slot(&vm, 3)), Some(Errno::EINVAL));
}

#[test]
fn region_delete_with_gmem_flag_and_fd_minus_one_succeeds() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, M2, &g, 0).unwrap();
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, 0, GmemRef::Raw(-1), 0);
    assert!(vm.set_user_memory_region(&r).is_ok());
    assert_eq!(vm.slot_count(), 0);
}

#[test]
fn region_overlapping_gpa_returns_eexist() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    let r = vm.set_user_memory_region(&plain(1, 0, M2 - PG, M2));
    assert_eq!(errno(r), Some(Errno::EEXIST));
}

#[test]
fn region_gmem_fd_minus_one_returns_ebadf() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, M2, GmemRef::Raw(-1), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EBADF));
}

#[test]
fn region_gmem_closed_fd_returns_ebadf() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, M2, GmemRef::Raw(999_999), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EBADF));
}

#[test]
fn region_gmem_fd_dev_null_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let f = std::fs::File::open("/dev/null").unwrap();
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, M2, GmemRef::Fd(f.as_fd()), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_fd_memfd_returns_einval() {
    // B3: a memfd_create fd is not a guest_memfd.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let m = crate::backing::Memfd::create("not-gmem", M2).unwrap();
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, M2, GmemRef::Fd(m.as_fd()), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EINVAL));
}

#[test]
fn region_gmem_of_another_vm_returns_einval() {
    // B3: binds fine to its own VM.
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let other = hv.create_vm(VmType::SwProtected).unwrap();
    let g = gmem(&other, M2, GmemFlags(0));
    assert_eq!(
        errno(add_gmem_slot(&vm, 10, 0, M2, &g, 0)),
        Some(Errno::EINVAL)
    );
    assert!(add_gmem_slot(&other, 10, 0, M2, &g, 0).is_ok());
}

#[test]
fn region_gmem_by_raw_fd_number_binds() {
    use std::os::fd::AsRawFd;
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    let fd = g.as_fd().as_raw_fd();
    let r = region_raw(10, MEM_GUEST_MEMFD, 0, M2, GmemRef::Raw(fd), 0);
    assert!(vm.set_user_memory_region(&r).is_ok());
}

#[test]
fn region_gmem_overlapping_file_range_returns_eexist() {
    // 6.12.118 and 7.3 record the binding in the commit phase: EEXIST, and
    // the refused slot does not exist.
    for profile in KernelProfile::ALL {
        let hv = ModelHypervisor::new(profile);
        let vm = hv.create_vm(VmType::SwProtected).unwrap();
        let g = gmem(&vm, 4 * M2, GmemFlags(0));
        add_gmem_slot(&vm, 10, 0, 2 * M2, &g, 0).unwrap();
        let r = add_gmem_slot(&vm, 11, 0x1_0000_0000, 2 * M2, &g, M2);
        assert_eq!(errno(r), Some(Errno::EEXIST), "{profile:?}");
        assert_eq!(vm.slot_count(), 1);
        assert_eq!(hv.gmem_binding_count(&g).unwrap(), 1);
        // The free half of the file still binds.
        add_gmem_slot(&vm, 11, 0x1_0000_0000, 2 * M2, &g, 2 * M2).unwrap();
    }
}

#[test]
fn region_gmem_offset_only_overlap_returns_eexist_front_and_back() {
    // set_memory_region_test (7.3): a 5×2 MiB file, slot 11 holding file
    // [4, 8) MiB; a slot at a free GPA with file offset 2 MiB (the front)
    // or 6 MiB (the back) is EEXIST, and is not created.
    for profile in KernelProfile::ALL {
        let hv = ModelHypervisor::new(profile);
        let vm = hv.create_vm(VmType::SwProtected).unwrap();
        let g = gmem(&vm, 5 * M2, GmemFlags(0));
        add_gmem_slot(&vm, 11, 0x1_8000_0000, 2 * M2, &g, 2 * M2).unwrap();
        for off in [M2, 3 * M2] {
            let r = add_gmem_slot(&vm, 10, 0xc000_0000, 2 * M2, &g, off);
            assert_eq!(errno(r), Some(Errno::EEXIST), "{profile:?} offset {off:#x}");
        }
        assert_eq!(vm.slot_count(), 1);
        assert_eq!(hv.gmem_binding_count(&g).unwrap(), 1);
    }
}

#[test]
fn file_overlap_and_max_gfn_order_follows_the_profile() {
    // A slot past kvm_mmu_max_gfn() over a bound file range: the arch
    // limit comes first (EINVAL, not EEXIST); nothing stays bound and the
    // free range still binds.
    for profile in [KernelProfile::V6_12, KernelProfile::V7_3] {
        let hv = ModelHypervisor::new(profile).with_max_gpa_bits(40);
        let vm = hv.create_vm(VmType::SwProtected).unwrap();
        let g = gmem(&vm, 4 * M2, GmemFlags(0));
        add_gmem_slot(&vm, 10, 0, 2 * M2, &g, 0).unwrap();
        for off in [0, 2 * M2] {
            let r = add_gmem_slot(&vm, 11, 1 << 40, 2 * M2, &g, off);
            assert_eq!(errno(r), Some(Errno::EINVAL), "{profile:?} offset {off:#x}");
        }
        assert_eq!(hv.gmem_binding_count(&g).unwrap(), 1, "{profile:?}");
        add_gmem_slot(&vm, 11, 0x1_0000_0000, 2 * M2, &g, 2 * M2).unwrap();
    }
}

#[test]
fn region_gmem_rebind_after_delete_succeeds() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, M2, &g, 0).unwrap();
    delete_slot(&vm, 10).unwrap();
    assert!(add_gmem_slot(&vm, 11, 0x1_0000_0000, M2, &g, 0).is_ok());
}

#[test]
fn region_b4_overlapping_private_regions_return_eexist() {
    // B4.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, 4 * M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0xc000_0000, 2 * M2, &g, 0).unwrap();
    add_gmem_slot(&vm, 11, 0x1_8000_0000, 2 * M2, &g, 2 * M2).unwrap();
    delete_slot(&vm, 10).unwrap();
    let front = add_gmem_slot(&vm, 10, 0x1_8000_0000 - M2, 2 * M2, &g, 0);
    assert_eq!(errno(front), Some(Errno::EEXIST));
    let back = add_gmem_slot(&vm, 10, 0x1_8000_0000 + M2, 2 * M2, &g, 0);
    assert_eq!(errno(back), Some(Errno::EEXIST));
}

#[test]
fn region_modify_gmem_slot_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, M2, &g, 0).unwrap();
    assert_eq!(
        errno(add_gmem_slot(&vm, 10, M2, M2, &g, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn region_modify_gmem_slot_to_plain_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, M2, &g, 0).unwrap();
    let r = vm.set_user_memory_region(&plain(10, 0, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_add_gmem_flag_to_plain_slot_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    vm.set_user_memory_region(&plain(10, 0, 0, M2)).unwrap();
    assert_eq!(
        errno(add_gmem_slot(&vm, 10, 0, M2, &g, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn region_move_plain_slot_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    assert!(vm.set_user_memory_region(&plain(0, 0, 4 * M2, M2)).is_ok());
    assert!(vm.set_user_memory_region(&plain(1, 0, 0, M2)).is_ok());
}

#[test]
fn region_move_onto_other_slot_returns_eexist() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    vm.set_user_memory_region(&plain(1, 0, M2, M2)).unwrap();
    let r = vm.set_user_memory_region(&plain(0, 0, M2, M2));
    assert_eq!(errno(r), Some(Errno::EEXIST));
}

#[test]
fn region_flags_only_change_succeeds() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    assert!(vm
        .set_user_memory_region(&plain(0, MEM_LOG_DIRTY_PAGES, 0, M2))
        .is_ok());
}

#[test]
fn region_toggle_readonly_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    let r = vm.set_user_memory_region(&plain(0, MEM_READONLY, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_resize_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    let r = vm.set_user_memory_region(&plain(0, 0, 0, 2 * M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_change_hva_returns_einval() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, M2);
    let r = vm.set_user_memory_region(&plain(0, 0, 0, M2));
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn region_identical_resubmit_is_noop_success() {
    let (_hv, vm) = setup_vm(VmType::Default);
    vm.set_user_memory_region(&plain(0, 0, 0, M2)).unwrap();
    assert!(vm.set_user_memory_region(&plain(0, 0, 0, M2)).is_ok());
}

#[test]
fn region_injected_enomem_creates_nothing() {
    let (hv, vm) = setup_vm(VmType::Default);
    hv.inject_failure(crate::InjectOp::SetUserMemoryRegion, 1, Errno::ENOMEM);
    let r = vm.set_user_memory_region(&plain(0, 0, 0, M2));
    assert_eq!(errno(r), Some(Errno::ENOMEM));
    assert_eq!(vm.slot_count(), 0);
}

#[test]
fn region_delete_unbinds_gmem() {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, M2, &g, 0).unwrap();
    assert_eq!(hv.gmem_binding_count(&g).unwrap(), 1);
    delete_slot(&vm, 10).unwrap();
    assert_eq!(hv.gmem_binding_count(&g).unwrap(), 0);
}

#[test]
fn region_ending_above_mmu_max_gfn_returns_einval() {
    // x86 kvm_arch_prepare_memory_region: shadow paging allows 52 bits.
    let (_hv, vm) = setup_vm(VmType::Default);
    let last = (1u64 << 52) - 4096;
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(0, 0, last, 4096))),
        None
    );
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(1, 0, last - 4096, 8192))),
        Some(Errno::EEXIST)
    );
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(2, 0, 1 << 52, 4096))),
        Some(Errno::EINVAL)
    );
}

#[test]
fn region_beyond_narrow_mmu_returns_einval_and_unbinds_gmem() {
    // With TDP the width is the host's physical address bits (here 40).
    let hv = ModelHypervisor::new(KernelProfile::V7_3).with_max_gpa_bits(40);
    let vm = hv.create_vm(VmType::SwProtected).expect("vm");
    let g = vm.create_guest_memfd(M2, GmemFlags(0)).expect("gmem");
    let high = region_raw(0, MEM_GUEST_MEMFD, 1 << 40, M2, GmemRef::File(&g), 0);
    assert_eq!(errno(vm.set_user_memory_region(&high)), Some(Errno::EINVAL));
    // The failed bind was undone: the same file range binds below the limit.
    let low = region_raw(0, MEM_GUEST_MEMFD, (1 << 40) - M2, M2, GmemRef::File(&g), 0);
    assert_eq!(errno(vm.set_user_memory_region(&low)), None);
}
