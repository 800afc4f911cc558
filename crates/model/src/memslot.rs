//! Memslots: `KVM_SET_USER_MEMORY_REGION{,2}` (docs/semantics/memslots.md) in the kernel's check
//! order (`kvm_vm_ioctl`, `kvm_vm_ioctl_set_memory_region`,
//! `kvm_set_memory_region`, `kvm_gmem_bind`).

use std::sync::Arc;

use privmem_core::backend::{
    GmemRef, HostMemory, Region, RegionApi, UserAddr, MEM_GUEST_MEMFD, MEM_LOG_DIRTY_PAGES,
    MEM_READONLY,
};
use privmem_core::error::Result;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{BackendError, Errno, PAGE_SIZE};
use std::os::fd::AsFd;

use crate::backing::ModelShared;
use crate::gmem::{self, GmemFile};
use crate::inject::InjectOp;
use crate::profile::{nr_memslot_as_ids, MEM_MAX_NR_PAGES, NR_MEMSLOTS, TASK_SIZE_MAX};
use crate::slots::{as_id, Slot, SlotGmem, UserBacking};
use crate::state::VmInner;

/// `access_ok(addr, size)` on x86-64 (4-level paging).
fn access_ok(addr: u64, size: u64) -> bool {
    addr.checked_add(size)
        .is_some_and(|end| end <= TASK_SIZE_MAX)
}

fn op_name(api: RegionApi) -> &'static str {
    match api {
        RegionApi::V1 => "KVM_SET_USER_MEMORY_REGION",
        RegionApi::V2 => "KVM_SET_USER_MEMORY_REGION2",
    }
}

/// The requested change once validation has passed.
enum Change {
    Create,
    Move,
    FlagsOnly,
}

impl VmInner {
    /// `KVM_SET_USER_MEMORY_REGION{,2}`; `hva_gmem` is the guest_memfd
    /// whose mapping stands in for a NULL `userspace_addr`
    /// ([`privmem_core::Quirks::gmem_hva`]).
    pub(crate) fn set_region(
        &self,
        r: &Region<'_, ModelShared>,
        hva_gmem: Option<&Arc<GmemFile>>,
    ) -> Result<()> {
        let op = op_name(r.api);
        // Backend-level refusals every privmem backend applies before the
        // kernel sees the call (see `UserAddr::Raw`, and the KVM backend's
        // `resolve_hva`): never hand out arbitrary host memory.
        match r.userspace {
            UserAddr::Raw(v) if v != 0 && v % PAGE_SIZE == 0 => {
                return Err(BackendError::Invalid {
                    op,
                    why: format!("raw userspace_addr {v:#x} would hand out arbitrary host memory"),
                });
            }
            UserAddr::Backing { mem, offset }
                if offset.checked_add(r.size).is_none_or(|e| e > mem.len()) =>
            {
                return Err(BackendError::Invalid {
                    op,
                    why: format!(
                        "offset {offset:#x} + size {:#x} exceeds the {:#x}-byte backing",
                        r.size,
                        mem.len()
                    ),
                });
            }
            _ => {}
        }
        self.set_region_checked(r, hva_gmem)
            .map_err(|e| BackendError::os(op, e))
    }

    fn set_region_checked(
        &self,
        r: &Region<'_, ModelShared>,
        hva_gmem: Option<&Arc<GmemFile>>,
    ) -> Result<(), Errno> {
        let einval = Err(Errno::EINVAL);
        // v1 carries no gmem fields: the v2 tail is zeroed.
        let (gmem_offset, v1) = match r.api {
            RegionApi::V1 => (0, true),
            RegionApi::V2 => (r.gmem_offset, false),
        };
        if v1 && r.flags & !(MEM_LOG_DIRTY_PAGES | MEM_READONLY) != 0 {
            return einval;
        }
        let id = r.slot;
        if (id as u16) >= NR_MEMSLOTS {
            return einval;
        }
        let valid = self
            .build
            .valid_region_flags(self.profile, self.ty, r.flags);
        if r.flags & !valid != 0 {
            return einval;
        }
        if !r.size.is_multiple_of(PAGE_SIZE) || !r.gpa.is_multiple_of(PAGE_SIZE) {
            return einval;
        }
        let user = match r.userspace {
            // The mapping's HVA: aligned, and `access_ok` as any mapping.
            UserAddr::Raw(_) if hva_gmem.is_some() => {
                if r.size > TASK_SIZE_MAX {
                    return einval;
                }
                UserBacking::GmemMap {
                    file: hva_gmem.map(Arc::downgrade).unwrap_or_default(),
                    pgoff: gmem_offset >> PAGE_SHIFT,
                }
            }
            UserAddr::Raw(v) => {
                if v % PAGE_SIZE != 0 || !access_ok(v, r.size) {
                    return einval;
                }
                UserBacking::Raw(v)
            }
            UserAddr::Backing { mem, offset } => {
                if offset % PAGE_SIZE != 0 || r.size > TASK_SIZE_MAX {
                    return einval;
                }
                UserBacking::Shared {
                    mem: mem.clone(),
                    offset,
                }
            }
        };
        let is_gmem = r.flags & MEM_GUEST_MEMFD != 0;
        if is_gmem && (gmem_offset % PAGE_SIZE != 0 || gmem_offset.checked_add(r.size).is_none()) {
            return einval;
        }
        // `kvm_arch_nr_memslot_as_ids`: 2 with CONFIG_KVM_SMM for VMs
        // without private memory, else 1 (this PVM host has no SMM).
        if u32::from(as_id(id)) >= nr_memslot_as_ids(self.build.smm, self.ty) {
            return einval;
        }
        if r.gpa.checked_add(r.size).is_none() {
            return einval;
        }
        let npages = r.size >> PAGE_SHIFT;
        if npages > MEM_MAX_NR_PAGES {
            return einval;
        }

        let _guard = self.slots_lock.lock().expect("slots_lock");
        if r.size == 0 {
            return self.delete_slot(id);
        }
        let base_gfn = r.gpa >> PAGE_SHIFT;
        let change = {
            let slots = self.slots.read().expect("slots");
            let change = match slots.get(id) {
                None => Change::Create,
                Some(old) => {
                    if is_gmem
                        || user.key() != old.user.key()
                        || npages != old.npages
                        || (r.flags ^ old.flags) & (MEM_READONLY | MEM_GUEST_MEMFD) != 0
                    {
                        return einval;
                    }
                    if base_gfn != old.base_gfn {
                        Change::Move
                    } else if r.flags != old.flags {
                        Change::FlagsOnly
                    } else {
                        return Ok(());
                    }
                }
            };
            if matches!(change, Change::Create | Change::Move)
                && slots.overlaps(id, base_gfn, npages)
            {
                return Err(Errno::EEXIST);
            }
            change
        };
        if let Some(e) = self.inject.check(InjectOp::SetUserMemoryRegion) {
            return Err(e);
        }
        // x86 kvm_arch_prepare_memory_region: the slot must end at or below
        // kvm_mmu_max_gfn(); checked after the guest_memfd's validation.
        let beyond_mmu =
            matches!(change, Change::Create | Change::Move) && base_gfn + npages - 1 > self.max_gfn;
        match change {
            Change::Create => {
                let gmem = if is_gmem {
                    let file = self.gmem_for_slot(r.gmem, gmem_offset, npages)?;
                    Some(self.bind_gmem(file, gmem_offset, id, npages, beyond_mmu)?)
                } else {
                    None
                };
                if beyond_mmu {
                    return einval;
                }
                let slot = Slot {
                    id,
                    flags: r.flags,
                    base_gfn,
                    npages,
                    user,
                    gmem,
                };
                self.slots.write().expect("slots").insert(slot);
                self.mmio.memslots_changed();
            }
            Change::Move | Change::FlagsOnly => {
                if beyond_mmu {
                    return einval;
                }
                let mut slots = self.slots.write().expect("slots");
                let mut slot = slots.remove(id).expect("slot checked above");
                slot.base_gfn = base_gfn;
                slot.flags = r.flags;
                slots.insert(slot);
                self.mmio.memslots_changed();
                if matches!(change, Change::Move) {
                    self.flush_shadow_memslot();
                }
            }
        }
        Ok(())
    }

    /// `KVM_MR_DELETE`: EINVAL if the slot does not exist; unbinds gmem.
    fn delete_slot(&self, id: u32) -> Result<(), Errno> {
        let removed = self.slots.write().expect("slots").remove(id);
        let Some(slot) = removed else {
            return Err(Errno::EINVAL);
        };
        self.mmio.memslots_changed();
        self.flush_shadow_memslot();
        if let Some(g) = slot.gmem {
            if let Some(file) = g.file.upgrade() {
                file.unbind(g.pgoff, self.id, id);
            }
        }
        Ok(())
    }

    /// The validation half of `kvm_gmem_bind()` (6.12.118:
    /// `kvm_gmem_prepare_memory_region()`): the fd, its VM, and the range.
    fn gmem_for_slot(
        &self,
        gref: GmemRef<'_>,
        offset: u64,
        npages: u64,
    ) -> Result<Arc<GmemFile>, Errno> {
        let file = match gref {
            GmemRef::File(g) => match gmem::file_of(g) {
                Some(f) => Some(f),
                None => gmem::resolve_fd(g.as_fd())?,
            },
            GmemRef::Fd(fd) => gmem::resolve_fd(fd)?,
            GmemRef::Raw(fd) => gmem::resolve_raw(fd)?,
        };
        let file: Arc<GmemFile> = file.ok_or(Errno::EINVAL)?;
        if file.owner.id != self.id {
            return Err(Errno::EINVAL);
        }
        let size = npages << PAGE_SHIFT;
        if (offset as i64) < 0 || !offset.is_multiple_of(PAGE_SIZE) || offset + size > file.size() {
            return Err(Errno::EINVAL);
        }
        Ok(file)
    }

    /// Records the binding of file pages `[offset/4K, +npages)` to slot
    /// `id`, in the memslot commit phase (`kvm_gmem_commit_memory_region()`
    /// in 6.12.118, the same order in 7.3): after the arch check that fails
    /// with `beyond_mmu` (EINVAL), so that an overlap with a live binding
    /// of the file is EEXIST. (Upstream 6.18 bound in `kvm_gmem_bind()`,
    /// before the arch check, and answered EINVAL; no profile models it.)
    fn bind_gmem(
        &self,
        file: Arc<GmemFile>,
        offset: u64,
        id: u32,
        npages: u64,
        beyond_mmu: bool,
    ) -> Result<SlotGmem, Errno> {
        let pgoff = offset >> PAGE_SHIFT;
        if beyond_mmu {
            return Err(Errno::EINVAL);
        }
        file.bind(pgoff, npages, self.id, id)?;
        Ok(SlotGmem {
            file: Arc::downgrade(&file),
            pgoff,
            gmem_only: file.supports_mmap(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_ok_rejects_wrap_and_kernel_half() {
        assert!(access_ok(0, 4096));
        assert!(!access_ok(TASK_SIZE_MAX, 4096));
        assert!(!access_ok(u64::MAX - 10, 4096));
    }
}
