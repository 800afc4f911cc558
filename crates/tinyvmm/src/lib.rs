//! The example VMM as a library: a tiny VMM that adopts privmem for its
//! private memory, and the same VMM with a hand-written minimal handler, so
//! the cost of adopting privmem can be measured on one VM (`privmem bench
//! embed`, `kvm/*`).
//!
//! It owns everything a VMM owns ([`TinyVmm`]): its `VmFd` (a
//! `KVM_X86_SW_PROTECTED_VM`), its guest memory (a memfd through
//! vm-memory), its guest_memfd, its vCPU ([`TinyVcpu`]) and its exit loop
//! ([`TinyVcpu::run`]). privmem comes in only through the public API: the
//! engine's contract over the `VmFd` (`VmFdBackend`), one slot description,
//! and the two per-exit calls ([`PrivmemHandler`]). [`MinimalHandler`]
//! answers the same exits as QEMU's `kvm_convert_memory` does, with
//! `KVM_SET_MEMORY_ATTRIBUTES` and `fallocate(PUNCH_HOLE)` only. The guests
//! ([`guest`]) are real-mode code that converts with real `vmmcall` exits
//! (`KVM_HC_MAP_GPA_RANGE`).
//!
//! `examples/vmm.rs` is the example (`rig/run --example vmm` runs it on
//! real KVM inside the rig).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
pub mod guest;
mod handler;
mod vmm;

use kvm_bindings::{
    KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_VM_TYPES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use kvm_ioctls::Kvm;

pub use error::VmmError;
pub use handler::{Conversions, MinimalHandler, PrivmemHandler, Verdict};
pub use vmm::{Ended, Flow, TinyVcpu, TinyVmm, VmmConfig};

/// Where the guest code is loaded.
pub const CODE: u64 = 0x1000;
/// `KVM_X86_SW_PROTECTED_VM`.
pub const SW_PROTECTED_VM: u64 = 1;

/// What this host lacks for the tiny VMM, if anything: the sw-protected VM
/// type, guest_memfd, private memory attributes, hypercall exits.
pub fn missing(kvm: &Kvm) -> Option<String> {
    let types = kvm.check_extension_raw(KVM_CAP_VM_TYPES.into());
    if types < 0 || types as u64 & (1 << SW_PROTECTED_VM) == 0 {
        return Some(format!(
            "no KVM_X86_SW_PROTECTED_VM (KVM_CAP_VM_TYPES={types:#x}); the rig has it: rig/run"
        ));
    }
    if kvm.check_extension_raw(KVM_CAP_GUEST_MEMFD.into()) <= 0 {
        return Some("no guest_memfd (KVM_CAP_GUEST_MEMFD=0)".into());
    }
    let attrs = kvm.check_extension_raw(KVM_CAP_MEMORY_ATTRIBUTES.into());
    if attrs < 0 || attrs as u64 & u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE) == 0 {
        return Some(format!(
            "no private memory attributes (KVM_CAP_MEMORY_ATTRIBUTES={attrs:#x})"
        ));
    }
    if kvm.check_extension_raw(KVM_CAP_EXIT_HYPERCALL.into()) <= 0 {
        return Some("no KVM_CAP_EXIT_HYPERCALL".into());
    }
    None
}
