//! Memslots: `KVM_SET_USER_MEMORY_REGION{,2}` (docs/semantics/memslots.md) in the kernel's check
//! order (`kvm_vm_ioctl`, `kvm_vm_ioctl_set_memory_region`,
//! `kvm_set_memory_region`, `kvm_gmem_bind`).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

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
use crate::vm::VmInner;

/// What backs a slot's `userspace_addr`.
#[derive(Clone, Debug)]
pub(crate) enum UserBacking {
    /// A raw address with nothing mapped there (0 = NULL).
    Raw(u64),
    /// An offset into a model shared backing.
    Shared {
        /// The backing.
        mem: ModelShared,
        /// Byte offset of the slot's first page.
        offset: u64,
    },
    /// [`privmem_core::Quirks::gmem_hva`]: a `MAP_SHARED` mapping of the
    /// slot's guest_memfd range that the KVM backend passed instead of the
    /// caller's NULL (the VM's `Userspace` holds the file).
    GmemMap {
        /// The file.
        file: Weak<GmemFile>,
        /// File page the mapping (the slot's first page) starts at.
        pgoff: u64,
    },
}

impl UserBacking {
    /// Identity of the `userspace_addr` value, for the MODIFY comparison.
    fn key(&self) -> (u64, u64) {
        match self {
            UserBacking::Raw(v) => (0, *v),
            UserBacking::Shared { mem, offset } => (mem.id(), *offset),
            UserBacking::GmemMap { pgoff, .. } => (u64::MAX, *pgoff),
        }
    }
}

/// A slot's guest_memfd binding (`slot->gmem`).
#[derive(Clone, Debug)]
pub(crate) struct SlotGmem {
    /// The file; dead once the file is released.
    pub(crate) file: Weak<GmemFile>,
    /// First file page.
    pub(crate) pgoff: u64,
    /// `KVM_MEMSLOT_GMEM_ONLY`: every fault is served from gmem.
    pub(crate) gmem_only: bool,
}

/// A memslot.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// Slot number: `as_id << 16 | id`.
    pub(crate) id: u32,
    pub(crate) flags: u32,
    pub(crate) base_gfn: u64,
    pub(crate) npages: u64,
    pub(crate) user: UserBacking,
    /// Set iff `flags` has `KVM_MEM_GUEST_MEMFD`.
    pub(crate) gmem: Option<SlotGmem>,
}

impl Slot {
    /// One past the last gfn.
    pub(crate) fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    /// True for `KVM_MEM_READONLY`.
    pub(crate) fn readonly(&self) -> bool {
        self.flags & MEM_READONLY != 0
    }
}

/// The memslots of every address space, indexed by slot number (`as_id <<
/// 16 | id`) and, per address space, by base gfn.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    by_id: BTreeMap<u32, Slot>,
    by_gfn: BTreeMap<(u16, u64), u32>,
}

impl Slots {
    /// The slot of address space 0 containing `gfn` (guests never run in
    /// SMM here, so their faults see address space 0 only).
    pub(crate) fn find(&self, gfn: u64) -> Option<&Slot> {
        let (_, id) = self.by_gfn.range((0, 0)..=(0, gfn)).next_back()?;
        let s = &self.by_id[id];
        (gfn < s.end_gfn()).then_some(s)
    }

    /// The slot numbered `id` (address space in the high 16 bits).
    pub(crate) fn get(&self, id: u32) -> Option<&Slot> {
        self.by_id.get(&id)
    }

    /// Number of slots.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// `kvm_check_memslot_overlap`: another slot of `id`'s address space
    /// intersects `[base, base+n)`.
    fn overlaps(&self, id: u32, base: u64, npages: u64) -> bool {
        let space = as_id(id);
        let end = base + npages;
        // Slots are disjoint: only the other slot with the highest base
        // below `end` can reach into the range.
        self.by_gfn
            .range((space, 0)..(space, end))
            .rev()
            .map(|(_, i)| &self.by_id[i])
            .find(|s| s.id != id)
            .is_some_and(|s| s.end_gfn() > base)
    }

    fn insert(&mut self, slot: Slot) {
        self.by_gfn.insert((as_id(slot.id), slot.base_gfn), slot.id);
        self.by_id.insert(slot.id, slot);
    }

    fn remove(&mut self, id: u32) -> Option<Slot> {
        let s = self.by_id.remove(&id)?;
        self.by_gfn.remove(&(as_id(id), s.base_gfn));
        Some(s)
    }
}

/// The address space of slot number `slot`.
fn as_id(slot: u32) -> u16 {
    (slot >> 16) as u16
}

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
        if file.vm.id != self.id {
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

    fn slot(id: u32, base_gfn: u64, npages: u64) -> Slot {
        Slot {
            id,
            flags: 0,
            base_gfn,
            npages,
            user: UserBacking::Raw(0),
            gmem: None,
        }
    }

    #[test]
    fn slots_find_returns_containing_slot() {
        let mut s = Slots::default();
        s.insert(slot(1, 10, 5));
        s.insert(slot(2, 20, 5));
        assert_eq!(s.find(14).map(|x| x.id), Some(1));
        assert!(s.find(15).is_none());
        assert!(s.find(9).is_none());
        assert_eq!(s.find(20).map(|x| x.id), Some(2));
    }

    #[test]
    fn slots_overlap_detects_front_and_back() {
        let mut s = Slots::default();
        s.insert(slot(1, 10, 10));
        assert!(s.overlaps(2, 5, 6));
        assert!(s.overlaps(2, 19, 6));
        assert!(s.overlaps(2, 0, 100));
        assert!(!s.overlaps(2, 20, 6));
        assert!(!s.overlaps(2, 0, 10));
        assert!(!s.overlaps(1, 12, 3));
    }

    #[test]
    fn slots_overlap_sees_large_slot_far_below() {
        let mut s = Slots::default();
        s.insert(slot(1, 0, 1000));
        s.insert(slot(2, 2000, 1));
        assert!(s.overlaps(3, 500, 1));
    }

    #[test]
    fn access_ok_rejects_wrap_and_kernel_half() {
        assert!(access_ok(0, 4096));
        assert!(!access_ok(TASK_SIZE_MAX, 4096));
        assert!(!access_ok(u64::MAX - 10, 4096));
    }
}
