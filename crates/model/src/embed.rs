//! The model as a ready [`ConversionBackend`](privmem_core::contract::ConversionBackend)
//! for an embedding VMM's tests: the conversion engine over a model VM,
//! with no KVM at all, and slot descriptions backed by model guest_memfds
//! and shared memfds. Failures can be injected
//! ([`ModelHypervisor::inject_failure`]) and the kernel's view read back
//! ([`ModelVm::attributes`]).

use std::sync::Arc;

use privmem_core::backend::{Hypervisor, SharedKind, Vm};
use privmem_core::contract::HvBackend;
use privmem_core::engine::{Engine, EngineConfig};
use privmem_core::exit::EXIT_HYPERCALL_MAP_GPA_RANGE;
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc};
use privmem_core::{BackendError, GmemFlags, GpaRange, GuestMemfd, SlotId, VmType};

use crate::{ModelHypervisor, ModelShared, ModelVm};

/// The engine's contract over the model.
pub type ModelBackend = HvBackend<ModelHypervisor>;
/// A conversion engine over a model VM.
pub type ModelEngine = Engine<ModelBackend>;
/// A slot description on the model: a model guest_memfd and a shared memfd.
pub type ModelSlot = SlotDesc<GuestMemfd, ModelShared>;

/// A model VM of type `ty` on `hv` (with `MAP_GPA_RANGE` forwarded to
/// userspace where the type allows) and an engine over it, with no slots.
pub fn engine(
    hv: &Arc<ModelHypervisor>,
    ty: VmType,
    config: EngineConfig,
) -> Result<ModelEngine, BackendError> {
    let vm = Arc::new(hv.create_vm(ty)?);
    // A default VM cannot forward it: its guest then sees -KVM_ENOSYS.
    let _ = vm.enable_exit_hypercall(EXIT_HYPERCALL_MAP_GPA_RANGE);
    Ok(Engine::new(HvBackend::new(hv.clone(), vm), config))
}

/// The description of slot `id` over `range` on `vm`: a new guest_memfd of
/// the slot's size (for VMs with private memory) and a new shared memfd.
pub fn slot(vm: &ModelVm, id: u16, range: GpaRange) -> Result<ModelSlot, BackendError> {
    let gmem = vm
        .vm_type()
        .has_private_mem()
        .then(|| vm.create_guest_memfd(range.len(), GmemFlags(0)))
        .transpose()?
        .map(|file| GmemBinding { file, offset: 0 });
    let mem = vm.create_shared(range.len(), SharedKind::Memfd)?;
    Ok(SlotDesc {
        id: SlotId(id),
        range,
        gmem,
        shared: Some(SharedBinding { mem, offset: 0 }),
    })
}
