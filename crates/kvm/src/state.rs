//! [`VmState`]: what a KVM VM and its vCPUs share (the VM fd, host
//! settings, the memslot table, the private-page mirror, the emulation
//! record). The bottom module: `vm`, `vcpu` and `runtime_area` take it by
//! reference and it imports none of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::{kvm_userspace_memory_region, kvm_userspace_memory_region2, CpuId};
use kvm_ioctls::VmFd;
use privmem_core::attrmap::AttrMap;
use privmem_core::{BackendError, Emulations, RegionApi};

use crate::guest::Transport;
use crate::mem::{KvmMapping, KvmShared};
use crate::sys::{fd_of, kvm_err};

/// A live memslot and what keeps its host memory valid.
#[derive(Debug)]
pub(crate) struct SlotEntry {
    pub(crate) gpa: u64,
    pub(crate) size: u64,
    /// The shared backing behind `userspace_addr`, held until deletion.
    pub(crate) _backing: Option<KvmShared>,
    /// The gmem mapping that stands in for `userspace_addr` (the opt-in
    /// `gmem_hva` emulation).
    pub(crate) _gmem_map: Option<KvmMapping>,
    /// A runtime area (privmem's own slot), not the caller's.
    pub(crate) runtime: bool,
    /// The slot's guest_memfd, when bound through a [`privmem_core::GuestMemfd`]
    /// (for [`privmem_core::Vm::poison_page`]).
    pub(crate) gmem: Option<crate::poison::SlotGmem>,
}

/// What a VM inherits from its hypervisor's options.
#[derive(Debug, Clone)]
pub(crate) struct VmConfig {
    /// Hypercall transport for guest code.
    pub(crate) transport: Transport,
    /// The opt-in `gmem_hva` emulation ([`privmem_core::Quirks::gmem_hva`]).
    pub(crate) gmem_hva: bool,
    /// The host's quirks, as the hypervisor was opened with.
    pub(crate) quirks: privmem_core::Quirks,
    /// `KVM_GET_SUPPORTED_CPUID`, set on every vCPU.
    pub(crate) cpuid: Option<Arc<CpuId>>,
    /// The signal kicks send ([`crate::KickSignal`]), already prepared.
    pub(crate) kick_signal: Option<i32>,
    /// Counts privmem's own stand-ins for the kernel, shared by the
    /// hypervisor and every VM it created ([`privmem_core::Hypervisor::emulations`]).
    pub(crate) emulation: Arc<privmem_core::EmulationLog>,
}

/// State shared by a VM and its vCPUs.
#[derive(Debug)]
pub(crate) struct VmState {
    pub(crate) fd: VmFd,
    pub(crate) raw_type: u64,
    pub(crate) config: VmConfig,
    /// The mask last enabled with `KVM_CAP_EXIT_HYPERCALL` (port-I/O emulation).
    pub(crate) exit_hypercall_mask: AtomicU64,
    /// The pages the caller made private (KVM has no get API, so the backend
    /// mirrors its own successful `KVM_SET_MEMORY_ATTRIBUTES` calls): the
    /// runtime area is placed where no page is private, so privmem's own code
    /// and page tables never sit on pages made private (even slotless ones).
    pub(crate) private: Mutex<AttrMap>,
    slots: Mutex<BTreeMap<u32, SlotEntry>>,
    /// The highest end of any op range a program of this VM has had: runtime
    /// areas go above it when they fit, so privmem's own code never lands on
    /// a GPA an earlier program touched (its faults there would replace the
    /// kernel's MMIO SPTE for a slotless gfn, which decides how a later
    /// access to it resolves on sw-protected VMs: `privmem_model` `mmio`).
    pub(crate) op_high_water: AtomicU64,
    /// The port-I/O hypercall emulation answered a guest call.
    emulated_hypercall: AtomicBool,
    /// A caller's `userspace_addr = 0` was replaced by a gmem mapping.
    emulated_gmem_hva: AtomicBool,
}

pub(crate) use privmem_core::Emulation;

impl VmState {
    pub(crate) fn new(fd: VmFd, raw_type: u64, config: VmConfig) -> VmState {
        VmState {
            fd,
            raw_type,
            config,
            exit_hypercall_mask: AtomicU64::new(0),
            private: Mutex::new(AttrMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            op_high_water: AtomicU64::new(0),
            emulated_hypercall: AtomicBool::new(false),
            emulated_gmem_hva: AtomicBool::new(false),
        }
    }

    /// The memslot table, locked (a poisoned lock is still consistent: every
    /// update is a single insert or remove).
    pub(crate) fn slots(&self) -> MutexGuard<'_, BTreeMap<u32, SlotEntry>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `KVM_SET_USER_MEMORY_REGION2`, or v1 with the first 32 bytes of `r`.
    ///
    /// # Safety
    /// `r.userspace_addr` must be 0, not page-aligned (KVM rejects it), or
    /// inside a mapping of at least `r.memory_size` bytes that stays mapped
    /// until this slot is deleted or replaced (KVM maps that memory into
    /// the guest).
    pub(crate) unsafe fn set_region(
        &self,
        api: RegionApi,
        r: kvm_userspace_memory_region2,
    ) -> Result<(), BackendError> {
        match api {
            // SAFETY: the caller upholds this function's contract, which is
            // kvm-ioctls' contract for the call.
            RegionApi::V2 => unsafe { self.fd.set_user_memory_region2(r) }
                .map_err(|e| kvm_err("KVM_SET_USER_MEMORY_REGION2", &e)),
            RegionApi::V1 => {
                let v1 = kvm_userspace_memory_region {
                    slot: r.slot,
                    flags: r.flags,
                    guest_phys_addr: r.guest_phys_addr,
                    memory_size: r.memory_size,
                    userspace_addr: r.userspace_addr,
                };
                // SAFETY: as above; v1 carries the same address and size.
                unsafe { self.fd.set_user_memory_region(v1) }
                    .map_err(|e| kvm_err("KVM_SET_USER_MEMORY_REGION", &e))
            }
        }
    }

    /// Deletes memslot `slot` (size 0: KVM dereferences no address).
    pub(crate) fn delete_slot(&self, slot: u32) -> Result<(), BackendError> {
        let r = kvm_userspace_memory_region2 {
            slot,
            ..Default::default()
        };
        // SAFETY: a deletion has `userspace_addr = 0` and size 0.
        unsafe { self.set_region(RegionApi::V2, r) }
    }

    /// `KVM_CHECK_EXTENSION` on the VM fd.
    pub(crate) fn check_extension(&self, cap: u32) -> Result<u64, BackendError> {
        crate::sys::check_extension(fd_of(&self.fd), cap)
    }

    /// Records that `e` acted on this VM.
    pub(crate) fn note_emulation(&self, e: Emulation) {
        let flag = match e {
            Emulation::PortIoHypercall => &self.emulated_hypercall,
            Emulation::GmemHva => &self.emulated_gmem_hva,
        };
        flag.store(true, Ordering::Relaxed);
        self.config.emulation.record(e);
    }

    /// The emulations that acted on this VM so far.
    pub(crate) fn emulations(&self) -> Emulations {
        Emulations {
            hypercall: self.emulated_hypercall.load(Ordering::Relaxed),
            gmem_hva: self.emulated_gmem_hva.load(Ordering::Relaxed),
        }
    }
}
