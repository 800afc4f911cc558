//! The fault path (docs/semantics/fault-path.md): which backing serves a guest access, or which exit it
//! produces, decided per page in the kernel's order
//! (`kvm_mmu_faultin_pfn` → `kvm_handle_noslot_fault` /
//! `kvm_mmu_faultin_pfn_gmem` → `kvm_gmem_get_pfn`).
//!
//! For speed, [`resolve`] returns the longest run starting at the access
//! address whose pages all resolve the same way to contiguous storage, so the
//! vCPU can move it with one `pread`/`pwrite`.

use std::sync::Arc;

use privmem_core::backend::Access;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{FaultErrno, Gpa, GpaRange, MemoryFault, VmType, PAGE_SIZE};

use crate::backing::ModelShared;
use crate::gmem::GmemFile;
use crate::mmio::Spte;
use crate::slots::{Slot, UserBacking};
use crate::state::VmInner;

/// Where `[gpa, gpa+len)` lives, or what exit the first page produces.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// guest_memfd bytes at `offset`.
    Gmem {
        file: Arc<GmemFile>,
        offset: u64,
        len: u64,
    },
    /// Shared-backing bytes at `offset`.
    Shared {
        mem: ModelShared,
        offset: u64,
        len: u64,
    },
    /// An emulated (MMIO) access; `len` bytes up to the end of the page.
    Mmio { len: u64 },
    /// `KVM_EXIT_MEMORY_FAULT` for the first page.
    Fault(MemoryFault),
    /// The slot's `userspace_addr` maps nothing: `hva_to_pfn` fails and
    /// `kvm_handle_error_pfn` returns `-EFAULT`, so `KVM_RUN` fails with
    /// EFAULT and no exit reason (measured on 6.12.118 and 7.3.4 in the rig).
    BadHva,
}

fn fault(gpa: u64, private: bool, errno: FaultErrno) -> Resolved {
    Resolved::Fault(MemoryFault {
        gpa: Gpa(gpa & !(PAGE_SIZE - 1)),
        size: PAGE_SIZE,
        private,
        errno,
    })
}

fn to_page_end(gpa: u64, want: u64) -> u64 {
    want.min(PAGE_SIZE - gpa % PAGE_SIZE)
}

/// Resolves the access `[gpa, gpa+want)` (`want > 0`, no wrap) with intent
/// `access`; `write` selects read-only slot handling.
pub(crate) fn resolve(vm: &VmInner, gpa: u64, want: u64, access: Access, write: bool) -> Resolved {
    debug_assert!(want > 0);
    let gfn = gpa >> PAGE_SHIFT;
    // 0. A sw-protected VM's MMIO SPTE for the gfn (see `mmio`): a live one
    //    is emulated, a stale one makes the access shared whatever the
    //    attributes.
    let spte = if vm.ty == VmType::SwProtected {
        vm.mmio.lookup(gfn)
    } else {
        Spte::None
    };
    if spte == Spte::Live {
        return Resolved::Mmio {
            len: to_page_end(gpa, want),
        };
    }
    let resolved = resolve_fault(vm, gpa, want, access, write, spte == Spte::Stale);
    // A mapping replaces the gfn's MMIO SPTE (the no-slot path installs one).
    if vm.ty == VmType::SwProtected
        && matches!(resolved, Resolved::Gmem { .. } | Resolved::Shared { .. })
    {
        vm.mmio.replace(gfn);
    }
    resolved
}

/// The fault path proper; `as_shared` forces `is_private = false` (a
/// reserved-bit fault on a stale MMIO SPTE).
fn resolve_fault(
    vm: &VmInner,
    gpa: u64,
    want: u64,
    access: Access,
    write: bool,
    as_shared: bool,
) -> Resolved {
    // 1. Privateness and the attribute mismatch check (taken before the
    //    no-slot check, as in kvm_mmu_faultin_pfn).
    let mut len = want;
    let is_private = {
        let range = GpaRange::new(Gpa(gpa), want).expect("caller checked wrap");
        let first = vm.attrs.first_run(range);
        let attr_private = first.private;
        len = len.min(first.range.end().raw() - gpa);
        let is_private = match vm.ty {
            VmType::Default => false,
            VmType::SwProtected => attr_private && !as_shared,
            VmType::Coco => access == Access::Private,
        };
        if is_private != attr_private {
            return fault(gpa, is_private, FaultErrno::Efault);
        }
        is_private
    };
    // 2. The memslot.
    let gfn = gpa >> PAGE_SHIFT;
    let slots = vm.slots.read().expect("slots");
    let Some(slot) = slots.find(gfn) else {
        if is_private {
            return fault(gpa, true, FaultErrno::Efault);
        }
        if vm.ty == VmType::SwProtected {
            vm.mmio.install(gfn);
        }
        return Resolved::Mmio {
            len: to_page_end(gpa, want),
        };
    };
    let slot_end = slot.end_gfn() << PAGE_SHIFT;
    len = len.min(slot_end - gpa);
    // A run stops before the next gfn with an MMIO SPTE (it resolves apart).
    if let Some(next) = vm.mmio.next_after(gfn, slot.end_gfn()) {
        len = len.min((next << PAGE_SHIFT) - gpa);
    }
    let off_in_slot = gpa - (slot.base_gfn << PAGE_SHIFT);
    let gmem_only = slot.gmem.as_ref().is_some_and(|g| g.gmem_only);
    // Host quirk, not upstream (PVM): a default VM's faults are always
    // served through userspace_addr, whatever the slot's gmem flags.
    let through_hva = vm.quirks.pvm && vm.ty == VmType::Default;
    if is_private || (gmem_only && !through_hva) {
        return resolve_gmem(slot, gpa, off_in_slot, len, is_private);
    }
    resolve_shared(
        slot,
        gpa,
        off_in_slot,
        len,
        Host {
            write,
            pvm: vm.quirks.pvm,
        },
    )
}

/// `kvm_mmu_faultin_pfn_gmem` + `kvm_gmem_get_pfn`.
fn resolve_gmem(slot: &Slot, gpa: u64, off_in_slot: u64, len: u64, private: bool) -> Resolved {
    let Some(g) = slot.gmem.as_ref() else {
        // A private fault on a slot without guest_memfd (selftest D2).
        return fault(gpa, private, FaultErrno::Efault);
    };
    let Some(file) = g.file.upgrade() else {
        // The file was released: slot->gmem.file is NULL.
        return fault(gpa, private, FaultErrno::Efault);
    };
    gmem_run(
        file,
        (g.pgoff << PAGE_SHIFT) + off_in_slot,
        gpa,
        len,
        private,
    )
}

/// guest_memfd bytes at file `offset` for `[gpa, gpa+len)`, up to the first
/// hardware-poisoned page (a poisoned first page is an EHWPOISON fault).
fn gmem_run(file: Arc<GmemFile>, offset: u64, gpa: u64, len: u64, private: bool) -> Resolved {
    let first = offset >> PAGE_SHIFT;
    let npages = (offset + len - 1) / PAGE_SIZE - first + 1;
    let mut len = len;
    if let Some(p) = file.first_poisoned(first, npages) {
        if p == first {
            return fault(gpa, private, FaultErrno::Ehwpoison);
        }
        len = len.min((p << PAGE_SHIFT) - offset);
    }
    Resolved::Gmem { file, offset, len }
}

/// The shared (`userspace_addr`) side.
/// What the shared side of a fault needs to know besides the slot.
#[derive(Clone, Copy)]
struct Host {
    /// The access is a write.
    write: bool,
    /// The host is PVM ([`privmem_core::Quirks::pvm`]).
    pvm: bool,
}

fn resolve_shared(slot: &Slot, gpa: u64, off_in_slot: u64, len: u64, host: Host) -> Resolved {
    if host.write && slot.readonly() {
        // Writes to read-only memslots exit as MMIO.
        return Resolved::Mmio {
            len: to_page_end(gpa, len),
        };
    }
    match &slot.user {
        UserBacking::Shared { mem, offset } => {
            let hva_off = offset + off_in_slot;
            let size = privmem_core::backend::HostMemory::len(mem);
            if hva_off >= size {
                // Nothing mapped at the HVA: becomes MMIO on this host.
                return Resolved::Mmio {
                    len: to_page_end(gpa, len),
                };
            }
            Resolved::Shared {
                mem: mem.clone(),
                offset: hva_off,
                len: len.min(size - hva_off),
            }
        }
        // PVM hosts emulate an access through an unmapped HVA as MMIO
        // (measured on 6.18.44-fc); upstream KVM_RUN fails with EFAULT.
        UserBacking::Raw(_) if host.pvm => Resolved::Mmio {
            len: to_page_end(gpa, len),
        },
        UserBacking::Raw(_) => Resolved::BadHva,
        // A mapping of the guest_memfd (Quirks::gmem_hva). Reached only with
        // Quirks::pvm: otherwise such a slot is gmem-only and faults go to
        // guest_memfd directly. (Poison through the HVA would be SIGBUS on
        // a real host; the model keeps its EHWPOISON exit, unverified.)
        UserBacking::GmemMap { file, pgoff } => match file.upgrade() {
            Some(file) => gmem_run(file, (pgoff << PAGE_SHIFT) + off_in_slot, gpa, len, false),
            None => Resolved::Mmio {
                len: to_page_end(gpa, len),
            },
        },
    }
}
