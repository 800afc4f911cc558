//! Who answers the conversion exits of the exit loop ([`Conversions`]):
//! privmem's per-exit calls ([`PrivmemHandler`]) or a hand-written minimal
//! handler ([`MinimalHandler`]).

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::{kvm_memory_attributes, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use kvm_ioctls::VmFd;
use privmem_core::abi::EFAULT;
use privmem_core::contract::{ConversionBackend, PreFault};
use privmem_core::decide::RepeatGuard;
use privmem_core::engine::{Engine, HypercallExit, MemoryFaultExit, VcpuAction};
use privmem_core::exit::{
    hc_ret, KVM_HC_MAP_GPA_RANGE, MAP_GPA_RANGE_ENCRYPTED, MEMORY_EXIT_FLAG_PRIVATE,
};
use privmem_core::PAGE_SIZE;
use privmem_kvm::vmm::{VcpuPreFault, VmFdBackend};
use rustix::fs::{fallocate, FallocateFlags};

/// What the exit loop does after a memory-fault exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Re-enter the guest.
    Resume,
    /// Stop the vCPU, and why.
    Stop(String),
    /// The guest touched a hardware-poisoned page.
    Poisoned(String),
}

/// The engine's answer to a memory-fault exit, as the exit loop acts on it.
impl From<VcpuAction> for Verdict {
    fn from(action: VcpuAction) -> Verdict {
        match action {
            VcpuAction::Resume => Verdict::Resume,
            VcpuAction::Stop(why) => Verdict::Stop(why.to_string()),
            VcpuAction::Poisoned { gpa, .. } => {
                Verdict::Poisoned(format!("poisoned page at {gpa}"))
            }
        }
    }
}

/// The conversion exits of a vCPU, answered by one handler per vCPU.
pub trait Conversions {
    /// `KVM_EXIT_HYPERCALL`: the value for `hypercall.ret`.
    fn hypercall(&mut self, exit: HypercallExit) -> i64;
    /// `KVM_EXIT_MEMORY_FAULT` with its `KVM_RUN` errno.
    fn memory_fault(&mut self, exit: MemoryFaultExit, errno: i32) -> Verdict;
    /// Any other exit (the loop saw the guest make progress).
    fn other_exit(&mut self) {}
}

/// privmem's per-exit calls: `Engine::handle_hypercall` (pre-faulting on
/// this vCPU per the engine's configuration, when it has the vCPU's
/// pre-fault handle) and `Engine::handle_memory_fault`, with the vCPU's
/// repeat guard. Generic over the engine's backend: the VMM's is
/// [`VmFdBackend`]; a benchmark may put the same calls over another.
#[derive(Debug)]
pub struct PrivmemHandler<B: ConversionBackend = VmFdBackend> {
    engine: Arc<Engine<B>>,
    guard: RepeatGuard,
    prefault: Option<VcpuPreFault>,
}

impl<B: ConversionBackend> PrivmemHandler<B> {
    /// For one vCPU (`prefault` is that vCPU's; `None`: never pre-fault).
    pub fn new(engine: Arc<Engine<B>>, prefault: Option<VcpuPreFault>) -> PrivmemHandler<B> {
        let guard = engine.repeat_guard();
        PrivmemHandler {
            engine,
            guard,
            prefault,
        }
    }
}

impl<B: ConversionBackend> Conversions for PrivmemHandler<B> {
    fn hypercall(&mut self, exit: HypercallExit) -> i64 {
        let prefault = self.prefault.as_mut().map(|p| p as &mut dyn PreFault);
        self.engine
            .handle_hypercall(&mut self.guard, exit, prefault)
    }

    fn memory_fault(&mut self, exit: MemoryFaultExit, errno: i32) -> Verdict {
        self.engine
            .handle_memory_fault(&mut self.guard, exit, errno)
            .into()
    }

    fn other_exit(&mut self) {
        self.guard.reset();
    }
}

/// What a VMM writes by hand without privmem, as QEMU's `kvm_convert_memory`
/// does: `KVM_SET_MEMORY_ATTRIBUTES` over the range, then
/// `fallocate(PUNCH_HOLE|KEEP_SIZE)` of the side given up (the shared
/// memfd when going private, the guest_memfd when going shared). No
/// attribute map, no locks, no repeat guard, no listeners, no pre-fault;
/// the only checks are KVM's. One slot, at GPA 0, whose file offsets are
/// its GPAs.
#[derive(Debug)]
pub struct MinimalHandler {
    vm: Arc<VmFd>,
    gmem: File,
    shared: File,
}

impl MinimalHandler {
    /// Over `vm`, whose one slot at GPA 0 is backed by `gmem` (private) and
    /// `shared` (a memfd).
    pub fn new(vm: Arc<VmFd>, gmem: File, shared: File) -> MinimalHandler {
        MinimalHandler { vm, gmem, shared }
    }

    /// Converts `[gpa, gpa+len)`; the errno of the call that failed.
    fn convert(&self, gpa: u64, len: u64, private: bool) -> Result<(), i32> {
        let attrs = kvm_memory_attributes {
            address: gpa,
            size: len,
            attributes: if private {
                u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE)
            } else {
                0
            },
            flags: 0,
        };
        self.vm
            .set_memory_attributes(attrs)
            .map_err(|e| e.errno())?;
        let file = if private { &self.shared } else { &self.gmem };
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        fallocate(file, mode, gpa, len).map_err(|e| e.raw_os_error())
    }
}

impl Conversions for MinimalHandler {
    fn hypercall(&mut self, exit: HypercallExit) -> i64 {
        if exit.nr != KVM_HC_MAP_GPA_RANGE {
            return hc_ret::ENOSYS;
        }
        let [gpa, pages, attrs, ..] = exit.args;
        let private = attrs & MAP_GPA_RANGE_ENCRYPTED != 0;
        match self.convert(gpa, pages.saturating_mul(PAGE_SIZE), private) {
            Ok(()) => hc_ret::OK,
            Err(_) => hc_ret::EINVAL,
        }
    }

    fn memory_fault(&mut self, exit: MemoryFaultExit, errno: i32) -> Verdict {
        if errno != EFAULT {
            return Verdict::Stop(format!("KVM_RUN failed with errno {errno}"));
        }
        let private = exit.flags & MEMORY_EXIT_FLAG_PRIVATE != 0;
        let base = exit.gpa & !(PAGE_SIZE - 1);
        match self.convert(base, exit.size.max(PAGE_SIZE), private) {
            Ok(()) => Verdict::Resume,
            Err(e) => Verdict::Stop(format!("converting {base:#x} failed: errno {e}")),
        }
    }
}
