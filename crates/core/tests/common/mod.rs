//! Shared setup for privmem-core's integration tests: the engine over the
//! model (`privmem_model::embed`), and a vCPU loop that uses only the
//! engine's public per-exit calls, as an embedding VMM's would.
#![allow(dead_code)]

use std::sync::Arc;

use privmem_core::backend::{GuestOp, HostMemory, Vcpu, Vm};
use privmem_core::engine::{EngineConfig, HypercallExit, VcpuAction};
use privmem_core::exit::{Exit, Hypercall};
use privmem_core::{Gpa, GpaRange, VmType};
use privmem_model::embed::{self, ModelEngine};
use privmem_model::{KernelProfile, ModelHypervisor};

/// A 6.12 model hypervisor and an engine over a new VM of type `ty`. 6.12,
/// not 7.3: clearing attributes can fail there (`xa_reserve` on every
/// `KVM_SET_MEMORY_ATTRIBUTES`), so injected failures reach the to-shared
/// rollback paths; 7.3 reserves only when setting.
pub fn model(ty: VmType, config: EngineConfig) -> (Arc<ModelHypervisor>, ModelEngine) {
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V6_12));
    let e = embed::engine(&hv, ty, config).expect("model engine");
    (hv, e)
}

/// `[gpa, gpa + len)`.
pub fn range(gpa: u64, len: u64) -> GpaRange {
    GpaRange::new(Gpa(gpa), len).expect("range")
}

/// Adds slot `id` over `[gpa, gpa + len)` (guest_memfd + shared memfd).
pub fn add_slot(e: &ModelEngine, id: u16, gpa: u64, len: u64) {
    let desc = embed::slot(e.vm(), id, range(gpa, len)).expect("slot description");
    e.add_slot(desc).expect("add slot");
}

/// The host's view of slot `id`'s shared backing at `off`.
pub fn shared_bytes(e: &ModelEngine, id: u16, off: u64, len: usize) -> Vec<u8> {
    let slots = e.slots();
    let s = slots.iter().find(|s| s.id.0 == id).expect("slot");
    let mut buf = vec![0xeeu8; len];
    let shared = &s.shared.as_ref().expect("shared").mem;
    shared.read(off, &mut buf).expect("host read");
    buf
}

/// Writes `byte` over slot `id`'s shared backing at `off` (the host).
pub fn fill_shared(e: &ModelEngine, id: u16, off: u64, len: u64, byte: u8) {
    let slots = e.slots();
    let s = slots.iter().find(|s| s.id.0 == id).expect("slot");
    let shared = &s.shared.as_ref().expect("shared").mem;
    shared.fill(off, len, byte).expect("host fill");
}

/// The kernel's view of slot `id`'s guest_memfd at `off`.
pub fn gmem_bytes(hv: &ModelHypervisor, e: &ModelEngine, id: u16, off: u64, len: usize) -> Vec<u8> {
    let slots = e.slots();
    let s = slots.iter().find(|s| s.id.0 == id).expect("slot");
    let mut buf = vec![0xeeu8; len];
    hv.gmem_read(&s.gmem.as_ref().expect("gmem").file, off, &mut buf)
        .expect("gmem read");
    buf
}

/// What a guest program ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `hlt`.
    Halted,
    /// The engine said stop (or poisoned).
    Stopped(VcpuAction),
    /// Some other exit this loop does not serve.
    Other(String),
}

/// Runs `ops` (then `hlt`) on a new model vCPU `index`, answering memory
/// faults and hypercalls only through the engine's public per-exit calls.
/// Returns how it ended and the `MAP_GPA_RANGE` return values seen.
pub fn guest(e: &ModelEngine, index: u32, ops: &[GuestOp]) -> (End, Vec<i64>) {
    let mut vcpu = e.vm().create_vcpu(index).expect("vcpu");
    let mut prog = ops.to_vec();
    prog.push(GuestOp::Halt);
    vcpu.load_program(&prog).expect("load");
    let mut guard = e.repeat_guard();
    let mut rets = Vec::new();
    loop {
        let exit = vcpu.run().expect("run");
        match exit {
            Exit::MemoryFault(f) => match e.handle_fault(&mut guard, &f) {
                VcpuAction::Resume => {}
                other => return (End::Stopped(other), rets),
            },
            Exit::Hypercall(h) => {
                let (nr, args) = raw(&h);
                let ret = e.handle_hypercall(&mut guard, HypercallExit { nr, args }, None);
                rets.push(ret);
                vcpu.complete_hypercall(ret).expect("complete");
            }
            Exit::Hlt => return (End::Halted, rets),
            Exit::Report(_) | Exit::Io(_) => guard.reset(),
            other => return (End::Other(format!("{other:?}")), rets),
        }
    }
}

/// The raw `nr`/`args` of a decoded hypercall (what `kvm_run` held).
pub fn raw(h: &Hypercall) -> (u64, [u64; 6]) {
    match *h {
        Hypercall::MapGpaRange(m) => (12, [m.gpa.raw(), m.pages, m.attrs(), 0, 0, 0]),
        Hypercall::InvalidMapGpaRange { args, .. } => (12, [args[0], args[1], args[2], 0, 0, 0]),
        Hypercall::Other { nr, args } => (nr, args),
    }
}

/// A guest `map` op.
pub fn map(gpa: u64, pages: u64, private: bool) -> GuestOp {
    GuestOp::Map {
        gpa,
        pages,
        attrs: if private { 0x10 } else { 0 },
        expect_ret: None,
    }
}
