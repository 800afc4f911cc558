//! `KVM_PRE_FAULT_MEMORY` (a vCPU ioctl): map a GPA range into the guest's
//! page tables as guest reads would, without running the guest.
//!
//! Kernel path (6.12 and 7.3): `kvm_vcpu_pre_fault_memory` checks `flags`
//! (EINVAL unless 0) and the range (EINVAL unless page-aligned, non-empty
//! and not wrapping), then loops: a pending signal is EINTR, else
//! `kvm_arch_vcpu_pre_fault_memory` maps the page at `range->gpa` and the
//! range advances past it. The loop stops at the first error, and the call
//! returns 0 if any page was mapped, else that error; the range goes back
//! to userspace either way.
//!
//! Per page (`kvm_arch_vcpu_pre_fault_memory`, `kvm_tdp_map_page`):
//! - EOPNOTSUPP without TDP, and for VM types whose pre-fault is not
//!   allowed before launch (SNP/TDX, the model's `coco`);
//! - the fault is private iff the VM has private memory and the attribute
//!   at `range->gpa` is private;
//! - no memslot: private → EFAULT, shared → an MMIO SPTE and
//!   `RET_PF_EMULATE` → ENOENT;
//! - a memslot being deleted or moved (`KVM_MEMSLOT_INVALID`): 7.3 EAGAIN;
//!   6.12 `RET_PF_RETRY` over and over until a signal arrives (EINTR). The
//!   model's slot change is injected ([`InjectOp::PreFaultSlotChange`]) and
//!   never completes during the call (the kernel's deletion waits for the
//!   pre-fault's SRCU read side), so on 6.12 only a kick ends it;
//! - an obsolete MMU root: deleting or moving a default VM's memslot
//!   invalidates every root (`kvm_mmu_zap_all_fast`). 7.3's
//!   `kvm_mmu_reload` frees obsolete roots and loads a new one; 6.12's
//!   only loads a root when there is none, so a vCPU that loaded its root
//!   before the change finds every fault stale (`is_page_fault_stale`,
//!   `RET_PF_RETRY`) and spins until a signal (EINTR), on every call,
//!   until a `KVM_RUN` frees the root. The check comes after the
//!   memslot lookup and the pfn, so a private fault without a memslot and
//!   a failing pfn keep their errors; a shared fault without one (an
//!   MMIO SPTE to install) spins too;
//! - served from guest_memfd (private, or a gmem-only slot): no
//!   guest_memfd, or a released file → EFAULT; a poisoned page →
//!   EHWPOISON; else the page is allocated;
//! - shared: `userspace_addr` with nothing mapped there (NULL, or past the
//!   backing) → EFAULT (`kvm_handle_error_pfn`); else the page is faulted
//!   in.
//!
//! A kick that arrives during the call is the signal (EINTR, or 0 after
//! progress); like the KVM backend's kick it also stays pending for the
//! next `run`. A kick already pending when the call starts was delivered
//! before it (as a real signal would be) and does not interrupt it.
//!
//! A dead VM (`kvm->vm_dead`) answers EIO. Each iteration maps 4 KiB (the
//! kernel may map a huge page and advance further in one step; the result
//! is the same).

use std::time::Duration;

use privmem_core::error::Result;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{BackendError, Errno, Gpa, PreFaultRange, VmType, PAGE_SIZE};

use crate::inject::InjectOp;
use crate::kick::ModelKick;
use crate::profile::{KernelProfile, PreFaultInvalidSlot};
use crate::slots::{Slot, UserBacking};
use crate::state::VmInner;

const OP: &str = "KVM_PRE_FAULT_MEMORY";

/// How long the 6.12 retry loop sleeps between retries.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// `KVM_PRE_FAULT_MEMORY(range)` on a vCPU of `vm`; `kick` is the vCPU's
/// signal.
pub(crate) fn pre_fault(
    vm: &VmInner,
    kick: &ModelKick,
    root: &mut Option<u64>,
    range: &mut PreFaultRange,
) -> Result<()> {
    pre_fault_errno(vm, kick, root, range).map_err(|e| BackendError::os(OP, e))
}

fn pre_fault_errno(
    vm: &VmInner,
    kick: &ModelKick,
    root: &mut Option<u64>,
    range: &mut PreFaultRange,
) -> Result<(), Errno> {
    if vm.is_dead() {
        return Err(Errno::EIO);
    }
    if range.flags != 0 {
        return Err(Errno::EINVAL);
    }
    let end = range.gpa.checked_add(range.size);
    if !range.gpa.is_multiple_of(PAGE_SIZE)
        || !range.size.is_multiple_of(PAGE_SIZE)
        || end.is_none_or(|e| e <= range.gpa)
    {
        return Err(Errno::EINVAL);
    }
    let full = range.size;
    let signal = Signal {
        kick,
        at_entry: kick.count(),
    };
    let mut last = Ok(());
    while range.size > 0 {
        if signal.pending() {
            last = Err(Errno::EINTR);
            break;
        }
        match map_page(vm, &signal, root, range.gpa) {
            Ok(()) => {
                range.gpa += PAGE_SIZE;
                range.size -= PAGE_SIZE;
            }
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    // "Return success if at least one page was mapped successfully."
    if range.size == full {
        last
    } else {
        Ok(())
    }
}

/// `signal_pending(current)` for a pre-fault: a kick that arrived during
/// the call.
struct Signal<'k> {
    kick: &'k ModelKick,
    /// The kicks before the call (one still pending is the next run's).
    at_entry: u64,
}

impl Signal<'_> {
    fn pending(&self) -> bool {
        self.kick.count() != self.at_entry
    }
}

/// `kvm_arch_vcpu_pre_fault_memory` for the page at `gpa`; `root` is the
/// vCPU's loaded MMU root.
fn map_page(
    vm: &VmInner,
    signal: &Signal<'_>,
    root: &mut Option<u64>,
    gpa: u64,
) -> Result<(), Errno> {
    // kvm->arch.pre_fault_allowed: default and sw-protected VMs only
    // (SNP/TDX after launch).
    if vm.ty == VmType::Coco {
        return Err(Errno::EOPNOTSUPP);
    }
    // Host quirk, not upstream (PVM, measured on 6.18.44-fc): the vCPU's
    // MMU does not load (kvm_mmu_reload): ENOSPC.
    if vm.quirks.pvm {
        return Err(Errno::ENOSPC);
    }
    // kvm_tdp_map_page: TDP only.
    if !vm.build.tdp {
        return Err(Errno::EOPNOTSUPP);
    }
    let stale = mmu_reload(vm, root);
    let private = vm.ty.has_private_mem() && vm.attrs.is_private(Gpa(gpa));
    // kvm_tdp_map_page's loop: a signal, then (7.3) a dead VM, then the
    // fault; RET_PF_RETRY goes round again only for an invalid memslot.
    if signal.pending() {
        return Err(Errno::EINTR);
    }
    if vm.is_dead() && vm.profile == KernelProfile::V7_3 {
        // 7.3's kvm_tdp_map_page checks KVM_REQ_VM_DEAD in its loop.
        return Err(Errno::EIO);
    }
    match fault_in(vm, gpa, private) {
        Fault::Done(Ok(())) if stale => retry_until_signal(signal),
        Fault::Done(r) => r,
        Fault::NoSlotShared if stale => retry_until_signal(signal),
        Fault::NoSlotShared => Err(Errno::ENOENT),
        Fault::SlotInvalid => match vm.profile.pre_fault_invalid_slot() {
            PreFaultInvalidSlot::Again => Err(Errno::EAGAIN),
            PreFaultInvalidSlot::RetryUntilSignal => retry_until_signal(signal),
        },
    }
}

/// `kvm_mmu_reload`; true if the vCPU is left with an obsolete root.
fn mmu_reload(vm: &VmInner, root: &mut Option<u64>) -> bool {
    let current = vm.mmu_valid_gen();
    let frees_obsolete = vm.profile == KernelProfile::V7_3;
    match *root {
        Some(gen) if gen != current && !frees_obsolete => true,
        _ => {
            *root = Some(current);
            false
        }
    }
}

/// 6.12: `RET_PF_RETRY` for as long as the slot stays invalid (which the
/// injected change does for the rest of the call) or the root obsolete:
/// only a signal sent during the call ends it.
fn retry_until_signal(signal: &Signal<'_>) -> Result<(), Errno> {
    while !signal.pending() {
        std::thread::sleep(RETRY_PAUSE);
    }
    Err(Errno::EINTR)
}

/// One `kvm_mmu_do_page_fault` of a pre-fault.
enum Fault {
    /// Mapped (`Ok`) or failed.
    Done(Result<(), Errno>),
    /// Shared, and no memslot: an MMIO SPTE to install, then
    /// `RET_PF_EMULATE` (ENOENT).
    NoSlotShared,
    /// The memslot is being deleted or moved.
    SlotInvalid,
}

fn fault_in(vm: &VmInner, gpa: u64, private: bool) -> Fault {
    let gfn = gpa >> PAGE_SHIFT;
    let slots = vm.slots.read().expect("slots");
    let Some(slot) = slots.find(gfn) else {
        if private {
            return Fault::Done(Err(Errno::EFAULT));
        }
        if vm.ty == VmType::SwProtected {
            vm.mmio.install(gfn);
        }
        return Fault::NoSlotShared;
    };
    if vm.inject.check(InjectOp::PreFaultSlotChange).is_some() {
        return Fault::SlotInvalid;
    }
    let off_in_slot = (gfn - slot.base_gfn) << PAGE_SHIFT;
    let gmem_only = slot.gmem.as_ref().is_some_and(|g| g.gmem_only);
    let r = if private || gmem_only {
        fault_in_gmem(slot, off_in_slot)
    } else {
        fault_in_shared(slot, off_in_slot)
    };
    if r.is_ok() && vm.ty == VmType::SwProtected {
        vm.mmio.replace(gfn);
    }
    Fault::Done(r)
}

/// `kvm_mmu_faultin_pfn_gmem` + `kvm_gmem_get_pfn`: the folio is allocated.
fn fault_in_gmem(slot: &Slot, off_in_slot: u64) -> Result<(), Errno> {
    let g = slot.gmem.as_ref().ok_or(Errno::EFAULT)?;
    let file = g.file.upgrade().ok_or(Errno::EFAULT)?;
    let offset = (g.pgoff << PAGE_SHIFT) + off_in_slot;
    if file.first_poisoned(offset >> PAGE_SHIFT, 1).is_some() {
        return Err(Errno::EHWPOISON);
    }
    file.mem.allocate(offset, PAGE_SIZE)
}

/// `__kvm_faultin_pfn` through `userspace_addr`.
fn fault_in_shared(slot: &Slot, off_in_slot: u64) -> Result<(), Errno> {
    match &slot.user {
        UserBacking::Shared { mem, offset } => {
            let hva_off = offset + off_in_slot;
            if hva_off >= privmem_core::HostMemory::len(mem) {
                return Err(Errno::EFAULT);
            }
            mem.memfd().allocate(hva_off, PAGE_SIZE)
        }
        // Nothing mapped at the address: hva_to_pfn fails.
        UserBacking::Raw(_) => Err(Errno::EFAULT),
        UserBacking::GmemMap { file, .. } => match file.upgrade() {
            Some(_) => Ok(()),
            None => Err(Errno::EFAULT),
        },
    }
}
