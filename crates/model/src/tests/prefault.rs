//! `KVM_PRE_FAULT_MEMORY` (`pre_fault_memory_test` and the kernel path),
//! on both profiles.

use std::time::Duration;

use privmem_core::backend::{Cap, Hypervisor, Vcpu, Vm};
use privmem_core::{Attrs, Errno, GmemFlags, PreFaultRange, VmType};

use super::*;
use crate::InjectOp;

/// The selftest's slot: 2 MiB + 4 KiB.
const TEST_SIZE: u64 = M2 + PG;
const BASE: u64 = 1 << 32;

/// How the selftest backs its slot.
#[derive(Clone, Copy, Debug)]
enum Config {
    /// Default VM, shared memory.
    DefaultShared,
    /// SW_PROTECTED VM, shared memory in a guest_memfd slot.
    SwShared,
    /// SW_PROTECTED VM, the whole slot private.
    SwPrivate,
}

const CONFIGS: [Config; 3] = [Config::DefaultShared, Config::SwShared, Config::SwPrivate];

/// A VM with the selftest's slot 10 at `BASE`, and its vCPU 0.
fn setup(profile: KernelProfile, cfg: Config) -> (ModelHypervisor, ModelVm, ModelVcpu, Keep) {
    let h = ModelHypervisor::new(profile);
    let ty = match cfg {
        Config::DefaultShared => VmType::Default,
        Config::SwShared | Config::SwPrivate => VmType::SwProtected,
    };
    let vm = h.create_vm(ty).unwrap();
    let shared = vm.create_shared(TEST_SIZE, SharedKind::Anonymous).unwrap();
    let g = match cfg {
        Config::DefaultShared => {
            vm.set_user_memory_region(&Region {
                api: RegionApi::V2,
                slot: 10,
                flags: 0,
                gpa: BASE,
                size: TEST_SIZE,
                userspace: UserAddr::Backing {
                    mem: &shared,
                    offset: 0,
                },
                gmem: GmemRef::Raw(-1),
                gmem_offset: 0,
            })
            .unwrap();
            None
        }
        Config::SwShared | Config::SwPrivate => {
            let g = gmem(&vm, TEST_SIZE, GmemFlags(0));
            add_gmem_slot_with_shared(&vm, 10, BASE, &shared, &g, 0).unwrap();
            Some(g)
        }
    };
    if let Config::SwPrivate = cfg {
        vm.set_memory_attributes(BASE, TEST_SIZE, Attrs::PRIVATE.0, 0)
            .unwrap();
    }
    let v = vm.create_vcpu(0).unwrap();
    (h, vm, v, Keep(shared, g))
}

/// Backings the test keeps alive.
struct Keep(ModelShared, Option<GuestMemfd>);

fn pre_fault(v: &mut ModelVcpu, gpa: u64, size: u64) -> (Option<Errno>, PreFaultRange) {
    let mut range = PreFaultRange::new(gpa, size);
    let r = v.pre_fault_memory(&mut range);
    (errno(r), range)
}

#[test]
fn selftest_ranges_leave_what_the_slot_lacks() {
    for p in KernelProfile::ALL {
        for cfg in CONFIGS {
            let (_h, _vm, mut v, _keep) = setup(p, cfg);
            let what = format!("{p:?} {cfg:?}");
            // [0, 2M): everything.
            assert_eq!(
                pre_fault(&mut v, BASE, M2),
                (None, PreFaultRange::new(BASE + M2, 0)),
                "{what}"
            );
            // [2M, 2M+8K): the first page, then no slot: success with 4K left...
            let (e, left) = pre_fault(&mut v, BASE + M2, 2 * PG);
            assert_eq!(
                (e, left),
                (None, PreFaultRange::new(BASE + TEST_SIZE, PG)),
                "{what}"
            );
            // ...and retrying the rest is ENOENT with 4K left.
            let (e, left) = pre_fault(&mut v, left.gpa, left.size);
            assert_eq!((e, left.size), (Some(Errno::ENOENT), PG), "{what}");
            // Past the slot: ENOENT, nothing done.
            let (e, left) = pre_fault(&mut v, BASE + TEST_SIZE, PG);
            assert_eq!(
                (e, left),
                (
                    Some(Errno::ENOENT),
                    PreFaultRange::new(BASE + TEST_SIZE, PG)
                ),
                "{what}"
            );
        }
    }
}

#[test]
fn bad_flags_alignment_size_and_wrap_are_einval() {
    let (_h, _vm, mut v, _keep) = setup(KernelProfile::V7_3, Config::DefaultShared);
    let mut flags = PreFaultRange::new(BASE, PG);
    flags.flags = 1;
    assert_eq!(errno(v.pre_fault_memory(&mut flags)), Some(Errno::EINVAL));
    for (gpa, size) in [
        (BASE + 1, PG),
        (BASE, PG + 1),
        (BASE, 0),
        (u64::MAX - PG + 1, PG),
    ] {
        assert_eq!(
            pre_fault(&mut v, gpa, size).0,
            Some(Errno::EINVAL),
            "{gpa:#x}+{size:#x}"
        );
    }
}

#[test]
fn private_pre_fault_allocates_guest_memfd_pages() {
    let (h, _vm, mut v, keep) = setup(KernelProfile::V7_3, Config::SwPrivate);
    let g = keep.1.as_ref().unwrap();
    assert_eq!(h.gmem_allocated_pages(g).unwrap(), 0);
    pre_fault(&mut v, BASE, 4 * PG);
    assert_eq!(h.gmem_allocated_pages(g).unwrap(), 4);
    // A shared pre-fault of the same VM leaves guest_memfd alone.
    let (_h2, _vm2, mut v2, keep2) = setup(KernelProfile::V7_3, Config::SwShared);
    pre_fault(&mut v2, BASE, 4 * PG);
    assert_eq!(
        h.gmem_allocated_pages(keep2.1.as_ref().unwrap()).unwrap(),
        0
    );
    assert_eq!(keep2.0.allocated_pages(), 4);
}

#[test]
fn private_pre_fault_follows_the_attribute_of_each_page() {
    // A private page in a slot without guest_memfd: EFAULT at that page.
    let h = ModelHypervisor::new(KernelProfile::V7_3);
    let vm = h.create_vm(VmType::SwProtected).unwrap();
    let _mem = add_shared_slot(&vm, 1, BASE, 4 * PG);
    vm.set_memory_attributes(BASE + 2 * PG, PG, Attrs::PRIVATE.0, 0)
        .unwrap();
    let mut v = vm.create_vcpu(0).unwrap();
    let (e, left) = pre_fault(&mut v, BASE, 4 * PG);
    assert_eq!((e, left), (None, PreFaultRange::new(BASE + 2 * PG, 2 * PG)));
    let (e, left) = pre_fault(&mut v, left.gpa, left.size);
    assert_eq!((e, left.gpa), (Some(Errno::EFAULT), BASE + 2 * PG));
    // A private page with no slot at all: EFAULT, not ENOENT.
    vm.set_memory_attributes(BASE + 8 * PG, PG, Attrs::PRIVATE.0, 0)
        .unwrap();
    assert_eq!(pre_fault(&mut v, BASE + 8 * PG, PG).0, Some(Errno::EFAULT));
}

#[test]
fn slot_change_underneath_is_eagain_on_7_3() {
    let (h, _vm, mut v, _keep) = setup(KernelProfile::V7_3, Config::DefaultShared);
    h.inject_failure(InjectOp::PreFaultSlotChange, 1, Errno::EAGAIN);
    assert_eq!(
        pre_fault(&mut v, BASE, 4 * PG),
        (Some(Errno::EAGAIN), PreFaultRange::new(BASE, 4 * PG))
    );
    // After some pages: success with the rest left.
    h.inject_failure(InjectOp::PreFaultSlotChange, 3, Errno::EAGAIN);
    assert_eq!(
        pre_fault(&mut v, BASE, 4 * PG),
        (None, PreFaultRange::new(BASE + 2 * PG, 2 * PG))
    );
    // Once the change is over, the rest maps.
    assert_eq!(pre_fault(&mut v, BASE + 2 * PG, 2 * PG).0, None);
}

#[test]
fn slot_change_underneath_retries_until_a_signal_on_6_12() {
    let (h, _vm, mut v, _keep) = setup(KernelProfile::V6_12, Config::SwPrivate);
    h.inject_failure(InjectOp::PreFaultSlotChange, 2, Errno::EAGAIN);
    let kick = v.kicker();
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        kick.kick();
    });
    let start = std::time::Instant::now();
    let (e, left) = pre_fault(&mut v, BASE, 4 * PG);
    kicker.join().unwrap();
    // It waited for the kick, then returned the one page it had mapped.
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert_eq!((e, left), (None, PreFaultRange::new(BASE + PG, 3 * PG)));
    // With nothing mapped yet, the signal is EINTR.
    h.inject_failure(InjectOp::PreFaultSlotChange, 1, Errno::EAGAIN);
    let kick = v.kicker();
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        kick.kick();
    });
    v.load_program(&[GuestOp::Halt]).unwrap();
    assert_eq!(v.run(), Err(privmem_core::RunError::Interrupted));
    let (e, left) = pre_fault(&mut v, BASE + PG, 3 * PG);
    kicker.join().unwrap();
    assert_eq!((e, left.size), (Some(Errno::EINTR), 3 * PG));
    // The kick that ended it is also the next run's.
    assert_eq!(v.run(), Err(privmem_core::RunError::Interrupted));
}

#[test]
fn a_kick_from_before_the_call_is_left_for_the_next_run() {
    for p in KernelProfile::ALL {
        let (_h, _vm, mut v, _keep) = setup(p, Config::DefaultShared);
        v.load_program(&[GuestOp::Halt]).unwrap();
        v.kicker().kick();
        assert_eq!(pre_fault(&mut v, BASE, PG).0, None, "{p:?}");
        assert_eq!(v.run(), Err(privmem_core::RunError::Interrupted), "{p:?}");
    }
}

#[test]
fn a_dead_vm_is_eio() {
    for p in KernelProfile::ALL {
        let (_h, vm, mut v, _keep) = setup(p, Config::DefaultShared);
        vm.mark_dead();
        assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::EIO), "{p:?}");
    }
}

#[test]
fn without_tdp_the_cap_is_0_and_pre_fault_eopnotsupp() {
    let h = ModelHypervisor::new(KernelProfile::V7_3).with_tdp(false);
    assert_eq!(h.check_extension(Cap::PreFaultMemory).unwrap(), 0);
    let vm = h.create_vm(VmType::Default).unwrap();
    let _mem = add_shared_slot(&vm, 1, BASE, PG);
    let mut v = vm.create_vcpu(0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::EOPNOTSUPP));
    let tdp = ModelHypervisor::new(KernelProfile::V6_12);
    assert_eq!(tdp.check_extension(Cap::PreFaultMemory).unwrap(), 1);
}

#[test]
fn pvm_quirk_pre_fault_is_enospc() {
    // Host quirk, measured on the PVM hosts (6.18.44-fc): ENOSPC.
    let h = ModelHypervisor::new(KernelProfile::V7_3)
        .with_tdp(false)
        .with_quirks(privmem_core::Quirks::PVM);
    let vm = h.create_vm(VmType::Default).unwrap();
    let _mem = add_shared_slot(&vm, 1, BASE, PG);
    let mut v = vm.create_vcpu(0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::ENOSPC));
}

#[test]
fn coco_vms_may_not_pre_fault_before_launch() {
    let h = ModelHypervisor::new(KernelProfile::V7_3);
    let vm = h.create_vm(VmType::Coco).unwrap();
    let _mem = add_shared_slot(&vm, 1, BASE, PG);
    let mut v = vm.create_vcpu(0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::EOPNOTSUPP));
}

#[test]
fn poisoned_gmem_page_is_ehwpoison_and_null_hva_is_efault() {
    let (h, _vm, mut v, keep) = setup(KernelProfile::V7_3, Config::SwPrivate);
    h.poison_gmem(keep.1.as_ref().unwrap(), PG).unwrap();
    let (e, left) = pre_fault(&mut v, BASE + PG, PG);
    assert_eq!((e, left.size), (Some(Errno::EHWPOISON), PG));
    // A shared slot with nothing mapped at its userspace_addr.
    let vm = h.create_vm(VmType::Default).unwrap();
    vm.set_user_memory_region(&region_raw(1, 0, BASE, PG, GmemRef::Raw(-1), 0))
        .unwrap();
    let mut v = vm.create_vcpu(0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::EFAULT));
}

#[test]
fn gmem_only_slot_pre_faults_from_guest_memfd() {
    let h = ModelHypervisor::new(KernelProfile::V7_3);
    let vm = h.create_vm(VmType::Default).unwrap();
    let g = gmem(&vm, 2 * PG, GmemFlags(3));
    add_gmem_slot(&vm, 1, BASE, 2 * PG, &g, 0).unwrap();
    let mut v = vm.create_vcpu(0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, 2 * PG).0, None);
    assert_eq!(h.gmem_allocated_pages(&g).unwrap(), 2);
    drop(g);
    assert_eq!(pre_fault(&mut v, BASE, PG).0, Some(Errno::EFAULT));
}

/// Deletes slot 10.
fn delete_slot_10(vm: &ModelVm) {
    vm.set_user_memory_region(&Region::<ModelShared> {
        api: RegionApi::V2,
        slot: 10,
        flags: 0,
        gpa: BASE,
        size: 0,
        userspace: UserAddr::Raw(0),
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    })
    .unwrap();
}

/// Deletes slot 10 of a `DefaultShared` setup and creates it again.
fn recreate_default_slot(vm: &ModelVm, keep: &Keep) {
    delete_slot_10(vm);
    vm.set_user_memory_region(&Region {
        api: RegionApi::V2,
        slot: 10,
        flags: 0,
        gpa: BASE,
        size: TEST_SIZE,
        userspace: UserAddr::Backing {
            mem: &keep.0,
            offset: 0,
        },
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    })
    .unwrap();
}

/// A pre-fault that a kick from another thread ends after `after`.
fn pre_fault_kicked(v: &mut ModelVcpu, gpa: u64, after: Duration) -> (Option<Errno>, u64) {
    let kick = v.kicker();
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(after);
        kick.kick();
    });
    let (e, left) = pre_fault(v, gpa, PG);
    kicker.join().unwrap();
    (e, left.size)
}

#[test]
fn after_a_default_vm_slot_deletion_6_12_spins_until_the_vcpu_runs() {
    let (_h, vm, mut v, keep) = setup(KernelProfile::V6_12, Config::DefaultShared);
    // The first pre-fault loads the vCPU's root.
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
    recreate_default_slot(&vm, &keep);
    // The root is obsolete: every call spins until a signal, with the slot
    // back, and outside any slot too.
    let ms = Duration::from_millis(30);
    assert_eq!(pre_fault_kicked(&mut v, BASE, ms), (Some(Errno::EINTR), PG));
    assert_eq!(
        pre_fault_kicked(&mut v, BASE + PG, ms),
        (Some(Errno::EINTR), PG)
    );
    assert_eq!(pre_fault_kicked(&mut v, 0, ms), (Some(Errno::EINTR), PG));
    // KVM_RUN frees the obsolete root; the next pre-fault loads a new one.
    v.load_program(&[GuestOp::Halt]).unwrap();
    let _ = v.run();
    let _ = v.run();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
}

#[test]
fn after_a_default_vm_slot_deletion_7_3_reloads_the_root() {
    let (_h, vm, mut v, keep) = setup(KernelProfile::V7_3, Config::DefaultShared);
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
    recreate_default_slot(&vm, &keep);
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
    assert_eq!(pre_fault(&mut v, 0, PG).0, Some(Errno::ENOENT));
}

#[test]
fn a_sw_protected_slot_deletion_leaves_the_6_12_root_valid() {
    let (_h, vm, mut v, keep) = setup(KernelProfile::V6_12, Config::SwShared);
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
    let g = keep.1.as_ref().unwrap();
    delete_slot_10(&vm);
    add_gmem_slot_with_shared(&vm, 10, BASE, &keep.0, g, 0).unwrap();
    assert_eq!(pre_fault(&mut v, BASE, PG).0, None);
}
