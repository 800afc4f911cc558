//! The engine's slots: splitting a range into per-slot pieces, refusing
//! what no slot can convert, and adding and removing slots at run time
//! (memory hotplug, virtio-mem) under the range locks.

use std::sync::{Arc, PoisonError};

use super::{ConvertError, ConvertTo, Engine};
use crate::contract::{ConversionBackend, VmSupport};
use crate::slot::{self, SlotDesc, SlotError};
use crate::types::{Gpa, GpaRange, SlotId};

/// One slot-sized piece of a range: pages `range` of slot `slot`.
pub(super) struct Piece<'a, G, S> {
    pub(super) slot: &'a SlotDesc<G, S>,
    pub(super) range: GpaRange,
}

impl<G, S> Piece<'_, G, S> {
    /// Byte offset of the piece from the slot's first page.
    pub(super) fn slot_offset(&self) -> u64 {
        self.range
            .start()
            .checked_offset_from(self.slot.range.start())
            .unwrap_or(0)
    }
}

/// Splits `range` into per-slot pieces, in order; the iterator ends with
/// `Err(first uncovered gpa)` at a gap. No allocation.
pub(super) fn pieces<'a, G, S>(
    slots: &'a [Arc<SlotDesc<G, S>>],
    range: GpaRange,
) -> impl Iterator<Item = Result<Piece<'a, G, S>, Gpa>> + 'a {
    let mut cursor = range.start();
    let first = slots.partition_point(|s| s.range.end() <= cursor);
    let mut iter = slots[first..].iter();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || cursor >= range.end() {
            return None;
        }
        let piece = iter
            .next()
            .filter(|s| s.range.contains(cursor))
            .and_then(|slot| {
                let r = GpaRange::from_bounds(cursor, slot.range.end().min(range.end()))?;
                Some(Piece { slot, range: r })
            });
        match piece {
            Some(p) => {
                cursor = p.range.end();
                Some(Ok(p))
            }
            None => {
                failed = true;
                Some(Err(cursor))
            }
        }
    })
}

/// Refuses a range that covers some memslot and some gap. (A range wholly
/// outside memory passes: converting it to shared is a no-op.)
pub(super) fn refuse_partly_outside<G, S>(
    slots: &[Arc<SlotDesc<G, S>>],
    range: GpaRange,
) -> Result<(), ConvertError> {
    let first = slots.partition_point(|s| s.range.end() <= range.start());
    let touches = slots.get(first).is_some_and(|s| s.range.overlaps(range));
    if !touches {
        return Ok(());
    }
    match pieces(slots, range).find_map(Result::err) {
        Some(gap) => Err(ConvertError::Refused {
            gpa: gap.raw(),
            why: format!("{range} is only partly inside guest memory (gap at {gap})"),
        }),
        None => Ok(()),
    }
}

/// Refuses a conversion that cannot succeed: no private memory, a gap, a
/// slot without guest_memfd (a gap is reported first).
pub(super) fn refuse_unconvertible<G, S>(
    slots: &[Arc<SlotDesc<G, S>>],
    range: GpaRange,
    to: ConvertTo,
    support: VmSupport,
) -> Result<(), ConvertError> {
    if !support.vm_type.has_private_mem() {
        return Err(ConvertError::Refused {
            gpa: range.start().raw(),
            why: format!("the {} VM has no private memory", support.vm_type.name()),
        });
    }
    let mut no_gmem = None;
    for piece in pieces(slots, range) {
        match piece {
            Err(gpa) => {
                return Err(ConvertError::Refused {
                    gpa: gpa.raw(),
                    why: format!("{range} is not fully covered by memslots (gap at {gpa})"),
                })
            }
            Ok(p) if p.slot.gmem.is_none() => {
                no_gmem.get_or_insert(p);
            }
            Ok(_) => {}
        }
    }
    match no_gmem {
        Some(p) => Err(ConvertError::Refused {
            gpa: p.range.start().raw(),
            why: format!(
                "{} is not backed by guest_memfd (slot {}), so it cannot become {}",
                p.range,
                p.slot.id.0,
                to.name()
            ),
        }),
        None => Ok(()),
    }
}

impl<B: ConversionBackend> Engine<B> {
    /// Adds a memslot, from its one description: checks it against its
    /// backings ([`SlotDesc::validate`]) and the slots already there, has
    /// the backend create the kernel memslot from the same description, and
    /// only then makes it part of the engine's view. Safe while vCPUs run:
    /// it holds the range lock of the new slot's range.
    pub fn add_slot(&self, desc: SlotDesc<B::Gmem, B::Shared>) -> Result<(), SlotError> {
        desc.validate()?;
        let _edit = self
            .slot_edit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.slots();
        if let Some(other) = slot::conflict(&current, desc.id, desc.range) {
            return Err(SlotError::Conflict {
                id: desc.id.0,
                range: desc.range,
                other: other.id.0,
                other_range: other.range,
            });
        }
        let _range = self.attrs.lock(desc.range);
        self.backend
            .set_memslot(&desc)
            .map_err(|source| SlotError::Kernel {
                id: desc.id.0,
                source,
            })?;
        let mut next: Vec<_> = current.iter().cloned().collect();
        let at = next.partition_point(|s| s.range.start() < desc.range.start());
        next.insert(at, Arc::new(desc));
        self.publish(next);
        Ok(())
    }

    /// Removes memslot `id`: waits for conversions over its range, retries
    /// any discard deferred inside it (refused if that still fails), has
    /// the backend delete the kernel memslot, then drops it from the
    /// engine's view. Attributes are the VM's, not the slot's: the map keeps
    /// them, as the kernel does.
    pub fn remove_slot(&self, id: SlotId) -> Result<(), SlotError> {
        let _edit = self
            .slot_edit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.slots();
        let slot = current
            .iter()
            .find(|s| s.id == id)
            .ok_or(SlotError::NoSuchSlot { id: id.0 })?;
        let _range = self.attrs.lock(slot.range);
        self.settle_pending_strict(&current, slot.range)
            .map_err(|(range, source)| SlotError::PendingDiscard {
                id: id.0,
                range,
                source,
            })?;
        self.backend
            .delete_memslot(id)
            .map_err(|source| SlotError::Kernel { id: id.0, source })?;
        let next = current.iter().filter(|s| s.id != id).cloned().collect();
        self.publish(next);
        Ok(())
    }

    fn publish(&self, next: Vec<Arc<SlotDesc<B::Gmem, B::Shared>>>) {
        self.slots.store(Arc::new(next));
    }
}

impl<B: ConversionBackend> Engine<B>
where
    B::Shared: Clone,
{
    /// The VMM closes slot `id`'s guest_memfd: the engine drops its handle,
    /// so once nothing else holds the file the kernel's binding dies
    /// (`kvm_gmem_release`), and conversions over the slot are refused from
    /// then on. The kernel memslot stays. Returns false if the slot has no
    /// guest_memfd.
    pub fn close_gmem(&self, id: SlotId) -> Result<bool, SlotError> {
        let _edit = self
            .slot_edit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.slots();
        let slot = current
            .iter()
            .find(|s| s.id == id)
            .ok_or(SlotError::NoSuchSlot { id: id.0 })?;
        if slot.gmem.is_none() {
            return Ok(false);
        }
        let _range = self.attrs.lock(slot.range);
        let without = Arc::new(SlotDesc {
            id: slot.id,
            range: slot.range,
            gmem: None,
            shared: slot.shared.as_ref().map(|s| crate::slot::SharedBinding {
                mem: s.mem.clone(),
                offset: s.offset,
            }),
        });
        let next = current
            .iter()
            .map(|s| {
                if s.id == id {
                    without.clone()
                } else {
                    s.clone()
                }
            })
            .collect();
        self.publish(next);
        Ok(true)
    }
}
