//! The fault path (docs/semantics/fault-path.md, selftests D1/D2, docs/selftests.md F26–F31).

use privmem_core::backend::{
    Access, GmemRef, GuestOp, HostMemory, Hypervisor, Region, RegionApi, UserAddr, Vcpu, Vm,
    MEM_READONLY,
};
use privmem_core::{Exit, FaultErrno, GmemFlags, Gpa, GuestReport, MemoryFault, MmioExit, VmType};

use super::*;

const PRIV: u64 = 8;
const S: Access = Access::Shared;
const P: Access = Access::Private;

#[test]
fn d1_private_access_after_slot_deleted_is_private_efault() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, GPA_C0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(GPA_C0, 8, 0, S)]);
    delete_slot(&vm, 10).unwrap();
    assert_eq!(v.run().unwrap(), efault(GPA_C0, true));
}

#[test]
fn d2_private_access_on_slot_without_gmem_is_private_efault() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    add_shared_slot(&vm, 10, GPA_C0, PG);
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(GPA_C0, 8, 0, S)]);
    assert_eq!(v.run().unwrap(), efault(GPA_C0, true));
}

#[test]
fn fault_gpa_is_page_aligned_for_unaligned_access() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    add_shared_slot(&vm, 10, GPA_C0, PG);
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(GPA_C0 + 123, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), efault(GPA_C0, true));
}

#[test]
fn fault_reports_the_first_faulting_page_of_a_multipage_access() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    add_shared_slot(&vm, 10, 0, 4 * PG);
    vm.set_memory_attributes(2 * PG, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 4 * PG, 1, S)]);
    assert_eq!(v.run().unwrap(), efault(2 * PG, true));
}

#[test]
fn shared_access_without_slot_is_mmio() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[w(0x1234, 2, 1, S)]);
    let want = |gpa| {
        Exit::Mmio(MmioExit {
            gpa: Gpa(gpa),
            len: 1,
            write: true,
        })
    };
    assert_eq!(v.run().unwrap(), want(0x1234));
    assert_eq!(v.run().unwrap(), want(0x1235));
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn mmio_read_exits_per_qword_then_per_tail_byte() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[r(0x1003, 10, 0, S)]);
    let want = |gpa, len| {
        Exit::Mmio(MmioExit {
            gpa: Gpa(gpa),
            len,
            write: false,
        })
    };
    assert_eq!(v.run().unwrap(), want(0x1003, 8));
    assert_eq!(v.run().unwrap(), want(0x100b, 1));
    assert_eq!(v.run().unwrap(), want(0x100c, 1));
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}

#[test]
fn mmio_read_completes_with_mmio_data_on_reentry() {
    let (_hv, vm) = setup_vm(VmType::Default);
    // run->mmio.data is all zeros on a fresh vCPU.
    let mut v = vcpu(&vm, 0, &[r(0x1000, PG, 0, S), GuestOp::Halt]);
    for _ in 0..PG / 8 {
        let e = v.run().unwrap();
        assert!(matches!(
            e,
            Exit::Mmio(MmioExit {
                write: false,
                len: 8,
                ..
            })
        ));
    }
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}

#[test]
fn mmio_read_with_other_expect_fails_check() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[r(0x1000, PG, 0x33, S)]);
    let qword = Exit::Mmio(MmioExit {
        gpa: Gpa(0x1000),
        len: 8,
        write: false,
    });
    let byte = Exit::Mmio(MmioExit {
        gpa: Gpa(0x1000),
        len: 1,
        write: false,
    });
    assert_eq!(v.run().unwrap(), qword);
    assert_eq!(v.run().unwrap(), byte);
    let want = Exit::Report(GuestReport::CheckFailed {
        gpa: Gpa(0x1000),
        seen: 0,
        expected: 0x33,
    });
    assert_eq!(v.run().unwrap(), want);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

/// A shared access through a NULL `userspace_addr`: upstream `KVM_RUN`
/// fails with EFAULT and no exit (`hva_to_pfn` → `kvm_handle_error_pfn`;
/// measured in the 6.12.118 and 7.3.4 rigs); PVM emulates it as MMIO.
#[test]
fn null_hva_slot_shared_access_is_efault_upstream_and_mmio_on_pvm() {
    let run_on = |hv: ModelHypervisor| {
        let vm = hv.create_vm(VmType::Default).unwrap();
        let reg = region_raw(0, 0, 0, PG, GmemRef::Raw(-1), 0);
        vm.set_user_memory_region(&reg).unwrap();
        let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
        v.run()
    };
    let upstream = run_on(setup_hv());
    assert!(
        matches!(&upstream, Err(privmem_core::RunError::Decode(privmem_core::exit::DecodeError::RunFailed { errno })) if *errno == privmem_core::Errno::EFAULT.0),
        "{upstream:?}"
    );
    let pvm = setup_hv().with_quirks(privmem_core::Quirks {
        pvm: true,
        ..Default::default()
    });
    assert!(matches!(run_on(pvm), Ok(Exit::Mmio(_))));
}

#[test]
fn readonly_slot_write_is_mmio_and_read_works() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mem = vm
        .create_shared(PG, privmem_core::backend::SharedKind::Memfd)
        .unwrap();
    mem.fill(0, PG, 0x42).unwrap();
    let reg = Region {
        api: RegionApi::V1,
        slot: 0,
        flags: MEM_READONLY,
        gpa: 0,
        size: PG,
        userspace: UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    };
    vm.set_user_memory_region(&reg).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 2, 1, S), r(0, PG, 0x42, S)]);
    for _ in 0..2 {
        let e = v.run().unwrap();
        assert!(matches!(
            e,
            Exit::Mmio(MmioExit {
                write: true,
                len: 1,
                ..
            })
        ));
    }
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}

#[test]
fn poisoned_gmem_page_is_ehwpoison_with_privateness() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, 2 * PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, 2 * PG, &g, 0).unwrap();
    vm.set_memory_attributes(0, 2 * PG, PRIV, 0).unwrap();
    vm.poison_gpa(Gpa(PG)).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 2 * PG, 1, S)]);
    let want = Exit::MemoryFault(MemoryFault {
        gpa: Gpa(PG),
        size: PG,
        private: true,
        errno: FaultErrno::Ehwpoison,
    });
    assert_eq!(v.run().unwrap(), want);
}

#[test]
fn poisoned_page_on_gmem_only_slot_is_shared_ehwpoison() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags::MMAP.union(GmemFlags::INIT_SHARED));
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    hv.poison_gmem(&g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    let e = v.run().unwrap();
    assert!(matches!(
        e,
        Exit::MemoryFault(MemoryFault {
            private: false,
            errno: FaultErrno::Ehwpoison,
            ..
        })
    ));
}

#[test]
fn coco_private_intent_on_shared_page_is_private_efault() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let g = gmem(&vm, PG, GmemFlags(0));
    let mem = add_shared_slot_for_coco(&vm, &g);
    let _ = mem;
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, P)]);
    assert_eq!(v.run().unwrap(), efault(0, true));
}

#[test]
fn coco_shared_intent_on_private_page_is_shared_efault() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let g = gmem(&vm, PG, GmemFlags(0));
    let _mem = add_shared_slot_for_coco(&vm, &g);
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), efault(0, false));
}

#[test]
fn coco_mismatch_is_checked_before_noslot() {
    // kvm_mmu_faultin_pfn checks the mismatch before kvm_handle_noslot_fault:
    // a shared access to a private page with no slot is an EFAULT, not MMIO.
    let (_hv, vm) = setup_vm(VmType::Coco);
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(GPA_C0, 8, 0, S)]);
    assert_eq!(v.run().unwrap(), efault(GPA_C0, false));
}

#[test]
fn coco_matching_private_access_uses_gmem() {
    let (hv, vm) = setup_vm(VmType::Coco);
    let g = gmem(&vm, PG, GmemFlags(0));
    let _mem = add_shared_slot_for_coco(&vm, &g);
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x77, P), r(0, PG, 0x77, P)]);
    assert!(all_passed(&run_all(&mut v)));
    let mut b = [0u8; 4];
    hv.gmem_read(&g, 0, &mut b).unwrap();
    assert_eq!(b, [0x77; 4]);
}

fn add_shared_slot_for_coco(vm: &ModelVm, g: &GuestMemfd) -> ModelShared {
    let mem = vm
        .create_shared(PG, privmem_core::backend::SharedKind::Memfd)
        .unwrap();
    add_gmem_slot_with_shared(vm, 0, 0, &mem, g, 0).unwrap();
    mem
}

#[test]
fn private_and_shared_are_separate_stores() {
    // C1 step 4: private writes are invisible to the shared backing.
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    let mem = vm
        .create_shared(PG, privmem_core::backend::SharedKind::Memfd)
        .unwrap();
    add_gmem_slot_with_shared(&vm, 10, 0, &mem, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x11, S)]);
    run_all(&mut v);
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 1, &[w(0, PG, 0x22, S), r(0, PG, 0x22, S)]);
    assert!(all_passed(&run_all(&mut v)));
    let mut b = [0u8; 4];
    mem.read(0, &mut b).unwrap();
    assert_eq!(b, [0x11; 4]);
    vm.set_memory_attributes(0, PG, 0, 0).unwrap();
    let mut v = vcpu(&vm, 2, &[r(0, PG, 0x11, S)]);
    assert!(all_passed(&run_all(&mut v)));
    let _ = hv;
}

#[test]
fn gmem_only_slot_on_default_vm_serves_guest_and_host_same_bytes() {
    // A13 / docs/selftests.md F27: gmem as the only backing of a default VM.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags::MMAP.union(GmemFlags::INIT_SHARED));
    add_gmem_slot(&vm, 1, 1 << 32, PG, &g, 0).unwrap();
    let m = hv.gmem_mmap(&g, PG, true).unwrap();
    m.fill(0, PG, 0xaa).unwrap();
    let mut v = vcpu(&vm, 0, &[r(1 << 32, PG, 0xaa, S), w(1 << 32, PG, 0xff, S)]);
    assert!(all_passed(&run_all(&mut v)));
    let mut b = vec![0u8; PG as usize];
    m.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xff));
}

#[test]
fn gmem_only_slot_without_init_shared_guest_still_maps() {
    // docs/selftests.md F27: without INIT_SHARED the host faults, the guest maps.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags::MMAP);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x3c, S), r(0, PG, 0x3c, S)]);
    assert!(all_passed(&run_all(&mut v)));
    let m = hv.gmem_mmap(&g, PG, true).unwrap();
    assert!(m.read(0, &mut [0u8; 1]).is_err());
}

#[test]
fn gmem_slot_without_mmap_on_default_vm_uses_shared_backing() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags(0));
    let mem = vm
        .create_shared(PG, privmem_core::backend::SharedKind::Memfd)
        .unwrap();
    mem.fill(0, PG, 0x99).unwrap();
    add_gmem_slot_with_shared(&vm, 1, 0, &mem, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(0, PG, 0x99, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
}

#[test]
fn punch_hole_on_bound_private_range_reads_zero() {
    // docs/selftests.md F28 / C3.
    use privmem_core::backend::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, 2 * PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, 2 * PG, &g, 0).unwrap();
    vm.set_memory_attributes(0, 2 * PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 2 * PG, 0xcc, S)]);
    run_all(&mut v);
    let mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE;
    hv.gmem_fallocate(&g, mode, PG as i64, PG as i64).unwrap();
    let mut v = vcpu(&vm, 1, &[r(0, PG, 0xcc, S), r(PG, PG, 0, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 1);
}

#[test]
fn released_gmem_file_faults_efault_and_slot_deletes() {
    // docs/selftests.md F26.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    drop(g);
    let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert_eq!(v.run().unwrap(), efault(0, true));
    assert!(delete_slot(&vm, 10).is_ok());
}

#[test]
fn released_gmem_only_slot_faults_shared_efault() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags::MMAP);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    drop(g);
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), efault(0, false));
}

#[test]
fn gmem_release_waits_for_last_mapping() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags::MMAP.union(GmemFlags::INIT_SHARED));
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let m = hv.gmem_mmap(&g, PG, true).unwrap();
    drop(g);
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S), r(0, 8, 1, S)]);
    assert!(all_passed(&run_all(&mut v)));
    drop(m);
    let mut v = vcpu(&vm, 1, &[r(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), efault(0, false));
}

#[test]
fn fault_then_conversion_retries_same_access() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let g = gmem(&vm, 4 * PG, GmemFlags(0));
    let mem = vm
        .create_shared(4 * PG, privmem_core::backend::SharedKind::Memfd)
        .unwrap();
    add_gmem_slot_with_shared(&vm, 0, 0, &mem, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 4 * PG, 5, P), r(0, 4 * PG, 5, P)]);
    for page in 0..4 {
        assert_eq!(v.run().unwrap(), efault(page * PG, true));
        vm.set_memory_attributes(page * PG, PG, PRIV, 0).unwrap();
    }
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}

#[test]
fn access_spanning_two_slots_works() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, PG);
    add_shared_slot(&vm, 1, PG, PG);
    let mut v = vcpu(&vm, 0, &[w(100, PG, 3, S), r(100, PG, 3, S)]);
    assert!(all_passed(&run_all(&mut v)));
}

#[test]
fn check_failed_names_first_bad_byte() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mem = add_shared_slot(&vm, 0, 0, 2 * PG);
    mem.fill(0, 2 * PG, 7).unwrap();
    mem.write(5000, &[8]).unwrap();
    let mut v = vcpu(&vm, 0, &[r(0, 2 * PG, 7, S), GuestOp::Halt]);
    let want = Exit::Report(GuestReport::CheckFailed {
        gpa: Gpa(5000),
        seen: 8,
        expected: 7,
    });
    assert_eq!(v.run().unwrap(), want);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn sw_protected_private_access_needs_no_intent() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 9, S), r(0, PG, 9, P)]);
    assert!(all_passed(&run_all(&mut v)));
}

#[test]
fn default_vm_private_intent_is_ignored() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, PG);
    let mut v = vcpu(&vm, 0, &[w(0, PG, 9, P), r(0, PG, 9, P)]);
    assert!(all_passed(&run_all(&mut v)));
}

#[test]
fn wrapping_access_is_shutdown() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[w(u64::MAX - 10, 100, 1, S)]);
    assert_eq!(v.run().unwrap(), Exit::Shutdown);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn vm_trait_poison_page_poisons_the_gmem_page() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, 0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    Vm::poison_page(&vm, Gpa(0)).unwrap();
    let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert!(matches!(
        v.run().unwrap(),
        Exit::MemoryFault(MemoryFault {
            errno: FaultErrno::Ehwpoison,
            private: true,
            ..
        })
    ));
}

#[test]
fn poison_page_without_gmem_is_invalid() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, PG);
    assert!(Vm::poison_page(&vm, Gpa(0)).is_err());
}

#[test]
fn mmio_read_returns_last_mmio_write_byte() {
    // As on KVM: run->mmio.data keeps the last MMIO store's byte.
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[w(0x2000, 1, 0x5a, S), r(0x2000, 1, 0x5a, S)]);
    assert!(matches!(
        v.run().unwrap(),
        Exit::Mmio(MmioExit { write: true, .. })
    ));
    assert!(matches!(
        v.run().unwrap(),
        Exit::Mmio(MmioExit {
            write: false,
            len: 1,
            ..
        })
    ));
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}
