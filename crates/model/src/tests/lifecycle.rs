//! Lifetimes (C5, release), run control (kick, injection, stepping),
//! determinism.

use std::sync::Arc;

use privmem_core::backend::{
    GuestOp, Hypervisor, RunError, Vcpu, Vm, FALLOC_FL_KEEP_SIZE as KEEP,
    FALLOC_FL_PUNCH_HOLE as PUNCH,
};
use privmem_core::{Errno, Exit, GmemFlags, GuestReport, VmType};

use super::*;

const S: privmem_core::backend::Access = privmem_core::backend::Access::Shared;

#[test]
fn c5_fallocate_after_vm_dropped_succeeds() {
    let (hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, 4 * M2, GmemFlags(0));
    add_gmem_slot(&vm, 10, 1 << 32, 4 * M2, &g, 0).unwrap();
    drop(vm);
    let len = (4 * M2) as i64;
    assert!(hv.gmem_fallocate(&g, PUNCH | KEEP, 0, len).is_ok());
    assert!(hv.gmem_fallocate(&g, KEEP, 0, len).is_ok());
}

#[test]
fn gmem_keeps_vm_alive() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let g = gmem(&vm, PG, GmemFlags(0));
    let weak = Arc::downgrade(&vm.inner);
    drop(vm);
    assert!(weak.upgrade().is_some());
    drop(g);
    assert!(weak.upgrade().is_none());
}

#[test]
fn kick_makes_next_run_interrupted() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    v.kicker().kick();
    assert_eq!(v.run(), Err(RunError::Interrupted));
    assert_eq!(v.run(), Ok(Exit::Hlt));
}

#[test]
fn kick_interrupts_a_long_run_from_another_thread() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, 64 << 20);
    let ops: Vec<GuestOp> = std::iter::repeat_n(w(0, 64 << 20, 1, S), 10_000).collect();
    let mut v = vcpu(&vm, 0, &ops);
    let k = v.kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        k.kick();
    });
    assert_eq!(v.run(), Err(RunError::Interrupted));
    t.join().unwrap();
}

#[test]
fn run_injected_eintr_is_interrupted() {
    let (hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    hv.inject_failure(crate::InjectOp::Run, 1, Errno::EINTR);
    assert_eq!(v.run(), Err(RunError::Interrupted));
    assert_eq!(v.run(), Ok(Exit::Hlt));
}

#[test]
fn run_injected_eagain_is_again() {
    let (hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    hv.inject_failure(crate::InjectOp::Run, 1, Errno::EAGAIN);
    assert_eq!(v.run(), Err(RunError::Again));
}

#[test]
fn run_injected_other_errno_is_backend_error() {
    let (hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    hv.inject_failure(crate::InjectOp::Run, 2, Errno::EIO);
    assert_eq!(v.run(), Ok(Exit::Hlt));
    assert!(matches!(v.run(), Err(RunError::Backend(_))));
}

#[test]
fn step_executes_one_page_at_a_time() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, 4 * PG);
    let mut v = vcpu(&vm, 0, &[w(0, 4 * PG, 1, S), GuestOp::Halt]);
    for _ in 0..4 {
        assert_eq!(v.step().unwrap(), None);
    }
    assert_eq!(v.pages_accessed(), 4);
    assert_eq!(v.step().unwrap(), Some(Exit::Hlt));
}

#[test]
fn step_limit_makes_run_resumable() {
    let (_hv, vm) = setup_vm(VmType::Default);
    add_shared_slot(&vm, 0, 0, 8 * PG);
    let mut v = vcpu(&vm, 0, &[w(0, 8 * PG, 1, S), r(0, 8 * PG, 1, S)]);
    v.set_step_limit(Some(3));
    let mut interrupted = 0;
    let exit = loop {
        match v.run() {
            Err(RunError::Interrupted) => interrupted += 1,
            other => break other.unwrap(),
        }
    };
    assert_eq!(exit, Exit::Report(GuestReport::CheckPassed));
    assert_eq!(interrupted, 5);
}

#[test]
fn halted_vcpu_returns_hlt_forever() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt, GuestOp::Sync { tag: 9 }]);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert_eq!(v.run().unwrap(), Exit::Hlt);
    assert!(v.is_done());
}

#[test]
fn running_past_last_op_halts() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Sync { tag: 3 }]);
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::Sync { tag: 3 }));
    assert_eq!(v.run().unwrap(), Exit::Hlt);
}

#[test]
fn zero_length_read_passes() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[r(0, 0, 1, S)]);
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::CheckPassed));
}

#[test]
fn same_program_gives_same_exits() {
    let run = || {
        let (_hv, vm) = setup_vm(VmType::Coco);
        let g = gmem(&vm, 4 * PG, GmemFlags(0));
        let mem = vm
            .create_shared(4 * PG, privmem_core::backend::SharedKind::Memfd)
            .unwrap();
        add_gmem_slot_with_shared(&vm, 0, 0, &mem, &g, 0).unwrap();
        vm.enable_exit_hypercall(1 << 12).unwrap();
        let p = privmem_core::backend::Access::Private;
        let ops = [w(0, 4 * PG, 1, p), map(0, 2, true, None), r(0, PG, 0, p)];
        let mut v = vcpu(&vm, 0, &ops);
        (0..6).map(|_| v.run().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn load_program_resets_a_stopped_vcpu() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut v = vcpu(&vm, 0, &[GuestOp::Halt]);
    v.run().unwrap();
    v.load_program(&[GuestOp::Sync { tag: 1 }]).unwrap();
    assert_eq!(v.run().unwrap(), Exit::Report(GuestReport::Sync { tag: 1 }));
}

#[test]
fn hypervisor_name_is_model() {
    assert_eq!(setup_hv().name(), "model");
}
