//! What single steps give on the model: the steps the differential must
//! send to the kernel rather than call `n/a`, and the RAX a guest's `map`
//! sees.

use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::{Errno, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};

use super::exec::{execute, ExitSum, Res};
use super::ops::{GmemSel, GuestSpec, Op, RegionOp, Sequence, UserSel};

fn seq(vm_type: VmType, ops: Vec<Op>) -> Sequence {
    Sequence { vm_type, ops }
}

fn results(hv: &ModelHypervisor, s: &Sequence) -> Vec<Res> {
    execute(hv, s).expect("sequence ran").res
}

/// A guest_memfd slot request naming file 0 before any file exists.
fn gmem_slot_without_file() -> Op {
    Op::SetRegion(RegionOp {
        v1: false,
        slot: 1,
        flags: MEM_GUEST_MEMFD,
        gpa: 0,
        size: 2 << 20,
        user: UserSel::Backing(0),
        gmem: GmemSel::File(0),
        gmem_offset: 0,
    })
}

#[test]
fn a_guest_memfd_slot_without_a_file_sends_fd_minus_1() {
    let s = seq(VmType::SwProtected, vec![gmem_slot_without_file()]);
    // kvm_gmem_bind: fget(-1) fails.
    let hv = ModelHypervisor::new(KernelProfile::V7_3);
    assert_eq!(results(&hv, &s), [Res::Err(Errno::EBADF.0)]);
    // Without guest_memfd the flag itself is invalid.
    let bare = ModelHypervisor::new(KernelProfile::V7_3).with_guest_memfd(false);
    let s = seq(VmType::Default, vec![gmem_slot_without_file()]);
    assert_eq!(results(&bare, &s), [Res::Err(Errno::EINVAL.0)]);
}

fn map(gpa: u64, complete: Option<i64>) -> GuestSpec {
    GuestSpec::Map {
        gpa,
        pages: 1,
        attrs: 0,
        complete,
    }
}

fn run_maps(profile: KernelProfile, enable: bool, maps: Vec<GuestSpec>) -> Res {
    let mut ops = Vec::new();
    if enable {
        ops.push(Op::EnableExitHypercall { mask: 1 << 12 });
    }
    ops.push(Op::Run { ops: maps });
    let hv = ModelHypervisor::new(profile);
    results(&hv, &seq(VmType::Default, ops))
        .pop()
        .expect("a result")
}

fn hc(gpa: u64) -> ExitSum {
    ExitSum::Hypercall {
        gpa,
        pages: 1,
        attrs: 0,
    }
}

#[test]
fn map_steps_compare_the_rax_the_guest_gets() {
    use KernelProfile::{V6_12, V7_3};
    // Completed as asked: the guest gets the value and goes on.
    let r = run_maps(
        V7_3,
        true,
        vec![map(0x1000, Some(-5)), map(0x2000, Some(1))],
    );
    assert_eq!(r, Res::Exits(vec![hc(0x1000), hc(0x2000), ExitSum::Hlt]));
    // Left uncompleted: the guest reports what the kernel left in
    // kvm_run.hypercall.ret, per kernel.
    let maps = vec![map(0x1000, Some(-5)), map(0x2000, None)];
    let ret = |ret| ExitSum::Ret { gpa: 0x2000, ret };
    assert_eq!(
        run_maps(V7_3, true, maps.clone()),
        Res::Exits(vec![hc(0x1000), hc(0x2000), ret(0)])
    );
    assert_eq!(
        run_maps(V6_12, true, maps),
        Res::Exits(vec![hc(0x1000), hc(0x2000), ret(-5)])
    );
    // No exit: the synchronous error is what the guest reports.
    assert_eq!(
        run_maps(V7_3, false, vec![map(0x1000, Some(0))]),
        Res::Exits(vec![ExitSum::Ret {
            gpa: 0x1000,
            ret: -1000
        }])
    );
}

#[test]
fn maps_run_after_the_accesses_of_their_step() {
    let read = GuestSpec::Read {
        at: super::ops::Target::Gpa(0),
        len: 8,
        expect: 0,
        private: false,
    };
    // The map would stop the guest (ENOSYS); the read before it still runs.
    let r = run_maps(KernelProfile::V7_3, false, vec![map(0x1000, Some(0)), read]);
    let Res::Exits(exits) = r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            exits[0],
            ExitSum::Mmio {
                page: 0,
                write: false
            }
        ),
        "{exits:?}"
    );
}
