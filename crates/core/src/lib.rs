//! privmem core: the library a VMM adopts for KVM guest private memory.
//!
//! - [`types`]: guest-physical addresses, ranges and the [`GpaLimit`], with
//!   checked arithmetic only; VM types, guest_memfd handles and flags;
//! - [`exit`] and [`abi`]: exits decoded strictly from `kvm_run`
//!   (`KVM_EXIT_MEMORY_FAULT`, `KVM_EXIT_HYPERCALL` with `MAP_GPA_RANGE`, ...);
//! - [`decide`]: the pure per-exit decisions (convert, complete, stop and
//!   why) and the per-vCPU [`RepeatGuard`](decide::RepeatGuard);
//! - [`attrmap`]: the per-page private/shared attribute map;
//! - [`engine`]: conversions as transactions (attributes, discard, rollback);
//! - [`backend`]: the hypervisor traits both backends (real KVM, the model)
//!   implement.
//!
//! The workload format, the report and the multi-vCPU runner privmem's own
//! CLI uses live in `privmem-runner`. No unsafe code, no serialization.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
pub mod attrmap;
pub mod backend;
pub mod decide;
pub mod emulation;
pub mod engine;
pub mod error;
pub mod exit;
pub mod memops;
pub mod rangelock;
pub mod trace;
pub mod types;

pub use backend::{
    Access, Cap, Emulations, FileIo, FileStat, GmemRef, GuestOp, HostFault, HostMemory, HostSignal,
    Hypervisor, Kick, Quirks, Region, RegionApi, RunError, SharedKind, SharedMemory, UserAddr,
    Vcpu, Vm,
};
pub use decide::{
    decide_fault, decide_hypercall, DiscardPolicy, FaultAction, FaultPolicy, FaultStop,
    HypercallAction, ImplicitPolicy, RepeatGuard,
};
pub use emulation::{Emulation, EmulationCounts, EmulationLog};
pub use error::{BackendError, Errno};
pub use exit::{
    Exit, FaultErrno, GuestReport, Hypercall, IoExit, MapGpaRange, MemoryFault, MmioExit,
};
pub use memops::{Advice, MemPolicy, MmapOptions, MmapProt, MmapSharing, PreFaultRange};
pub use types::{
    Attrs, GmemFlags, Gpa, GpaLimit, GpaRange, GuestMemfd, PageCount, SlotId, VmType, PAGE_SIZE,
};
