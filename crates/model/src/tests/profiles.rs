//! The userspace-visible differences between the 6.12 and 7.3 profiles
//! (and what stays the same), one behaviour per test, each checked on both
//! profiles.

use privmem_core::backend::{Cap, HostMemory, Hypervisor, Vm, FALLOC_FL_KEEP_SIZE};
use privmem_core::backend::{FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD};
use privmem_core::memops::{MPOL_BIND, MPOL_DEFAULT, MPOL_INTERLEAVE};
use privmem_core::{
    Advice, Errno, FaultErrno, GmemFlags, MemPolicy, MmapOptions, MmapProt, MmapSharing, VmType,
};

use super::*;
use crate::{InjectOp, ModelGmemMapping};

const MMAP: GmemFlags = GmemFlags::MMAP;
const SHARED: GmemFlags = GmemFlags(GmemFlags::MMAP.0 | GmemFlags::INIT_SHARED.0);
const PUNCH: i32 = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const GPA_4G: u64 = 1 << 32;

fn hv(profile: KernelProfile) -> ModelHypervisor {
    ModelHypervisor::new(profile)
}

fn vm_of(profile: KernelProfile, ty: VmType) -> ModelVm {
    hv(profile).create_vm(ty).expect("create_vm")
}

fn opts(prot: MmapProt, sharing: MmapSharing) -> MmapOptions {
    MmapOptions { prot, sharing }
}

#[test]
fn guest_memfd_cap_is_per_vm_on_6_12_and_everywhere_on_7_3() {
    let cap = |p, ty| vm_of(p, ty).check_extension(Cap::GuestMemfd).unwrap();
    assert_eq!(cap(KernelProfile::V6_12, VmType::Default), 0);
    assert_eq!(cap(KernelProfile::V6_12, VmType::SwProtected), 1);
    assert_eq!(cap(KernelProfile::V7_3, VmType::Default), 1);
    assert_eq!(cap(KernelProfile::V7_3, VmType::SwProtected), 1);
    for p in KernelProfile::ALL {
        assert_eq!(hv(p).check_extension(Cap::GuestMemfd).unwrap(), 1, "{p:?}");
    }
}

#[test]
fn guest_memfd_flags_cap_is_0_on_6_12_and_per_vm_type_on_7_3() {
    let cap = |p, ty| vm_of(p, ty).check_extension(Cap::GuestMemfdFlags).unwrap();
    for ty in [VmType::Default, VmType::SwProtected, VmType::Coco] {
        assert_eq!(cap(KernelProfile::V6_12, ty), 0, "{ty:?}");
    }
    assert_eq!(
        hv(KernelProfile::V6_12)
            .check_extension(Cap::GuestMemfdFlags)
            .unwrap(),
        0
    );
    assert_eq!(
        hv(KernelProfile::V7_3)
            .check_extension(Cap::GuestMemfdFlags)
            .unwrap(),
        3
    );
    assert_eq!(cap(KernelProfile::V7_3, VmType::Default), 3);
    assert_eq!(cap(KernelProfile::V7_3, VmType::SwProtected), 1);
    assert_eq!(cap(KernelProfile::V7_3, VmType::Coco), 1);
}

#[test]
fn create_flags_are_checked_against_the_vm_cap() {
    let bad = |p, ty, flags| errno(vm_of(p, ty).create_guest_memfd(PG, flags));
    assert_eq!(
        bad(KernelProfile::V6_12, VmType::SwProtected, MMAP),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        bad(KernelProfile::V6_12, VmType::Default, MMAP),
        Some(Errno::EINVAL)
    );
    assert_eq!(bad(KernelProfile::V7_3, VmType::SwProtected, MMAP), None);
    assert_eq!(
        bad(KernelProfile::V7_3, VmType::SwProtected, SHARED),
        Some(Errno::EINVAL)
    );
    assert_eq!(bad(KernelProfile::V7_3, VmType::Default, SHARED), None);
    // reserved[] is never checked, and the size is checked after the flags.
    assert_eq!(
        errno(vm_of(KernelProfile::V7_3, VmType::Default).create_guest_memfd(1, SHARED)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn guest_memfd_memslot_flag_needs_private_memory_only_on_6_12() {
    for p in KernelProfile::ALL {
        let vm = vm_of(p, VmType::Default);
        let r =
            vm.set_user_memory_region(&region_raw(1, MEM_GUEST_MEMFD, 0, PG, GmemRef::Raw(-1), 0));
        // 7.3 gets past the flag check to the binding: fd -1 is EBADF.
        let want = match p {
            KernelProfile::V6_12 => Errno::EINVAL,
            KernelProfile::V7_3 => Errno::EBADF,
        };
        assert_eq!(errno(r), Some(want), "{p:?}");
    }
}

#[test]
fn mmap_checks_exec_then_mmap_flag_then_sharing_on_7_3() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let plain = gmem(&vm, 4 * PG, GmemFlags(0));
    let mapped = gmem(&vm, 4 * PG, SHARED);
    let m = |g, o| errno(h.gmem_mmap_with(g, 4 * PG, o));
    let exec = opts(MmapProt::ReadWriteExec, MmapSharing::Shared);
    let cow = opts(MmapProt::ReadWrite, MmapSharing::Private);
    assert_eq!(m(&plain, exec), Some(Errno::EPERM));
    assert_eq!(m(&mapped, exec), Some(Errno::EPERM));
    assert_eq!(m(&plain, cow), Some(Errno::ENODEV));
    assert_eq!(m(&mapped, cow), Some(Errno::EINVAL));
    assert_eq!(m(&mapped, MmapOptions::SHARED_RW), None);
    // Longer than i_size is allowed.
    assert!(h
        .gmem_mmap_with(&mapped, 16 * PG, MmapOptions::SHARED_RW)
        .is_ok());
}

#[test]
fn mmap_is_enodev_for_every_prot_on_6_12() {
    let vm = vm_of(KernelProfile::V6_12, VmType::SwProtected);
    let h = hv(KernelProfile::V6_12);
    let g = gmem(&vm, 4 * PG, GmemFlags(0));
    for prot in [MmapProt::ReadWrite, MmapProt::ReadWriteExec] {
        for sharing in [MmapSharing::Shared, MmapSharing::Private] {
            let r = h.gmem_mmap_with(&g, PG, opts(prot, sharing));
            assert_eq!(errno(r), Some(Errno::ENODEV), "{prot:?} {sharing:?}");
        }
    }
}

#[test]
fn host_faults_past_i_size_and_without_init_shared() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let shared = gmem(&vm, 4 * PG, SHARED);
    let map = h.gmem_mmap(&shared, 8 * PG, true).unwrap();
    let mut b = [0u8; 1];
    assert!(map.read(3 * PG, &mut b).is_ok());
    assert_eq!(map.read(4 * PG, &mut b).unwrap_err().offset, 4 * PG);
    let private = gmem(&vm, 4 * PG, MMAP);
    let map = h.gmem_mmap(&private, 4 * PG, true).unwrap();
    assert_eq!(map.read(0, &mut b).unwrap_err().offset, 0);
}

#[test]
fn mbind_round_trips_and_policy_999_is_einval() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let g = gmem(&vm, 4 * PG, SHARED);
    let map = h.gmem_mmap(&g, 4 * PG, true).unwrap();
    let interleave = MemPolicy::new(MPOL_INTERLEAVE, 1);
    let bind = MemPolicy::new(MPOL_BIND, 1);
    h.gmem_mbind(&map, 0, 2 * PG, interleave, 0).unwrap();
    h.gmem_mbind(&map, 2 * PG, 2 * PG, bind, 0).unwrap();
    assert_eq!(h.gmem_get_mempolicy(&map, 0).unwrap(), interleave);
    assert_eq!(h.gmem_get_mempolicy(&map, 3 * PG).unwrap(), bind);
    h.gmem_mbind(&map, 0, 4 * PG, MemPolicy::DEFAULT, 0)
        .unwrap();
    assert_eq!(
        h.gmem_get_mempolicy(&map, 3 * PG).unwrap().mode,
        MPOL_DEFAULT
    );
    let r = h.gmem_mbind(&map, 0, PG, MemPolicy::new(999, 1), 0);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn mbind_policy_is_per_file_offset_and_survives_munmap_and_punch() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let g = gmem(&vm, 4 * PG, SHARED);
    let bind = MemPolicy::new(MPOL_BIND, 1);
    {
        let map = h.gmem_mmap(&g, 4 * PG, true).unwrap();
        h.gmem_mbind(&map, PG, PG, bind, 0).unwrap();
    }
    h.gmem_fallocate(&g, PUNCH, 0, 4 * PG as i64).unwrap();
    let again = h.gmem_mmap(&g, 4 * PG, true).unwrap();
    assert_eq!(h.gmem_get_mempolicy(&again, PG).unwrap(), bind);
    assert_eq!(h.gmem_get_mempolicy(&again, 0).unwrap(), MemPolicy::DEFAULT);
    // Another file has its own policy.
    let other = gmem(&vm, 4 * PG, SHARED);
    let map = h.gmem_mmap(&other, 4 * PG, true).unwrap();
    assert_eq!(h.gmem_get_mempolicy(&map, PG).unwrap(), MemPolicy::DEFAULT);
}

#[test]
fn mbind_to_a_node_the_model_lacks_is_einval() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let g = gmem(&vm, PG, SHARED);
    let map = h.gmem_mmap(&g, PG, true).unwrap();
    let r = h.gmem_mbind(&map, 0, PG, MemPolicy::new(MPOL_BIND, 0b10), 0);
    assert_eq!(errno(r), Some(Errno::EINVAL));
}

#[test]
fn mapping_calls_past_the_mapping_are_refused_as_invalid() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let g = gmem(&vm, 4 * PG, SHARED);
    let map = h.gmem_mmap(&g, 2 * PG, true).unwrap();
    let invalid = |r: privmem_core::error::Result<()>| {
        matches!(r, Err(privmem_core::BackendError::Invalid { .. }))
    };
    assert!(invalid(h.gmem_madvise(&map, PG, 2 * PG, Advice::HugePage)));
    assert!(invalid(h.gmem_mbind(
        &map,
        0,
        3 * PG,
        MemPolicy::new(MPOL_BIND, 1),
        0
    )));
    assert!(invalid(h.gmem_get_mempolicy(&map, 2 * PG).map(|_| ())));
    assert!(invalid(h.gmem_poison(&map, 2 * PG)));
}

#[test]
fn madvise_hugepage_succeeds_collapse_is_einval_dontneed_keeps_data() {
    let vm = vm_of(KernelProfile::V7_3, VmType::Default);
    let h = hv(KernelProfile::V7_3);
    let g = gmem(&vm, M2, SHARED);
    let map = h.gmem_mmap(&g, M2, true).unwrap();
    map.fill(0, M2, 0x5a).unwrap();
    h.gmem_madvise(&map, 0, M2, Advice::HugePage).unwrap();
    let r = h.gmem_madvise(&map, 0, M2, Advice::Collapse);
    assert_eq!(errno(r), Some(Errno::EINVAL));
    h.gmem_madvise(&map, 0, M2, Advice::DontNeed).unwrap();
    let mut buf = vec![0u8; M2 as usize];
    map.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
    assert_eq!(
        errno(h.gmem_madvise(&map, 1, PG, Advice::HugePage)),
        Some(Errno::EINVAL)
    );
}

/// A 7.3 default VM with a gmem-only slot (MMAP|INIT_SHARED, NULL
/// `userspace_addr`) of `pages` pages at 4 GiB, and a mapping of the file.
fn gmem_only_vm(pages: u64) -> (ModelHypervisor, ModelVm, GuestMemfd, ModelGmemMapping) {
    let h = hv(KernelProfile::V7_3);
    let vm = h.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, pages * PG, SHARED);
    add_gmem_slot(&vm, 1, GPA_4G, pages * PG, &g, 0).unwrap();
    let map = h.gmem_mmap(&g, pages * PG, true).unwrap();
    (h, vm, g, map)
}

#[test]
fn gmem_only_slot_shares_bytes_between_host_mapping_and_guest() {
    let (_h, vm, _g, map) = gmem_only_vm(1);
    map.fill(0, PG, 0xaa).unwrap();
    let mut v = vcpu(
        &vm,
        0,
        &[
            r(GPA_4G, PG, 0xaa, Access::Shared),
            w(GPA_4G, PG, 0xff, Access::Shared),
        ],
    );
    assert!(all_passed(&run_all(&mut v)));
    let mut b = vec![0u8; PG as usize];
    map.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xff));
}

#[test]
fn poison_through_the_mapping_gives_a_shared_ehwpoison_exit_and_host_sigbus() {
    let (h, vm, g, map) = gmem_only_vm(2);
    h.gmem_poison(&map, PG).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(map.read(PG, &mut b).unwrap_err().offset, PG);
    assert!(map.read(0, &mut b).is_ok());
    let mut v = vcpu(&vm, 0, &[r(GPA_4G, 2 * PG, 0, Access::Shared)]);
    let exit = v.run().unwrap();
    let Exit::MemoryFault(f) = exit else {
        panic!("expected a memory fault, got {exit:?}");
    };
    assert_eq!((f.gpa.raw(), f.size, f.private), (GPA_4G + PG, PG, false));
    assert_eq!(f.errno, FaultErrno::Ehwpoison);
    // PUNCH_HOLE drops the poisoned folio: the guest gets a fresh zero
    // page, but this mapping keeps its hwpoison entry (7.3 rig) until
    // MADV_DONTNEED clears it.
    h.gmem_fallocate(&g, PUNCH, PG as i64, PG as i64).unwrap();
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
    assert_eq!(map.read(PG, &mut b).unwrap_err().offset, PG);
    h.gmem_madvise(&map, PG, PG, Advice::DontNeed).unwrap();
    assert!(map.read(PG, &mut b).is_ok());
    assert_eq!(b, [0]);
}

#[test]
fn poison_needs_a_host_faultable_page() {
    let h = hv(KernelProfile::V7_3);
    let vm = h.create_vm(VmType::Default).unwrap();
    let private = gmem(&vm, PG, MMAP);
    let map = h.gmem_mmap(&private, PG, true).unwrap();
    assert_eq!(errno(h.gmem_poison(&map, 0)), Some(Errno::EFAULT));
    let shared = gmem(&vm, PG, SHARED);
    let long = h.gmem_mmap(&shared, 2 * PG, true).unwrap();
    assert_eq!(errno(h.gmem_poison(&long, PG)), Some(Errno::EFAULT));
}

#[test]
fn closed_gmem_only_file_faults_efault_with_flags_0() {
    let (_h, vm, g, map) = gmem_only_vm(1);
    drop(map);
    drop(g);
    let mut v = vcpu(&vm, 0, &[r(GPA_4G, 8, 0, Access::Shared)]);
    assert_eq!(v.run().unwrap(), efault(GPA_4G, false));
}

#[test]
fn punch_hole_removes_what_host_mappings_see() {
    let (h, _vm, g, map) = gmem_only_vm(2);
    map.fill(0, 2 * PG, 0x11).unwrap();
    h.gmem_fallocate(&g, PUNCH, 0, PG as i64).unwrap();
    let mut b = vec![0u8; 2 * PG as usize];
    map.read(0, &mut b).unwrap();
    assert!(b[..PG as usize].iter().all(|&x| x == 0));
    assert!(b[PG as usize..].iter().all(|&x| x == 0x11));
}

#[test]
fn clearing_attributes_cannot_fail_on_7_3_but_can_on_6_12() {
    for p in KernelProfile::ALL {
        let h = hv(p);
        let vm = h.create_vm(VmType::SwProtected).unwrap();
        vm.set_memory_attributes(0, 2 * PG, 8, 0).unwrap();
        h.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
        let r = vm.set_memory_attributes(0, PG, 0, 0);
        match p {
            KernelProfile::V6_12 => assert_eq!(errno(r), Some(Errno::ENOMEM)),
            KernelProfile::V7_3 => {
                assert!(r.is_ok());
                assert!(!vm.is_private(Gpa(0)));
            }
        }
        h.clear_injections();
    }
}

#[test]
fn setting_attributes_can_fail_and_a_no_op_cannot_on_both() {
    for p in KernelProfile::ALL {
        let h = hv(p);
        let vm = h.create_vm(VmType::SwProtected).unwrap();
        h.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
        // Clearing what is already shared is a no-op: 0, nothing reserved.
        vm.set_memory_attributes(0, PG, 0, 0).unwrap();
        let r = vm.set_memory_attributes(0, PG, 8, 0);
        assert_eq!(errno(r), Some(Errno::ENOMEM), "{p:?}");
        assert!(!vm.is_private(Gpa(0)));
    }
}

#[test]
fn tdx_vm_type_5_is_einval_and_not_advertised() {
    for p in KernelProfile::ALL {
        let h = hv(p);
        assert_eq!(h.check_extension(Cap::VmTypes).unwrap() & (1 << 5), 0);
        assert_eq!(errno(h.create_vm_raw(5)), Some(Errno::EINVAL), "{p:?}");
        for ty in 0..64u64 {
            let supported = h.check_extension(Cap::VmTypes).unwrap() & (1 << ty) != 0;
            assert_eq!(h.create_vm_raw(ty).is_ok(), supported, "{p:?} type {ty}");
        }
    }
}

#[test]
fn a_dead_vm_answers_eio_to_vm_and_vcpu_ioctls() {
    for p in KernelProfile::ALL {
        let vm = vm_of(p, VmType::SwProtected);
        let g = gmem(&vm, PG, GmemFlags(0));
        let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
        vm.mark_dead();
        assert_eq!(
            errno(vm.set_memory_attributes(0, PG, 8, 0)),
            Some(Errno::EIO)
        );
        assert_eq!(
            errno(vm.create_guest_memfd(PG, GmemFlags(0))),
            Some(Errno::EIO)
        );
        assert_eq!(errno(add_gmem_slot(&vm, 1, 0, PG, &g, 0)), Some(Errno::EIO));
        assert_eq!(errno(vm.check_extension(Cap::GuestMemfd)), Some(Errno::EIO));
        assert_eq!(errno(vm.create_vcpu(1)), Some(Errno::EIO));
        let run = v.run();
        assert!(
            matches!(&run, Err(privmem_core::RunError::Backend(e)) if e.errno() == Some(Errno::EIO)),
            "{p:?}: {run:?}"
        );
    }
}
