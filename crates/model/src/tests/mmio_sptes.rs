//! MMIO SPTEs of sw-protected VMs (`crate::mmio`): an earlier no-slot
//! access decides how a later access to the same gfn resolves. The first
//! test is the rig differential's minimal sequence (seed 14, 40 steps).

use privmem_core::backend::{Access, Vcpu, Vm};
use privmem_core::{Exit, Gpa, MmioExit, VmType};

use super::*;

const PRIV: u64 = 8;
const S: Access = Access::Shared;

fn mmio(gpa: u64, len: u8, write: bool) -> Exit {
    Exit::Mmio(MmioExit {
        gpa: Gpa(gpa),
        len,
        write,
    })
}

/// The next exit that is not a check report.
fn next_access_exit(v: &mut ModelVcpu) -> Exit {
    loop {
        match v.run().unwrap() {
            Exit::Report(_) => continue,
            e => return e,
        }
    }
}

#[test]
fn stale_mmio_spte_makes_a_private_gfn_fault_shared() {
    // Run 1 (a vCPU, so a memslot change on KVM: its runtime area) reads a
    // gfn without a memslot: MMIO, and an MMIO SPTE. Making the gfn private
    // zaps nothing outside memslots. Run 2 on a new vCPU (another memslot
    // change: the SPTE is stale) takes a reserved-bit fault, which is shared.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mut a = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert_eq!(a.run().unwrap(), mmio(0, 8, false));
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut b = vcpu(&vm, 1, &[w(0, 8, 0x11, S)]);
    assert_eq!(b.run().unwrap(), efault(0, false));
}

#[test]
fn without_an_earlier_mmio_access_the_private_gfn_faults_private() {
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    let mut b = vcpu(&vm, 1, &[w(0, 8, 0x11, S)]);
    assert_eq!(b.run().unwrap(), efault(0, true));
}

#[test]
fn live_mmio_spte_is_emulated_although_the_gfn_went_private() {
    // No memslot change between the two accesses: the SPTE is current and
    // handle_mmio_page_fault emulates, attributes or not.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mut a = vcpu(
        &vm,
        0,
        &[r(0, 8, 0, S), w(PG, 1, 0x22, S), w(0, 1, 0x11, S)],
    );
    assert_eq!(a.run().unwrap(), mmio(0, 8, false));
    vm.set_memory_attributes(0, PG, PRIV, 0).unwrap();
    // The write to gfn 1 (never accessed, shared) is MMIO too.
    assert_eq!(next_access_exit(&mut a), mmio(PG, 1, true));
    assert_eq!(next_access_exit(&mut a), mmio(0, 1, true));
}

#[test]
fn a_memslot_over_a_stale_mmio_gfn_is_reached_as_shared() {
    // The SPTE survives the new memslot (not shadow-present, never zapped):
    // with the gfn private the access still faults as shared; once the gfn
    // is shared the slot's memory serves it and the SPTE is gone.
    let (_hv, vm) = setup_vm(VmType::SwProtected);
    let mut a = vcpu(&vm, 0, &[r(GPA_C0, 8, 0, S)]);
    assert_eq!(a.run().unwrap(), mmio(GPA_C0, 8, false));
    let mem = add_shared_slot(&vm, 10, GPA_C0, 2 * PG);
    vm.set_memory_attributes(GPA_C0, 2 * PG, PRIV, 0).unwrap();
    let mut b = vcpu(&vm, 1, &[w(GPA_C0, 2 * PG, 0x33, S)]);
    assert_eq!(b.run().unwrap(), efault(GPA_C0, false));
    vm.set_memory_attributes(GPA_C0, PG, 0, 0).unwrap();
    // Gfn 0 is now shared: written; gfn 1 had no SPTE and is private.
    assert_eq!(b.run().unwrap(), efault(GPA_C0 + PG, true));
    let mut buf = [0u8; 8];
    privmem_core::HostMemory::read(&mem, 0, &mut buf).unwrap();
    assert_eq!(buf, [0x33; 8]);
    // The SPTE was replaced: going private again faults private.
    vm.set_memory_attributes(GPA_C0, PG, PRIV, 0).unwrap();
    let mut c = vcpu(&vm, 2, &[r(GPA_C0, 8, 0, S)]);
    assert_eq!(c.run().unwrap(), efault(GPA_C0, true));
}

#[test]
fn default_vms_are_unaffected() {
    let (_hv, vm) = setup_vm(VmType::Default);
    let mut a = vcpu(&vm, 0, &[r(0, 8, 0, S)]);
    assert_eq!(a.run().unwrap(), mmio(0, 8, false));
    let mut b = vcpu(&vm, 1, &[w(0, 1, 0x11, S)]);
    assert_eq!(b.run().unwrap(), mmio(0, 1, true));
}
