//! Whole-VM scenarios in the style of `private_mem_conversions_test` (C1–C4),
//! driven by a minimal userspace loop, including several vCPU threads.

use privmem_core::backend::{
    Access, GuestOp, HostMemory, Hypervisor, SharedKind, Vcpu, Vm, FALLOC_FL_KEEP_SIZE as KEEP,
    FALLOC_FL_PUNCH_HOLE as PUNCH,
};
use privmem_core::{Exit, GmemFlags, GuestReport, Hypercall, VmType};

use super::*;

const S: Access = Access::Shared;
const P: Access = Access::Private;

/// The selftest's host side: MAP_GPA_RANGE sets attributes and optionally
/// fallocates the gmem range (`base` = GPA of gmem offset 0). Panics on a
/// memory fault, as the selftest's run loop would.
fn drive(
    hv: &ModelHypervisor,
    vm: &ModelVm,
    g: &GuestMemfd,
    base: u64,
    v: &mut ModelVcpu,
    fallocate: bool,
) -> Vec<GuestReport> {
    let mut reports = Vec::new();
    loop {
        match v.run().expect("run") {
            Exit::Hypercall(Hypercall::MapGpaRange(m)) => {
                let len = m.pages * PG;
                let attrs = if m.to_private { 8 } else { 0 };
                vm.set_memory_attributes(m.gpa.raw(), len, attrs, 0)
                    .unwrap();
                if fallocate {
                    let mode = if m.to_private { KEEP } else { KEEP | PUNCH };
                    let off = (m.gpa.raw() - base) as i64;
                    hv.gmem_fallocate(g, mode, off, len as i64).unwrap();
                }
                v.complete_hypercall(0).unwrap();
            }
            Exit::Report(r) => reports.push(r),
            Exit::Hlt => return reports,
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn conversion_ops(base: u64, off: u64, size: u64) -> Vec<GuestOp> {
    let gpa = base + off;
    vec![
        w(gpa, size, 0x11, S),
        map(gpa, size / PG, true, Some(0)),
        w(gpa, size, 0x22, S),
        r(gpa, size, 0x22, S),
        GuestOp::Sync { tag: 1 },
        map(gpa, size / PG, false, Some(0)),
        r(gpa, size, 0x11, S),
        GuestOp::Halt,
    ]
}

fn conversion_case(off: u64, size: u64, fallocate: bool) {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    vm.enable_exit_hypercall(1 << 12).unwrap();
    let base = 1u64 << 32;
    let region = 4 << 20;
    let g = gmem(&vm, region, GmemFlags(0));
    let mem = vm.create_shared(region, SharedKind::Anonymous).unwrap();
    add_gmem_slot_with_shared(&vm, 10, base, &mem, &g, 0).unwrap();
    let mut v = vcpu(&vm, 0, &conversion_ops(base, off, size));
    let reports = drive(&hv, &vm, &g, base, &mut v, fallocate);
    assert!(reports.iter().all(|r| !matches!(
        r,
        GuestReport::CheckFailed { .. } | GuestReport::RetMismatch { .. }
    )));
    // The private writes never reached the shared backing.
    let mut b = vec![0u8; size as usize];
    mem.read(off, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x11));
    if fallocate {
        assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
    }
}

#[test]
fn c1_conversions_without_fallocate_preserve_stores() {
    for (off, size) in [(0, PG), (0, M2), (PG, PG), (PG, M2), (M2, PG)] {
        conversion_case(off, size, false);
    }
}

#[test]
fn c2_conversions_with_fallocate_free_private_pages() {
    for (off, size) in [(0, PG), (0, M2), (PG, PG), (PG, M2), (M2, PG)] {
        conversion_case(off, size, true);
    }
}

#[test]
fn c3_punch_hole_without_attribute_change_reads_zero() {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let base = 1u64 << 32;
    let g = gmem(&vm, M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, base, M2, &g, 0).unwrap();
    vm.set_memory_attributes(base, M2, 8, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[w(base, M2, 0xcc, S), r(base, M2, 0xcc, S)]);
    assert!(all_passed(&run_all(&mut v)));
    hv.gmem_fallocate(&g, KEEP | PUNCH, PG as i64, PG as i64)
        .unwrap();
    let ops = [
        r(base, PG, 0xcc, S),
        r(base + PG, PG, 0, S),
        r(base + 2 * PG, PG, 0xcc, S),
    ];
    let mut v = vcpu(&vm, 1, &ops);
    assert!(all_passed(&run_all(&mut v)));
}

#[test]
fn multi_vcpu_concurrent_conversions_pass() {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    vm.enable_exit_hypercall(1 << 12).unwrap();
    let base = 1u64 << 32;
    let per = 4u64 << 20;
    let n = 4;
    let g = gmem(&vm, per * n, GmemFlags(0));
    // Two slots over one file (more than one slot, as C with -m 2).
    let half = per * n / 2;
    let mem = vm.create_shared(half, SharedKind::Memfd).unwrap();
    let mem2 = vm.create_shared(half, SharedKind::Memfd).unwrap();
    add_gmem_slot_with_shared(&vm, 10, base, &mem, &g, 0).unwrap();
    add_gmem_slot_with_shared(&vm, 11, base + half, &mem2, &g, half).unwrap();
    std::thread::scope(|s| {
        for i in 0..n {
            let (hv, vm, g) = (&hv, vm.clone(), &g);
            let cpu_base = base + i * per;
            s.spawn(move || {
                let mut ops = Vec::new();
                for (off, size) in [(0, PG), (0, M2), (PG, PG), (PG, M2), (M2, PG)] {
                    ops.extend(conversion_ops(cpu_base, off, size));
                    ops.pop();
                }
                ops.push(GuestOp::Halt);
                let mut v = vcpu(&vm, i as u32, &ops);
                let reports = drive(hv, &vm, g, base, &mut v, true);
                assert_eq!(reports.len(), 15);
                assert!(reports
                    .iter()
                    .all(|r| matches!(r, GuestReport::CheckPassed | GuestReport::Sync { .. })));
            });
        }
    });
}

#[test]
fn coco_implicit_conversions_from_threads_pass() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let size = 8 * M2;
    let g = gmem(&vm, size, GmemFlags(0));
    let mem = vm.create_shared(size, SharedKind::Memfd).unwrap();
    add_gmem_slot_with_shared(&vm, 0, 0, &mem, &g, 0).unwrap();
    std::thread::scope(|s| {
        for i in 0..4u64 {
            let vm = vm.clone();
            s.spawn(move || {
                let b = i * 2 * M2;
                let ops = [
                    w(b, 2 * M2, 1, P),
                    w(b, M2, 2, S),
                    r(b, M2, 2, S),
                    r(b + M2, M2, 1, P),
                ];
                let mut v = vcpu(&vm, i as u32, &ops);
                loop {
                    match v.run().unwrap() {
                        Exit::MemoryFault(f) => {
                            let attrs = if f.private { 8 } else { 0 };
                            vm.set_memory_attributes(f.gpa.raw(), f.size, attrs, 0)
                                .unwrap();
                        }
                        Exit::Report(GuestReport::CheckPassed) => {}
                        Exit::Hlt => break,
                        other => panic!("{other:?}"),
                    }
                }
            });
        }
    });
}

#[test]
fn d1_slot_deleted_while_vcpu_thread_reads_private_page() {
    // private_mem_kvm_exits_test D1: a vCPU thread reads in a loop while the
    // main thread deletes the slot; the attribute outlives the slot.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot(&vm, 10, GPA_C0, PG, &g, 0).unwrap();
    vm.set_memory_attributes(GPA_C0, PG, 8, 0).unwrap();
    // The guest reads until it faults (its program restarts at each halt),
    // so the outcome does not depend on how the two threads are scheduled
    // (under valgrind one thread runs at a time); a deadline keeps a broken
    // model from hanging the test.
    let ops: Vec<GuestOp> = std::iter::repeat_n(r(GPA_C0, 8, 0, S), 1 << 12).collect();
    let mut v = vcpu(&vm, 0, &ops);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let t = std::thread::spawn(move || loop {
        match v.run().unwrap() {
            Exit::Report(GuestReport::CheckPassed) => {}
            Exit::Hlt if std::time::Instant::now() < deadline => v.load_program(&ops).unwrap(),
            other => return other,
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    delete_slot(&vm, 10).unwrap();
    let exit = t.join().unwrap();
    let want = Exit::MemoryFault(privmem_core::MemoryFault {
        gpa: privmem_core::Gpa(GPA_C0),
        size: PG,
        private: true,
        errno: privmem_core::FaultErrno::Efault,
    });
    assert_eq!(exit, want);
}

#[test]
fn slot_deleted_while_vcpu_stopped_at_fault_changes_the_retry() {
    let (_hv, vm) = setup_vm(VmType::Coco);
    let mem = vm.create_shared(PG, SharedKind::Memfd).unwrap();
    let g = gmem(&vm, PG, GmemFlags(0));
    add_gmem_slot_with_shared(&vm, 0, 0, &mem, &g, 0).unwrap();
    vm.set_memory_attributes(0, PG, 8, 0).unwrap();
    let mut v = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert!(matches!(v.run().unwrap(), Exit::MemoryFault(f) if !f.private));
    delete_slot(&vm, 0).unwrap();
    vm.set_memory_attributes(0, PG, 0, 0).unwrap();
    assert!(matches!(v.run().unwrap(), Exit::Mmio(_)));
}
