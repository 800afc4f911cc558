//! Host parameters: the MMU's guest-physical width (`kvm_mmu_max_gfn()`)
//! and the host quirks (`Quirks`: PVM, the KVM backend's guest_memfd HVA).

use std::sync::Arc;

use privmem_core::backend::{
    Access, Cap, GmemRef, HostMemory, Hypervisor, Region, RegionApi, SharedKind, UserAddr, Vcpu,
    Vm, MEM_GUEST_MEMFD,
};
use privmem_core::{
    Errno, Exit, FaultErrno, GmemFlags, Gpa, MemoryFault, MmioExit, Quirks, VmType,
};

use super::*;

const S: Access = Access::Shared;
const MMAP_SHARED: GmemFlags = GmemFlags(GmemFlags::MMAP.0 | GmemFlags::INIT_SHARED.0);

fn hv_with(quirks: Quirks) -> ModelHypervisor {
    ModelHypervisor::new(KernelProfile::V7_3).with_quirks(quirks)
}

fn plain<'a>(slot: u32, gpa: u64, size: u64, mem: &'a ModelShared) -> Region<'a, ModelShared> {
    Region {
        api: RegionApi::V2,
        slot,
        flags: 0,
        gpa,
        size,
        userspace: UserAddr::Backing { mem, offset: 0 },
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    }
}

fn efault(gpa: u64) -> Exit {
    Exit::MemoryFault(MemoryFault {
        gpa: Gpa(gpa),
        size: PG,
        private: false,
        errno: FaultErrno::Efault,
    })
}

fn mmio_write(gpa: u64) -> Exit {
    Exit::Mmio(MmioExit {
        gpa: Gpa(gpa),
        len: 1,
        write: true,
    })
}

fn bytes_of(hv: &ModelHypervisor, g: &GuestMemfd, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    hv.gmem_read(g, 0, &mut b).unwrap();
    b
}

// ---- kvm_mmu_max_gfn() (x86 kvm_arch_prepare_memory_region) ----

#[test]
fn default_width_is_52_bits() {
    assert_eq!(setup_hv().max_gpa_bits(), 52);
    assert_eq!(ModelHypervisor::default().max_gpa_bits(), 52);
}

#[test]
fn region_ending_at_the_narrow_limit_is_accepted_past_it_einval() {
    let hv = setup_hv().with_max_gpa_bits(40);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mem = vm.create_shared(2 * PG, SharedKind::Anonymous).unwrap();
    let limit = 1u64 << 40;
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(0, limit - PG, PG, &mem))),
        None
    );
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(1, limit, PG, &mem))),
        Some(Errno::EINVAL)
    );
    assert_eq!(vm.slot_count(), 1);
}

#[test]
fn overlap_eexist_is_checked_before_the_max_gfn() {
    // kvm_set_memory_region: EEXIST before kvm_set_memslot → arch prepare.
    let hv = setup_hv().with_max_gpa_bits(40);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mem = vm.create_shared(2 * PG, SharedKind::Anonymous).unwrap();
    let limit = 1u64 << 40;
    vm.set_user_memory_region(&plain(0, limit - PG, PG, &mem))
        .unwrap();
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(1, limit - PG, 2 * PG, &mem))),
        Some(Errno::EEXIST)
    );
}

#[test]
fn gmem_bind_errors_come_before_the_max_gfn() {
    // kvm_gmem_bind runs before kvm_set_memslot: a bad fd is EBADF, a
    // foreign file EINVAL, even for a slot past the MMU's limit.
    let (_hv, vm) = setup_vm(VmType::Default);
    let r = region_raw(0, MEM_GUEST_MEMFD, 1 << 52, PG, GmemRef::Raw(-1), 0);
    assert_eq!(errno(vm.set_user_memory_region(&r)), Some(Errno::EBADF));
}

#[test]
fn move_past_the_max_gfn_is_einval_and_keeps_the_slot() {
    let hv = setup_hv().with_max_gpa_bits(40);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mem = vm.create_shared(PG, SharedKind::Anonymous).unwrap();
    vm.set_user_memory_region(&plain(3, 0, PG, &mem)).unwrap();
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(3, 1 << 40, PG, &mem))),
        Some(Errno::EINVAL)
    );
    // The slot is still at GPA 0 and serves the guest from its backing.
    let mut v = vcpu(&vm, 0, &[w(0, 8, 0x42, S)]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    let mut b = [0u8; 8];
    mem.read(0, &mut b).unwrap();
    assert_eq!(b, [0x42; 8]);
    // A move below the limit works.
    assert_eq!(
        errno(vm.set_user_memory_region(&plain(3, (1 << 40) - PG, PG, &mem))),
        None
    );
}

#[test]
fn width_is_clamped_to_what_x86_can_have() {
    assert_eq!(setup_hv().with_max_gpa_bits(64).max_gpa_bits(), 52);
    assert_eq!(setup_hv().with_max_gpa_bits(12).max_gpa_bits(), 32);
}

// ---- Quirks: off by default, reported through the trait ----

#[test]
fn quirks_are_off_by_default_and_reported() {
    assert!(setup_hv().quirks().is_upstream());
    assert_eq!(hv_with(Quirks::PVM).quirks(), Quirks::PVM);
}

// ---- Quirks::pvm: default VMs go through userspace_addr only ----

#[test]
fn pvm_gmem_only_slot_with_backing_serves_the_backing() {
    for quirks in [Quirks::default(), Quirks::PVM] {
        let hv = hv_with(quirks);
        let vm = hv.create_vm(VmType::Default).unwrap();
        let g = gmem(&vm, PG, MMAP_SHARED);
        let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
        add_gmem_slot_with_shared(&vm, 1, 0, &mem, &g, 0).unwrap();
        let mut v = vcpu(&vm, 0, &[w(0, PG, 0x5a, S), r(0, PG, 0x5a, S)]);
        assert!(all_passed(&run_all(&mut v)));
        let mut b = vec![0u8; PG as usize];
        mem.read(0, &mut b).unwrap();
        let gm = bytes_of(&hv, &g, PG);
        if quirks.pvm {
            // PVM: the data lands in the backing, the gmem stays untouched.
            assert!(b.iter().all(|&x| x == 0x5a) && gm.iter().all(|&x| x == 0));
        } else {
            // Upstream: a gmem-only slot is served from guest_memfd.
            assert!(b.iter().all(|&x| x == 0) && gm.iter().all(|&x| x == 0x5a));
        }
    }
}

#[test]
fn pvm_closing_the_gmem_of_a_slot_with_backing_changes_nothing() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, GmemFlags::MMAP);
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    mem.fill(0, PG, 0x77).unwrap();
    add_gmem_slot_with_shared(&vm, 1, 0, &mem, &g, 0).unwrap();
    drop(g);
    // Upstream: EFAULT (released_gmem_only_slot_faults_shared_efault).
    let mut v = vcpu(&vm, 0, &[r(0, PG, 0x77, S), w(0, 8, 1, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert!(delete_slot(&vm, 1).is_ok());
}

#[test]
fn pvm_null_hva_gmem_slot_without_init_shared_is_mmio() {
    // The backend maps only MMAP|INIT_SHARED files; MMAP alone keeps NULL.
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, GmemFlags::MMAP);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), mmio_write(0));
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
}

#[test]
fn pvm_null_hva_gmem_slot_by_fd_is_mmio() {
    // A borrowed fd (GmemRef::Fd) is not a file the backend maps.
    use std::os::fd::AsFd;
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, MMAP_SHARED);
    let r = region_raw(1, MEM_GUEST_MEMFD, 0, PG, GmemRef::Fd(g.as_fd()), 0);
    vm.set_user_memory_region(&r).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), mmio_write(0));
}

#[test]
fn pvm_without_gmem_hva_null_hva_gmem_only_slot_is_mmio() {
    // PRIVMEM_GMEM_HVA=0 on PVM: KVM gets the caller's NULL.
    let hv = hv_with(Quirks {
        pvm: true,
        gmem_hva: false,
    });
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, MMAP_SHARED);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), mmio_write(0));
}

#[test]
fn pvm_plain_null_hva_slot_is_mmio() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    vm.set_user_memory_region(&region_raw(1, 0, 0, PG, GmemRef::Raw(-1), 0))
        .unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 1, S)]);
    assert_eq!(v.run().unwrap(), mmio_write(0));
}

// ---- Quirks::gmem_hva: the backend's mapping stands in for NULL ----

#[test]
fn pvm_null_hva_mmap_shared_slot_is_served_from_gmem_and_survives_close() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, 2 * PG, MMAP_SHARED);
    // The slot maps the file's second page.
    add_gmem_slot(&vm, 1, 1 << 32, PG, &g, PG).unwrap();
    let m = hv.gmem_mmap(&g, 2 * PG, true).unwrap();
    m.fill(PG, PG, 0xaa).unwrap();
    let mut v = vcpu(&vm, 0, &[r(1 << 32, PG, 0xaa, S), w(1 << 32, PG, 0xbb, S)]);
    assert!(all_passed(&run_all(&mut v)));
    let mut b = vec![0u8; PG as usize];
    m.read(PG, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xbb));
    // Close every caller reference: the backend's mapping keeps the file,
    // so the guest keeps its bytes (upstream: EFAULT).
    let file = Arc::downgrade(&crate::gmem::file_of(&g).unwrap());
    drop(m);
    drop(g);
    assert!(file.upgrade().is_some());
    let mut v = vcpu(&vm, 1, &[r(1 << 32, PG, 0xbb, S)]);
    assert!(all_passed(&run_all(&mut v)));
    // Deleting the slot drops the mapping, and with it the file.
    drop(v);
    delete_slot(&vm, 1).unwrap();
    assert!(file.upgrade().is_none());
}

#[test]
fn gmem_hva_mapping_lives_while_a_vcpu_does() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, MMAP_SHARED);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, 8, 7, S), r(0, 8, 7, S)]);
    let file = Arc::downgrade(&crate::gmem::file_of(&g).unwrap());
    drop(g);
    drop(vm);
    assert!(all_passed(&run_all(&mut v)));
    drop(v);
    assert!(
        file.upgrade().is_none(),
        "no reference cycle keeps the file"
    );
}

#[test]
fn gmem_hva_is_not_taken_by_a_failed_request() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let mem = vm.create_shared(PG, SharedKind::Anonymous).unwrap();
    vm.set_user_memory_region(&plain(0, 0, PG, &mem)).unwrap();
    let g = gmem(&vm, PG, MMAP_SHARED);
    // Overlaps slot 0: EEXIST, and no mapping is kept for slot 1.
    assert_eq!(
        errno(add_gmem_slot(&vm, 1, 0, PG, &g, 0)),
        Some(Errno::EEXIST)
    );
    let file = Arc::downgrade(&crate::gmem::file_of(&g).unwrap());
    drop(g);
    assert!(file.upgrade().is_none());
}

#[test]
fn gmem_hva_alone_keeps_upstream_faults_but_holds_the_file() {
    // A non-PVM host with PRIVMEM_GMEM_HVA=1: the slot is gmem-only as
    // upstream, but the backend's mapping keeps the file after the close.
    let hv = hv_with(Quirks {
        pvm: false,
        gmem_hva: true,
    });
    let vm = hv.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, PG, MMAP_SHARED);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x31, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert!(bytes_of(&hv, &g, PG).iter().all(|&x| x == 0x31));
    drop(g);
    let mut v = vcpu(&vm, 1, &[r(0, PG, 0x31, S)]);
    assert!(all_passed(&run_all(&mut v)));
}

#[test]
fn without_quirks_null_hva_gmem_only_slot_faults_after_close() {
    // Upstream docs/selftests.md F26 on a default VM, for contrast.
    let (_hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, MMAP_SHARED);
    add_gmem_slot(&vm, 1, 0, PG, &g, 0).unwrap();
    drop(g);
    let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert_eq!(v.run().unwrap(), efault(0));
}

// ---- private-memory VMs are unaffected ----

#[test]
fn pvm_quirk_leaves_sw_protected_private_faults_on_gmem() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::SwProtected).unwrap();
    let g = gmem(&vm, PG, GmemFlags(0));
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    add_gmem_slot_with_shared(&vm, 10, 0, &mem, &g, 0).unwrap();
    vm.set_memory_attributes(0, PG, 8, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x66, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert!(bytes_of(&hv, &g, PG).iter().all(|&x| x == 0x66));
    drop(g);
    let mut v = vcpu(&vm, 1, &[r(0, 8, 0, S)]);
    assert!(matches!(
        v.run().unwrap(),
        Exit::MemoryFault(MemoryFault { private: true, .. })
    ));
}

#[test]
fn pvm_quirk_leaves_sw_protected_gmem_only_slot_on_gmem() {
    let hv = hv_with(Quirks::PVM);
    let vm = hv.create_vm(VmType::SwProtected).unwrap();
    let g = gmem(&vm, PG, GmemFlags::MMAP);
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    add_gmem_slot_with_shared(&vm, 10, 0, &mem, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(0, PG, 0x67, S)]);
    assert!(all_passed(&run_all(&mut v)));
    assert!(bytes_of(&hv, &g, PG).iter().all(|&x| x == 0x67));
}

// ---- a kernel built without CONFIG_KVM_GUEST_MEMFD (a PVM host) ----

fn gmem_region(gmem: &GuestMemfd) -> Region<'_, ModelShared> {
    Region {
        api: RegionApi::V2,
        slot: 0,
        flags: MEM_GUEST_MEMFD,
        gpa: 0,
        size: PG,
        userspace: UserAddr::Raw(0),
        gmem: GmemRef::File(gmem),
        gmem_offset: 0,
    }
}

#[test]
fn without_guest_memfd_caps_read_zero_at_both_scopes() {
    let hv = ModelHypervisor::new(KernelProfile::V7_3).with_guest_memfd(false);
    assert!(!hv.guest_memfd());
    let vm = hv.create_vm(VmType::Default).unwrap();
    for cap in [Cap::GuestMemfd, Cap::GuestMemfdFlags] {
        assert_eq!(hv.check_extension(cap).unwrap(), 0, "{cap:?} system");
        assert_eq!(vm.check_extension(cap).unwrap(), 0, "{cap:?} vm");
    }
    // Everything else is the profile's.
    assert_eq!(hv.check_extension(Cap::UserMemory2).unwrap(), 1);
    assert_eq!(
        vm.check_extension(Cap::ExitHypercall).unwrap(),
        ModelHypervisor::default()
            .create_vm(VmType::Default)
            .unwrap()
            .check_extension(Cap::ExitHypercall)
            .unwrap()
    );
}

#[test]
fn without_guest_memfd_create_is_enotty_before_argument_checks() {
    for profile in [KernelProfile::V6_12, KernelProfile::V7_3] {
        let hv = ModelHypervisor::new(profile).with_guest_memfd(false);
        for ty in [VmType::Default, VmType::SwProtected] {
            let vm = hv.create_vm(ty).unwrap();
            // Valid and invalid arguments alike: the ioctl does not exist.
            for (size, flags) in [
                (PG, GmemFlags(0)),
                (0, GmemFlags(0)),
                (PG, GmemFlags(1 << 7)),
            ] {
                let err = vm.create_guest_memfd(size, flags).unwrap_err();
                assert_eq!(
                    err.errno(),
                    Some(Errno::ENOTTY),
                    "{profile:?} {ty:?} {size} {flags:?}"
                );
            }
        }
    }
}

#[test]
fn without_guest_memfd_the_memslot_flag_is_einval_and_plain_slots_work() {
    // A guest_memfd from a model that has them, offered to one that does not:
    // the flag check comes first, so the file is never looked at.
    let donor = ModelHypervisor::new(KernelProfile::V7_3);
    let dvm = donor.create_vm(VmType::Default).unwrap();
    let gmem = dvm.create_guest_memfd(PG, MMAP_SHARED).unwrap();
    let hv = ModelHypervisor::new(KernelProfile::V7_3).with_guest_memfd(false);
    let vm = hv.create_vm(VmType::Default).unwrap();
    let err = vm.set_user_memory_region(&gmem_region(&gmem)).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    assert_eq!(vm.slot_count(), 0);
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    vm.set_user_memory_region(&plain(0, 0, PG, &mem)).unwrap();
    assert_eq!(vm.slot_of(Gpa(0)), Some(0));
    // With guest_memfd built in, the same region is accepted.
    assert!(dvm.set_user_memory_region(&gmem_region(&gmem)).is_ok());
}
