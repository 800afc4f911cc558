//! Memslots described once: a [`SlotDesc`] yields both the kernel's memslot
//! (the `KVM_SET_USER_MEMORY_REGION2` fields, [`SlotDesc::region2`]) and the
//! engine's view of the slot, so the two cannot disagree. The engine checks
//! a description against its backings before the kernel sees it
//! ([`SlotDesc::validate`]) and owns it from then on.

use crate::backend::MEM_GUEST_MEMFD;
use crate::contract::Backing;
use crate::error::BackendError;
use crate::types::{GpaRange, SlotId, PAGE_SIZE};

/// The guest_memfd half of a memslot: the file and where in it the slot's
/// first page lives (`guest_memfd`, `guest_memfd_offset`).
#[derive(Debug)]
pub struct GmemBinding<G> {
    /// The guest_memfd.
    pub file: G,
    /// Byte offset of the slot's first page in the file.
    pub offset: u64,
}

/// The shared half of a memslot: the backing `userspace_addr` points into,
/// and the byte offset of the slot's first page in it.
#[derive(Debug)]
pub struct SharedBinding<S> {
    /// The backing.
    pub mem: S,
    /// Byte offset of the slot's first page in the backing.
    pub offset: u64,
}

/// One memslot, described once.
///
/// - `gmem: Some` makes it a `KVM_MEM_GUEST_MEMFD` slot: its pages can be
///   private, and going shared punches them out of the file.
/// - `shared: Some` gives it a `userspace_addr`: shared accesses land
///   there, and going private discards it. `None` with a guest_memfd is a
///   guest_memfd-only slot (`userspace_addr = 0`, a default VM on an
///   `MMAP | INIT_SHARED` file).
#[derive(Debug)]
pub struct SlotDesc<G, S> {
    /// Memslot id (bits 15:0 of `slot`; address space 0).
    pub id: SlotId,
    /// `[guest_phys_addr, guest_phys_addr + memory_size)`.
    pub range: GpaRange,
    /// The guest_memfd, if any.
    pub gmem: Option<GmemBinding<G>>,
    /// The shared backing, if any.
    pub shared: Option<SharedBinding<S>>,
}

/// The `kvm_userspace_memory_region2` fields a [`SlotDesc`] stands for,
/// except the two host handles (`userspace_addr` and the `guest_memfd`
/// fd), which only the backend can resolve.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Region2Fields {
    /// `slot`.
    pub slot: u32,
    /// `flags`: `KVM_MEM_GUEST_MEMFD` for a guest_memfd slot, else 0.
    pub flags: u32,
    /// `guest_phys_addr`.
    pub guest_phys_addr: u64,
    /// `memory_size`.
    pub memory_size: u64,
    /// Byte offset into the shared backing that `userspace_addr` must
    /// point at (0 when there is none: `userspace_addr = 0`).
    pub shared_offset: u64,
    /// `guest_memfd_offset` (0 when there is no guest_memfd).
    pub guest_memfd_offset: u64,
}

/// Why a memslot could not be added or removed. Nothing changed (neither
/// the kernel's memslots nor the engine's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The description contradicts itself or its backings.
    #[error("memslot {id}: {why}")]
    Invalid {
        /// The slot id.
        id: u16,
        /// What is wrong, with the numbers.
        why: String,
    },
    /// The slot overlaps a slot the engine already has, or reuses its id.
    #[error("memslot {id} at {range} conflicts with memslot {other} at {other_range}")]
    Conflict {
        /// The slot id.
        id: u16,
        /// Its range.
        range: GpaRange,
        /// The existing slot's id.
        other: u16,
        /// The existing slot's range.
        other_range: GpaRange,
    },
    /// No slot with this id.
    #[error("no memslot {id}")]
    NoSuchSlot {
        /// The id asked for.
        id: u16,
    },
    /// The kernel refused the memslot change.
    #[error("memslot {id}: the kernel refused it")]
    Kernel {
        /// The slot id.
        id: u16,
        /// The kernel's error.
        #[source]
        source: BackendError,
    },
    /// Discards deferred earlier inside the slot still fail: removing the
    /// slot now could let stale data show when its memory is reused.
    #[error("memslot {id}: a deferred discard in {range} still fails")]
    PendingDiscard {
        /// The slot id.
        id: u16,
        /// The range whose discard failed.
        range: GpaRange,
        /// The discard's error.
        #[source]
        source: BackendError,
    },
}

impl<G, S> SlotDesc<G, S> {
    /// The kernel memslot's fields.
    pub fn region2(&self) -> Region2Fields {
        Region2Fields {
            slot: u32::from(self.id.0),
            flags: if self.gmem.is_some() {
                MEM_GUEST_MEMFD
            } else {
                0
            },
            guest_phys_addr: self.range.start().raw(),
            memory_size: self.range.len(),
            shared_offset: self.shared.as_ref().map_or(0, |s| s.offset),
            guest_memfd_offset: self.gmem.as_ref().map_or(0, |g| g.offset),
        }
    }

    /// True for a guest_memfd slot without a shared backing: nothing to
    /// discard when its pages go private.
    pub fn gmem_only(&self) -> bool {
        self.gmem.is_some() && self.shared.is_none()
    }
}

impl<G: Backing, S: Backing> SlotDesc<G, S> {
    /// Checks the description against its backings: page-aligned range and
    /// offsets, at least one backing, and each backing large enough for
    /// the whole slot from its offset. A slot larger than what backs it is
    /// refused here, before the kernel sees it.
    pub fn validate(&self) -> Result<(), SlotError> {
        let invalid = |why: String| SlotError::Invalid { id: self.id.0, why };
        let (start, len) = (self.range.start(), self.range.len());
        if !start.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
            return Err(invalid(format!("{} is not page-aligned", self.range)));
        }
        if self.gmem.is_none() && self.shared.is_none() {
            return Err(invalid(
                "neither a guest_memfd nor a shared backing: nothing backs it".into(),
            ));
        }
        if let Some(g) = &self.gmem {
            check_fits("guest_memfd", g.offset, len, g.file.size()).map_err(invalid)?;
        }
        if let Some(s) = &self.shared {
            check_fits("shared backing", s.offset, len, s.mem.size()).map_err(invalid)?;
        }
        Ok(())
    }
}

/// `[offset, offset + len)` must be page-aligned and inside `size` bytes.
fn check_fits(what: &str, offset: u64, len: u64, size: u64) -> Result<(), String> {
    if !offset.is_multiple_of(PAGE_SIZE) {
        return Err(format!("{what} offset {offset:#x} is not page-aligned"));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(format!(
            "{what} of {size:#x} bytes is smaller than the slot: {len:#x} bytes from offset {offset:#x}"
        )),
    }
}

/// The engine's sorted, immutable snapshot of its slots
/// ([`Engine::slots`](crate::engine::Engine::slots)). Conversions take one (a
/// reference count) and walk it; adding or removing a slot builds a new one.
pub type SlotTable<G, S> = std::sync::Arc<Vec<std::sync::Arc<SlotDesc<G, S>>>>;

/// The first slot in `table` that overlaps `range` or reuses `id`.
pub(crate) fn conflict<G, S>(
    table: &[std::sync::Arc<SlotDesc<G, S>>],
    id: SlotId,
    range: GpaRange,
) -> Option<&SlotDesc<G, S>> {
    table
        .iter()
        .map(|s| &**s)
        .find(|s| s.id == id || s.range.overlaps(range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Gpa;

    struct Mem(u64);
    impl Backing for Mem {
        fn size(&self) -> u64 {
            self.0
        }
    }

    fn desc(len: u64, gmem: Option<(u64, u64)>, shared: Option<(u64, u64)>) -> SlotDesc<Mem, Mem> {
        SlotDesc {
            id: SlotId(3),
            range: GpaRange::new(Gpa(0x10_0000), len).unwrap(),
            gmem: gmem.map(|(size, offset)| GmemBinding {
                file: Mem(size),
                offset,
            }),
            shared: shared.map(|(size, offset)| SharedBinding {
                mem: Mem(size),
                offset,
            }),
        }
    }

    #[test]
    fn region2_fields_come_from_the_one_description() {
        let d = desc(0x4000, Some((0x10000, 0x2000)), Some((0x8000, 0x1000)));
        assert_eq!(
            d.region2(),
            Region2Fields {
                slot: 3,
                flags: MEM_GUEST_MEMFD,
                guest_phys_addr: 0x10_0000,
                memory_size: 0x4000,
                shared_offset: 0x1000,
                guest_memfd_offset: 0x2000,
            }
        );
        assert!(d.validate().is_ok());
        let plain = desc(0x4000, None, Some((0x4000, 0)));
        assert_eq!(plain.region2().flags, 0);
    }

    #[test]
    fn slot_larger_than_its_backing_is_refused() {
        // The engine slot twice the size of its guest_memfd.
        let e = desc(0x8000, Some((0x4000, 0)), None)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("smaller than the slot"), "{e}");
        let e = desc(0x4000, None, Some((0x4000, 0x1000)))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("shared backing"), "{e}");
        // Exactly fitting is fine; an offset that wraps is not.
        assert!(desc(0x4000, Some((0x5000, 0x1000)), None)
            .validate()
            .is_ok());
        assert!(desc(0x4000, Some((u64::MAX, u64::MAX - 0xfff)), None)
            .validate()
            .is_err());
    }

    #[test]
    fn unaligned_or_unbacked_slots_are_refused() {
        assert!(desc(0x4000, None, None).validate().is_err());
        assert!(desc(0x4001, None, Some((0x8000, 0))).validate().is_err());
        assert!(desc(0x4000, Some((0x8000, 0x800)), None)
            .validate()
            .is_err());
    }
}
