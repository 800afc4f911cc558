//! The per-exit calls a VMM's vCPU loop makes, from raw exit fields: on the
//! model, and pre-faulting on a fake backend that has
//! `KVM_CAP_PRE_FAULT_MEMORY`, and on the model's own vCPU (the model on a
//! TDP host answers the capability and models the ioctl).

mod common;

use std::sync::Mutex;

use common::{add_slot, model};
use privmem_core::attrmap::AttrMap;
use privmem_core::contract::{Backing, ConversionBackend, PreFault, VmSupport};
use privmem_core::decide::{FaultPolicy, ImplicitPolicy};
use privmem_core::engine::{
    Engine, EngineConfig, HypercallExit, MemoryFaultExit, PrefaultPolicy, StopReason, VcpuAction,
};
use privmem_core::exit::DecodeError;
use privmem_core::slot::{SharedBinding, SlotDesc};
use privmem_core::{Attrs, BackendError, Errno, Gpa, GpaRange, SlotId, VmType};
use privmem_model::InjectOp;

const EFAULT: i32 = 14;
const EHWPOISON: i32 = 133;
const PRIVATE: u64 = 1 << 3;

fn fault(flags: u64, gpa: u64) -> MemoryFaultExit {
    MemoryFaultExit {
        flags,
        gpa,
        size: 0x1000,
    }
}

fn map(gpa: u64, pages: u64, attrs: u64) -> HypercallExit {
    HypercallExit {
        nr: 12,
        args: [gpa, pages, attrs, 0, 0, 0],
    }
}

#[test]
fn memory_fault_converts_and_resumes_then_loops_then_stops() {
    let (_hv, e) = model(VmType::SwProtected, EngineConfig::default());
    add_slot(&e, 0, 0, 1 << 20);
    let mut g = e.repeat_guard();
    assert_eq!(
        e.handle_memory_fault(&mut g, fault(PRIVATE, 0x5000), EFAULT),
        VcpuAction::Resume
    );
    assert!(e.attr_map().is_private(Gpa(0x5000)));
    assert_eq!(e.vm().attributes(), e.attr_map());
    // The same fault again and again: converting did not resolve it.
    assert_eq!(
        e.handle_memory_fault(&mut g, fault(PRIVATE, 0x5000), EFAULT),
        VcpuAction::Resume
    );
    let stop = e.handle_memory_fault(&mut g, fault(PRIVATE, 0x5000), EFAULT);
    assert!(
        matches!(&stop, VcpuAction::Stop(StopReason::Loop { count: 3, .. })),
        "{stop:?}"
    );
    // Any other exit in between (a hypercall here) resets the guard.
    assert_eq!(
        e.handle_hypercall(
            &mut g,
            HypercallExit {
                nr: 99,
                args: [0; 6]
            },
            None
        ),
        -1000
    );
    assert_eq!(
        e.handle_memory_fault(&mut g, fault(PRIVATE, 0x5000), EFAULT),
        VcpuAction::Resume
    );
}

#[test]
fn hwpoison_is_poisoned_never_converted_and_other_errnos_are_not_faults() {
    let (_hv, e) = model(VmType::SwProtected, EngineConfig::default());
    add_slot(&e, 0, 0, 1 << 20);
    let mut g = e.repeat_guard();
    let a = e.handle_memory_fault(&mut g, fault(PRIVATE, 0x7000), EHWPOISON);
    assert!(
        matches!(
            a,
            VcpuAction::Poisoned {
                gpa: Gpa(0x7000),
                ..
            }
        ),
        "{a:?}"
    );
    assert!(!e.attr_map().is_private(Gpa(0x7000)), "never converted");
    for errno in [0, 4, 5, 11, -14, i32::MAX] {
        assert_eq!(
            e.handle_memory_fault(&mut g, fault(PRIVATE, 0x7000), errno),
            VcpuAction::Stop(StopReason::NotAMemoryFault { errno })
        );
    }
    let a = e.handle_memory_fault(&mut g, fault(1, 0x7000), EFAULT);
    assert!(
        matches!(
            a,
            VcpuAction::Stop(StopReason::BadExit(DecodeError::UnknownFaultFlags {
                flags: 1,
                ..
            }))
        ),
        "{a:?}"
    );
    assert!(e.attr_map().is_empty());
}

#[test]
fn unresolvable_denied_and_failed_faults_stop_with_their_reason() {
    let config = EngineConfig::default();
    let (hv, e) = model(VmType::SwProtected, config);
    add_slot(&e, 0, 0, 1 << 20);
    let mut g = e.repeat_guard();
    // No memslot there.
    let a = e.handle_memory_fault(&mut g, fault(PRIVATE, 4 << 20), EFAULT);
    assert!(
        matches!(&a, VcpuAction::Stop(StopReason::Unresolvable { .. })),
        "{a:?}"
    );
    assert!(
        matches!(&a, VcpuAction::Stop(r) if r.to_string().contains("not fully covered by memslots")),
        "{a:?}"
    );
    // The kernel refuses the attributes.
    hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    let a = e.handle_memory_fault(&mut g, fault(PRIVATE, 0x2000), EFAULT);
    assert!(
        matches!(&a, VcpuAction::Stop(r @ StopReason::ConversionFailed { .. }) if r.to_string().contains("ENOMEM")),
        "{a:?}"
    );
    assert_eq!(e.vm().attributes(), e.attr_map());
    // Deny.
    let deny = EngineConfig {
        faults: FaultPolicy {
            implicit: ImplicitPolicy::Deny,
            ..FaultPolicy::default()
        },
        ..config
    };
    let (_hv, e) = model(VmType::SwProtected, deny);
    add_slot(&e, 0, 0, 1 << 20);
    let a = e.handle_memory_fault(&mut e.repeat_guard(), fault(PRIVATE, 0x2000), EFAULT);
    assert!(
        matches!(a, VcpuAction::Stop(StopReason::Denied(_))),
        "{a:?}"
    );
}

#[test]
fn hypercall_answers_are_the_values_for_hypercall_ret() {
    let (_hv, e) = model(VmType::SwProtected, EngineConfig::default());
    add_slot(&e, 0, 0, 1 << 20);
    let mut g = e.repeat_guard();
    assert_eq!(e.handle_hypercall(&mut g, map(0x1000, 2, 0x10), None), 0);
    assert!(e.attr_map().is_private(Gpa(0x2000)));
    assert_eq!(e.handle_hypercall(&mut g, map(0x1000, 2, 0), None), 0);
    assert!(e.attr_map().is_empty());
    // Malformed: unaligned, zero pages, page-size 3, reserved bits, wraps.
    for (gpa, pages, attrs) in [
        (0x1001, 1, 0),
        (0, 0, 0x10),
        (0, 1, 3),
        (0, 1, 1 << 5),
        (!0xfff, 2, 0),
    ] {
        assert_eq!(
            e.handle_hypercall(&mut g, map(gpa, pages, attrs), None),
            -22,
            "{gpa:#x} {pages} {attrs:#x}"
        );
    }
    // Valid but refused: beyond memory to private.
    assert_eq!(e.handle_hypercall(&mut g, map(8 << 20, 1, 0x10), None), -22);
    assert_eq!(
        e.handle_hypercall(
            &mut g,
            HypercallExit {
                nr: 11,
                args: [1; 6]
            },
            None
        ),
        -1000
    );
    assert_eq!(e.vm().attributes(), e.attr_map());
}

/// A fake VM with `KVM_CAP_PRE_FAULT_MEMORY`: the whole contract in a few
/// lines (attributes in a map, discards counted).
#[derive(Default)]
struct Fake {
    attrs: Mutex<AttrMap>,
}

struct Mem(u64);
impl Backing for Mem {
    fn size(&self) -> u64 {
        self.0
    }
}

impl ConversionBackend for Fake {
    type Gmem = Mem;
    type Shared = Mem;
    fn support(&self) -> VmSupport {
        VmSupport {
            vm_type: VmType::SwProtected,
            pre_fault_memory: true,
        }
    }
    fn set_attributes(&self, range: GpaRange, attrs: Attrs) -> Result<(), BackendError> {
        self.attrs.lock().unwrap().set(range, attrs.is_private());
        Ok(())
    }
    fn punch_gmem(&self, _: &Mem, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn discard_shared(&self, _: &Mem, _: u64, _: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn set_memslot(&self, _: &SlotDesc<Mem, Mem>) -> Result<(), BackendError> {
        Ok(())
    }
    fn delete_memslot(&self, _: SlotId) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A vCPU whose `KVM_PRE_FAULT_MEMORY` maps `step` bytes per call and
/// fails at `fail_at` (the kernel's way: range advanced, error).
struct Vcpu {
    calls: Vec<(u64, u64)>,
    step: u64,
    fail_at: Option<u64>,
}

impl PreFault for Vcpu {
    fn pre_fault(&mut self, gpa: &mut Gpa, size: &mut u64) -> Result<(), BackendError> {
        self.calls.push((gpa.raw(), *size));
        if Some(gpa.raw()) == self.fail_at {
            return Err(BackendError::os("KVM_PRE_FAULT_MEMORY", Errno(2)));
        }
        let n = self.step.min(*size);
        *gpa = Gpa(gpa.raw() + n);
        *size -= n;
        Ok(())
    }
}

fn fake(prefault: PrefaultPolicy) -> Engine<Fake> {
    let e = Engine::new(
        Fake::default(),
        EngineConfig {
            prefault,
            ..EngineConfig::default()
        },
    );
    let slot = SlotDesc {
        id: SlotId(0),
        range: GpaRange::new(Gpa(0), 1 << 20).unwrap(),
        gmem: Some(privmem_core::slot::GmemBinding {
            file: Mem(1 << 20),
            offset: 0,
        }),
        shared: Some(SharedBinding {
            mem: Mem(1 << 20),
            offset: 0,
        }),
    };
    e.add_slot(slot).unwrap();
    e
}

fn vcpu(step: u64, fail_at: Option<u64>) -> Vcpu {
    Vcpu {
        calls: Vec::new(),
        step,
        fail_at,
    }
}

#[test]
fn prefault_follows_qemu_loop_and_ignores_errors() {
    let e = fake(PrefaultPolicy::ToPrivate);
    let mut g = e.repeat_guard();
    // Until the range is done, one call per step.
    let mut v = vcpu(0x2000, None);
    assert_eq!(
        e.handle_hypercall(&mut g, map(0x10000, 5, 0x10), Some(&mut v)),
        0
    );
    assert_eq!(
        v.calls,
        [(0x10000, 0x5000), (0x12000, 0x3000), (0x14000, 0x1000)]
    );
    // To shared: not with ToPrivate.
    let mut v = vcpu(0x1000, None);
    assert_eq!(
        e.handle_hypercall(&mut g, map(0x10000, 5, 0), Some(&mut v)),
        0
    );
    assert!(v.calls.is_empty());
    // An error stops the loop and is not the guest's problem.
    let mut v = vcpu(0x1000, Some(0x11000));
    assert_eq!(
        e.handle_hypercall(&mut g, map(0x10000, 5, 0x10), Some(&mut v)),
        0
    );
    assert_eq!(v.calls, [(0x10000, 0x5000), (0x11000, 0x4000)]);
    assert_eq!(e.stats().prefault_errors, 1);
    // No progress without an error also ends it (never a busy loop).
    let mut v = vcpu(0, None);
    assert_eq!(
        e.handle_hypercall(&mut g, map(0x40000, 5, 0x10), Some(&mut v)),
        0
    );
    assert_eq!(v.calls.len(), 1);
    // A refused conversion is not pre-faulted.
    let mut v = vcpu(0x1000, None);
    assert_eq!(
        e.handle_hypercall(&mut g, map(4 << 20, 1, 0x10), Some(&mut v)),
        -22
    );
    assert!(v.calls.is_empty());
}

#[test]
fn prefault_policy_every_and_off() {
    let e = fake(PrefaultPolicy::Every);
    let mut v = vcpu(0x1000, None);
    assert_eq!(
        e.handle_hypercall(&mut e.repeat_guard(), map(0, 1, 0x10), Some(&mut v)),
        0
    );
    assert_eq!(
        e.handle_hypercall(&mut e.repeat_guard(), map(0, 1, 0), Some(&mut v)),
        0
    );
    assert_eq!(v.calls.len(), 2);
    let e = fake(PrefaultPolicy::Off);
    let mut v = vcpu(0x1000, None);
    assert_eq!(
        e.handle_hypercall(&mut e.repeat_guard(), map(0, 1, 0x10), Some(&mut v)),
        0
    );
    assert!(v.calls.is_empty());
}

#[test]
fn prefault_on_the_models_vcpu_maps_the_converted_range() {
    use privmem_core::backend::Vm;
    let config = EngineConfig {
        prefault: PrefaultPolicy::ToPrivate,
        ..EngineConfig::default()
    };
    let (_hv, e) = model(VmType::SwProtected, config);
    assert!(
        e.support().pre_fault_memory,
        "the model with TDP has the cap"
    );
    add_slot(&e, 0, 0, 1 << 20);
    let mut v = e.vm().create_vcpu(0).expect("vcpu");
    let mut g = e.repeat_guard();
    assert_eq!(
        e.handle_hypercall(&mut g, map(0x10000, 4, 0x10), Some(&mut v)),
        0
    );
    // The model maps the whole range in one call (Vcpu::pre_fault_memory
    // through the blanket PreFault), and nothing failed.
    assert_eq!(e.stats().prefault_calls, 1);
    assert_eq!(e.stats().prefault_errors, 0);
    assert!(e.attr_map().is_private(Gpa(0x13000)));
}
