//! The memslot table (`struct kvm_memslots`): what each slot maps and
//! where, looked up by slot number and by gfn. Data only; the ioctls that
//! change it are in `memslot.rs`.

use std::collections::BTreeMap;
use std::sync::Weak;

use privmem_core::backend::MEM_READONLY;

use crate::backing::ModelShared;
use crate::gmem::GmemFile;

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
    pub(crate) fn key(&self) -> (u64, u64) {
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
    /// Per address space (index `as_id`: at most 2, checked by the ioctl),
    /// its slots as `(base_gfn, end_gfn, id)`, sorted by base and disjoint:
    /// the fault path's lookup ([`Slots::find`]) is one binary search of a
    /// few contiguous entries (two lookups a fault, on the path every
    /// implicit conversion takes).
    by_gfn: Vec<Vec<(u64, u64, u32)>>,
}

impl Slots {
    /// The slot of address space 0 containing `gfn` (guests never run in
    /// SMM here, so their faults see address space 0 only).
    pub(crate) fn find(&self, gfn: u64) -> Option<&Slot> {
        let space = self.by_gfn.first()?;
        let i = space.partition_point(|&(base, _, _)| base <= gfn);
        let &(_, end, id) = space.get(i.checked_sub(1)?)?;
        (gfn < end).then(|| &self.by_id[&id])
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
    pub(crate) fn overlaps(&self, id: u32, base: u64, npages: u64) -> bool {
        let Some(space) = self.by_gfn.get(usize::from(as_id(id))) else {
            return false;
        };
        let end = base + npages;
        // Slots are disjoint: only the other slot with the highest base
        // below `end` can reach into the range.
        let below = space.partition_point(|&(b, _, _)| b < end);
        space[..below]
            .iter()
            .rev()
            .find(|&&(_, _, other)| other != id)
            .is_some_and(|&(_, e, _)| e > base)
    }

    pub(crate) fn insert(&mut self, slot: Slot) {
        let space = usize::from(as_id(slot.id));
        if self.by_gfn.len() <= space {
            self.by_gfn.resize_with(space + 1, Vec::new);
        }
        let list = &mut self.by_gfn[space];
        let i = list.partition_point(|e| e.0 < slot.base_gfn);
        list.insert(i, (slot.base_gfn, slot.end_gfn(), slot.id));
        self.by_id.insert(slot.id, slot);
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<Slot> {
        let s = self.by_id.remove(&id)?;
        if let Some(list) = self.by_gfn.get_mut(usize::from(as_id(id))) {
            list.retain(|e| e.2 != id);
        }
        Some(s)
    }
}

/// The address space of slot number `slot`.
pub(crate) fn as_id(slot: u32) -> u16 {
    (slot >> 16) as u16
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
    fn slots_find_follows_inserts_and_removals_and_ignores_other_spaces() {
        let mut s = Slots::default();
        s.insert(slot(3, 30, 5));
        s.insert(slot(1, 10, 5));
        s.insert(slot(1 << 16 | 2, 20, 5)); // address space 1 (SMM)
        assert!(s.find(20).is_none());
        assert_eq!(s.find(31).map(|x| x.id), Some(3));
        s.remove(3);
        assert!(s.find(31).is_none());
        assert_eq!(s.find(10).map(|x| x.id), Some(1));
        // MODIFY re-inserts the same slot (remove, then insert).
        let one = s.remove(1).unwrap();
        s.insert(one);
        assert_eq!(s.find(14).map(|x| x.id), Some(1));
        assert_eq!(s.by_gfn[0].len(), 1);
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
}
