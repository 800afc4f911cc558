//! privmem core: types, the hypervisor traits, exit decoding, the attribute
//! map, the conversion engine and the runtime. No unsafe code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
pub mod attrmap;
pub mod backend;
pub mod engine;
pub mod error;
pub mod exit;
pub mod handle;
pub mod rangelock;
pub mod report;
pub mod runtime;
pub mod trace;
pub mod types;
pub mod workload;

pub use backend::{
    Access, Cap, FileIo, FileStat, GmemRef, GuestOp, HostFault, HostMemory, Hypervisor, Kick,
    Quirks, Region, RegionApi, RunError, SharedKind, SharedMemory, UserAddr, Vcpu, Vm,
};
pub use error::{BackendError, Errno};
pub use exit::{
    Exit, FaultErrno, GuestReport, Hypercall, IoExit, MapGpaRange, MemoryFault, MmioExit,
};
pub use types::{
    Attrs, GmemFlags, Gpa, GpaRange, GuestMemfd, PageCount, SlotId, VmType, PAGE_SIZE,
};
