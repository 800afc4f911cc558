//! [`VmmError`]: what failed in the tiny VMM, one variant per failing call.

use privmem_core::slot::SlotError;
use privmem_core::types::RangeError;
use privmem_core::BackendError;
use privmem_mem::MapError;

/// A failed step of the tiny VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)` failed.
    #[error("KVM_CREATE_VM(sw-protected) failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` failed.
    #[error("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL) failed: {0}")]
    EnableCap(#[source] kvm_ioctls::Error),
    /// The memory size is zero, not page-aligned or too large.
    #[error("guest memory of {0:#x} bytes is not a nonzero multiple of 4 KiB")]
    Size(u64),
    /// Creating the memfd failed.
    #[error("guest memory: {0}")]
    Memfd(#[from] MapError),
    /// Mapping the memfd failed.
    #[error("mapping guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
    /// vm-memory refused the region.
    #[error("vm-memory refused the guest memory region")]
    Region,
    /// The guest_memfd was closed (`Engine::close_gmem`).
    #[error("the guest_memfd was closed")]
    GmemClosed,
    /// `dup` of a file failed.
    #[error("dup failed: {0}")]
    Dup(#[source] std::io::Error),
    /// A range was invalid.
    #[error("slot range: {0}")]
    Range(#[from] RangeError),
    /// A privmem backend call failed (guest_memfd creation, pre-fault fd).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// privmem refused the slot.
    #[error("adding the slot: {0}")]
    Slot(#[from] SlotError),
    /// Writing the guest code failed.
    #[error("writing guest code: {0}")]
    Code(#[from] vm_memory::GuestMemoryError),
    /// `KVM_CREATE_VCPU` failed.
    #[error("KVM_CREATE_VCPU failed: {0}")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    /// `KVM_GET/SET_SREGS` or `KVM_SET_REGS` failed.
    #[error("setting vCPU registers failed: {0}")]
    Regs(#[source] kvm_ioctls::Error),
    /// `KVM_RUN` failed (other than `EINTR`/`EAGAIN`).
    #[error("KVM_RUN failed: {0}")]
    Run(#[source] kvm_ioctls::Error),
    /// The guest touched a poisoned page.
    #[error("{0}")]
    Poisoned(String),
    /// The device model reported an error.
    #[error("device: {0}")]
    Device(String),
    /// An exit the tiny VMM does not handle.
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
}
