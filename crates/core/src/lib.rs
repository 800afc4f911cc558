//! privmem core: the library a VMM adopts for KVM guest private memory.
//!
//! # Use privmem in your VMM
//!
//! 1. Implement the narrow contract [`ConversionBackend`]
//!    over your VM (set attributes, punch guest_memfd, discard shared
//!    memory, create and delete memslots, what the VM supports), or take a
//!    ready one: `privmem_kvm::vmm::VmFdBackend` over a `kvm_ioctls::VmFd`,
//!    `privmem_model::embed::ModelBackend` over the model (a test double).
//! 2. Build one [`Engine`] per VM with an
//!    [`EngineConfig`] (discard, fault policy,
//!    prefault, GPA limit).
//! 3. Describe each memslot once as a [`SlotDesc`] and
//!    [`add_slot`](engine::Engine::add_slot) it: the engine validates it
//!    against its backings and creates the kernel memslot from the same
//!    description. Slots can be added and removed while vCPUs run.
//! 4. Register [`ConversionListener`]s for
//!    devices that DMA into guest memory.
//! 5. In each vCPU's exit loop, keep a [`RepeatGuard`]
//!    ([`Engine::repeat_guard`](engine::Engine::repeat_guard)) and call
//!    [`Engine::handle_hypercall`](engine::Engine::handle_hypercall) on
//!    `KVM_EXIT_HYPERCALL` (its answer goes to `hypercall.ret`) and
//!    [`Engine::handle_memory_fault`](engine::Engine::handle_memory_fault)
//!    on `KVM_EXIT_MEMORY_FAULT` with `KVM_RUN`'s errno (its answer is a
//!    [`VcpuAction`]: resume, stop and why, or a
//!    poisoned page).
//!
//! A memory-fault exit handled on the model, with no KVM:
//!
//! ```
//! use std::sync::Arc;
//! use privmem_core::engine::{EngineConfig, MemoryFaultExit, StopReason, VcpuAction};
//! use privmem_core::{Gpa, GpaRange, VmType};
//! use privmem_model::{embed, KernelProfile, ModelHypervisor};
//!
//! let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
//! let engine = embed::engine(&hv, VmType::SwProtected, EngineConfig::default())?;
//! let slot = embed::slot(engine.vm(), 0, GpaRange::new(Gpa(0), 1 << 20)?)?;
//! engine.add_slot(slot)?;
//!
//! // The guest touched 0x5000 as private: KVM_RUN returned -1/EFAULT with
//! // exit_reason KVM_EXIT_MEMORY_FAULT and these fields.
//! let mut guard = engine.repeat_guard();
//! let exit = MemoryFaultExit { flags: 1 << 3, gpa: 0x5000, size: 4096 };
//! assert_eq!(engine.handle_memory_fault(&mut guard, exit, 14), VcpuAction::Resume);
//! assert!(engine.attr_map().is_private(Gpa(0x5000)));
//! assert!(engine.vm().is_private(Gpa(0x5000))); // the model kernel's view
//!
//! // EHWPOISON is never converted, and a failed KVM_RUN with any other
//! // errno is not a memory fault at all (its fields are stale).
//! let poisoned = engine.handle_memory_fault(&mut guard, exit, 133);
//! assert!(matches!(poisoned, VcpuAction::Poisoned { gpa: Gpa(0x5000), .. }));
//! assert!(matches!(
//!     engine.handle_memory_fault(&mut guard, exit, 4),
//!     VcpuAction::Stop(StopReason::NotAMemoryFault { errno: 4 })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Modules
//!
//! - [`contract`]: the engine's narrow backend contract, and [`HvBackend`]
//!   over the full traits;
//! - [`engine`]: conversions as transactions (attributes, discard,
//!   rollback), slots, listeners and the per-exit calls;
//! - [`slot`]: memslots described once;
//! - [`listener`]: conversion listeners and the order they are told in;
//! - [`decide`]: the pure per-exit decisions and the per-vCPU repeat guard;
//! - [`types`]: guest-physical addresses, ranges and the [`GpaLimit`], with
//!   checked arithmetic only; VM types, guest_memfd handles and flags;
//! - [`exit`] and [`abi`]: exits decoded strictly from `kvm_run`;
//! - [`attrmap`]: the per-page private/shared attribute map;
//! - [`backend`]: the full hypervisor traits privmem's own harness, its KVM
//!   backend and the model implement (a VMM does not need them);
//! - [`rangelock`], [`error`]: range locks and backend errors.
//!
//! The workload format, the report and the multi-vCPU runner privmem's own
//! CLI uses live in `privmem-runner`. No unsafe code, no serialization.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
pub mod attrmap;
pub mod backend;
pub mod contract;
pub mod counter;
pub mod decide;
pub mod emulation;
pub mod engine;
pub mod error;
pub mod exit;
pub mod listener;
pub mod memops;
pub mod rangelock;
pub mod slot;
pub mod trace;
pub mod types;

pub use backend::{
    Access, Cap, Emulations, FileIo, FileStat, GmemRef, GuestOp, HostFault, HostMemory, HostSignal,
    Hypervisor, Kick, Quirks, Region, RegionApi, RunError, SharedKind, SharedMemory, UserAddr,
    Vcpu, Vm,
};
pub use contract::{Backing, ConversionBackend, HvBackend, PreFault, VmSupport};
pub use decide::{
    decide_fault, decide_hypercall, DiscardPolicy, FaultAction, FaultPolicy, FaultStop,
    HypercallAction, ImplicitPolicy, RepeatGuard,
};
pub use emulation::{Emulation, EmulationCounts, EmulationLog};
pub use engine::{
    ConvertTo, Engine, EngineConfig, HypercallExit, MemoryFaultExit, PrefaultPolicy, StopReason,
    VcpuAction,
};
pub use error::{BackendError, Errno};
pub use exit::{
    Exit, FaultErrno, GuestReport, Hypercall, IoExit, MapGpaRange, MemoryFault, MmioExit,
};
pub use listener::{Conversion, ConversionListener, Refusal};
pub use memops::{Advice, MemPolicy, MmapOptions, MmapProt, MmapSharing, PreFaultRange};
pub use slot::{GmemBinding, SharedBinding, SlotDesc, SlotError};
pub use types::{
    Attrs, GmemFlags, Gpa, GpaLimit, GpaRange, GuestMemfd, PageCount, SlotId, VmType, PAGE_SIZE,
};
