//! [`BaselineError`]: what failed in a baseline, one variant per call.

use privmem_mem::MapError;

/// A failed baseline step.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// `open("/dev/kvm")` failed.
    #[error("opening /dev/kvm failed: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` failed.
    #[error("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL) failed: {0}")]
    EnableCap(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_GUEST_MEMFD` failed.
    #[error("KVM_CREATE_GUEST_MEMFD of {size:#x} bytes failed: {source}")]
    CreateGuestMemfd {
        /// The requested size.
        size: u64,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_USER_MEMORY_REGION2` failed.
    #[error("KVM_SET_USER_MEMORY_REGION2 of {size:#x} bytes failed: {source}")]
    SetUserMemoryRegion2 {
        /// The slot's size.
        size: u64,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// `KVM_RUN` failed (other than `EINTR`, which is retried).
    #[error("KVM_RUN failed after {io} I/O exits: {source}")]
    Run {
        /// I/O exits counted before the failure.
        io: u64,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// `KVM_RUN` returned an exit other than `KVM_EXIT_IO` or `KVM_EXIT_HLT`.
    #[error("KVM_RUN: unexpected exit reason {reason} after {io} I/O exits")]
    UnexpectedExit {
        /// The `exit_reason`.
        reason: u32,
        /// I/O exits counted before it.
        io: u64,
    },
    /// The guest did not halt within the allowed number of exits.
    #[error("KVM_RUN: more than {max} exits without a halt")]
    TooManyExits {
        /// The limit.
        max: u64,
    },
    /// A `pwrite` to a memfd failed.
    #[error("pwrite at {offset:#x} failed: {source}")]
    Write {
        /// The file offset.
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// Creating, punching or mapping memory failed.
    #[error(transparent)]
    Mem(#[from] MapError),
}
