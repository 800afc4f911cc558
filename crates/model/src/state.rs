//! The model VM's kernel state (`struct kvm`): the bottom of the crate.
//! Every ioctl module (memslots, attributes, guest_memfd binding, faults,
//! vCPUs) takes it by reference; it imports only the data it holds.
//!
//! Locks: `slots` is an `RwLock` taken for reading on every guest access;
//! `attrs` is striped by address (`privmem_core::attrmap::striped`), one
//! mutex per stripe. Neither is held across an exit or across I/O on page
//! contents. `slots_lock` (a mutex) serialises memslot updates like
//! `kvm->slots_lock`.
//!
//! Not modelled: the kernel also takes `kvm->slots_lock` (and `mmu_lock`
//! for writing, to zap) in `KVM_SET_MEMORY_ATTRIBUTES`, so on a real kernel
//! two vCPUs' conversions serialise there. The model's striped attributes
//! do not, so that the `parallel` benchmark measures privmem's own scaling;
//! semantics (the result of every call) are the same.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use privmem_core::attrmap::striped::StripedMap;
use privmem_core::error::Result;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{BackendError, Errno, Quirks, VmType};

use crate::inject::Injector;
use crate::mmio::MmioSptes;
use crate::profile::{Build, KernelProfile};
use crate::slots::Slots;

static NEXT_VM_ID: AtomicU64 = AtomicU64::new(1);

/// The VM's kernel state (`struct kvm`).
#[derive(Debug)]
pub(crate) struct VmInner {
    pub(crate) id: u64,
    pub(crate) ty: VmType,
    pub(crate) profile: KernelProfile,
    pub(crate) inject: Arc<Injector>,
    pub(crate) slots: RwLock<Slots>,
    pub(crate) attrs: StripedMap,
    /// `kvm->arch.hypercall_exit_enabled`.
    pub(crate) hc_mask: AtomicU64,
    pub(crate) slots_lock: Mutex<()>,
    /// `kvm_mmu_max_gfn()`.
    pub(crate) max_gfn: u64,
    /// Host quirks (not upstream; see README.md).
    pub(crate) quirks: Quirks,
    /// Kernel build options (`CONFIG_KVM_SMM`, `CONFIG_KVM_GUEST_MEMFD`).
    pub(crate) build: Build,
    /// MMIO SPTEs and the memslot generation (sw-protected VMs).
    pub(crate) mmio: MmioSptes,
    pub(crate) vcpus: Mutex<BTreeSet<u32>>,
    /// `kvm->vm_dead`: every later VM and vCPU ioctl is EIO.
    dead: AtomicBool,
    /// `kvm->arch.mmu_valid_gen`: bumped by `kvm_mmu_zap_all_fast`, which
    /// makes every vCPU's loaded MMU root obsolete.
    mmu_valid_gen: AtomicU64,
}

impl VmInner {
    pub(crate) fn new(
        ty: VmType,
        profile: KernelProfile,
        inject: Arc<Injector>,
        max_gpa_bits: u32,
        quirks: Quirks,
        build: Build,
    ) -> VmInner {
        VmInner {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            ty,
            profile,
            inject,
            slots: RwLock::default(),
            attrs: StripedMap::new(),
            hc_mask: AtomicU64::new(0),
            slots_lock: Mutex::new(()),
            max_gfn: (1u64 << (max_gpa_bits - PAGE_SHIFT)) - 1,
            quirks,
            build,
            mmio: MmioSptes::default(),
            vcpus: Mutex::default(),
            dead: AtomicBool::new(false),
            mmu_valid_gen: AtomicU64::new(0),
        }
    }

    /// The generation a freshly loaded MMU root gets.
    pub(crate) fn mmu_valid_gen(&self) -> u64 {
        self.mmu_valid_gen.load(Ordering::Acquire)
    }

    /// `kvm_arch_flush_shadow_memslot` for a memslot deleted or moved: a
    /// default VM (with `KVM_X86_QUIRK_SLOT_ZAP_ALL`, on by default) zaps
    /// everything with `kvm_mmu_zap_all_fast`, which invalidates every
    /// root; other VM types zap only the slot's range.
    pub(crate) fn flush_shadow_memslot(&self) {
        if self.ty == VmType::Default {
            self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `kvm_vm_dead`: every later VM and vCPU ioctl is EIO.
    pub(crate) fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }

    /// True once the VM is dead (`kvm_vm_dead`).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// EIO if the VM is dead (the check at the top of `kvm_vm_ioctl`).
    pub(crate) fn alive(&self, op: &'static str) -> Result<()> {
        if self.is_dead() {
            return Err(BackendError::os(op, Errno::EIO));
        }
        Ok(())
    }
}
