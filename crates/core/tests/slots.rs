//! Slots described once, added and removed at run time (model).

mod common;

use common::{add_slot, guest, map, model, range};
use privmem_core::backend::{SharedKind, Vm};
use privmem_core::engine::{ConvertError, ConvertTo, EngineConfig, Origin, Outcome};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc, SlotError};
use privmem_core::{Errno, GmemFlags, Gpa, SlotId, VmType};
use privmem_model::embed::{self, ModelEngine};
use privmem_model::InjectOp;

const MIB: u64 = 1 << 20;

fn engine() -> (std::sync::Arc<privmem_model::ModelHypervisor>, ModelEngine) {
    model(VmType::SwProtected, EngineConfig::default())
}

/// The kernel's memslot covers exactly the engine's slot range.
fn kernel_covers_exactly(e: &ModelEngine, id: u16, start: u64, len: u64) {
    let vm = e.vm();
    assert_eq!(vm.slot_of(Gpa(start)), Some(u32::from(id)));
    assert_eq!(vm.slot_of(Gpa(start + len - 0x1000)), Some(u32::from(id)));
    assert_ne!(vm.slot_of(Gpa(start + len)), Some(u32::from(id)));
}

#[test]
fn one_description_makes_the_memslot_and_the_engine_slot() {
    let (_hv, e) = engine();
    add_slot(&e, 4, 2 * MIB, MIB);
    kernel_covers_exactly(&e, 4, 2 * MIB, MIB);
    let slots = e.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(
        (slots[0].id, slots[0].range),
        (SlotId(4), range(2 * MIB, MIB))
    );
}

#[test]
fn a_slot_larger_than_its_backing_is_refused_before_the_kernel_sees_it() {
    let (_hv, e) = engine();
    let vm = e.vm();
    // A slot twice the size of its guest_memfd (the mismatch the issue found).
    let desc = SlotDesc {
        id: SlotId(0),
        range: range(0, 2 * MIB),
        gmem: Some(GmemBinding {
            file: vm.create_guest_memfd(MIB, GmemFlags(0)).unwrap(),
            offset: 0,
        }),
        shared: Some(SharedBinding {
            mem: vm.create_shared(2 * MIB, SharedKind::Memfd).unwrap(),
            offset: 0,
        }),
    };
    let err = e.add_slot(desc).unwrap_err();
    assert!(
        matches!(&err, SlotError::Invalid { id: 0, why } if why.contains("guest_memfd of 0x100000 bytes is smaller than the slot")),
        "{err}"
    );
    // And twice its shared backing, via an offset.
    let desc = SlotDesc {
        id: SlotId(0),
        range: range(0, MIB),
        gmem: Some(GmemBinding {
            file: vm.create_guest_memfd(MIB, GmemFlags(0)).unwrap(),
            offset: 0,
        }),
        shared: Some(SharedBinding {
            mem: vm.create_shared(MIB, SharedKind::Memfd).unwrap(),
            offset: 0x1000,
        }),
    };
    let err = e.add_slot(desc).unwrap_err();
    assert!(err.to_string().contains("shared backing"), "{err}");
    assert!(e.slots().is_empty());
    assert_eq!(vm.slot_count(), 0, "the kernel never saw either");
}

#[test]
fn overlaps_id_reuse_and_kernel_refusals_change_nothing() {
    let (hv, e) = engine();
    add_slot(&e, 0, 0, MIB);
    let overlap = embed::slot(e.vm(), 1, range(MIB / 2, MIB)).unwrap();
    assert!(matches!(
        e.add_slot(overlap),
        Err(SlotError::Conflict {
            id: 1,
            other: 0,
            ..
        })
    ));
    let same_id = embed::slot(e.vm(), 0, range(4 * MIB, MIB)).unwrap();
    assert!(matches!(
        e.add_slot(same_id),
        Err(SlotError::Conflict {
            id: 0,
            other: 0,
            ..
        })
    ));
    hv.inject_failure(InjectOp::SetUserMemoryRegion, 1, Errno::ENOMEM);
    let refused = embed::slot(e.vm(), 1, range(MIB, MIB)).unwrap();
    let err = e.add_slot(refused).unwrap_err();
    assert!(
        matches!(&err, SlotError::Kernel { id: 1, source } if source.errno() == Some(Errno::ENOMEM)),
        "{err}"
    );
    assert_eq!(e.slots().len(), 1);
    assert_eq!(e.vm().slot_count(), 1);
    assert!(matches!(
        e.remove_slot(SlotId(9)),
        Err(SlotError::NoSuchSlot { id: 9 })
    ));
}

#[test]
fn hotplug_then_unplug_while_the_map_stays_the_kernels() {
    let (_hv, e) = engine();
    add_slot(&e, 0, 0, MIB);
    // Before the hotplug the range beyond is no memory.
    let (_, rets) = guest(&e, 0, &[map(MIB, 4, true)]);
    assert_eq!(rets, [-22]);
    add_slot(&e, 1, MIB, MIB);
    // Across both slots now.
    let (_, rets) = guest(&e, 1, &[map(MIB - 0x2000, 4, true)]);
    assert_eq!(rets, [0]);
    assert!(e.attr_map().is_private(Gpa(MIB + 0x1000)));
    e.remove_slot(SlotId(1)).unwrap();
    assert_eq!(e.vm().slot_of(Gpa(MIB)), None);
    // Attributes are the VM's: both views keep them.
    assert_eq!(e.vm().attributes(), e.attr_map());
    assert!(e.attr_map().is_private(Gpa(MIB)));
    // Converting across the hole is refused; wholly outside, to shared, where
    // no page is private, is a no-op.
    assert!(matches!(
        e.convert(
            Gpa(MIB - 0x1000),
            0x2000,
            ConvertTo::Shared,
            Origin::Explicit
        ),
        Err(ConvertError::Refused { .. })
    ));
    assert_eq!(
        e.convert(Gpa(8 * MIB), 0x1000, ConvertTo::Shared, Origin::Explicit),
        Ok(Outcome::NoOp)
    );
    // Plugged back (fresh memory), the pages still private convert back.
    add_slot(&e, 1, MIB, MIB);
    assert_eq!(
        e.convert(Gpa(MIB), 0x2000, ConvertTo::Shared, Origin::Explicit),
        Ok(Outcome::Converted { pages: 2 })
    );
    assert_eq!(e.vm().attributes(), e.attr_map());
}

#[test]
fn removal_retries_deferred_discards_and_refuses_while_they_fail() {
    let (hv, e) = engine();
    add_slot(&e, 0, 0, MIB);
    hv.inject_failure(InjectOp::DiscardShared, 1, Errno::EIO);
    assert_eq!(
        e.convert(Gpa(0), 0x1000, ConvertTo::Private, Origin::Explicit),
        Ok(Outcome::Converted { pages: 1 })
    );
    assert_eq!(e.pending_discards().len(), 1);
    hv.inject_failure(InjectOp::DiscardShared, 1, Errno::EIO);
    let err = e.remove_slot(SlotId(0)).unwrap_err();
    assert!(
        matches!(err, SlotError::PendingDiscard { id: 0, .. }),
        "{err}"
    );
    assert_eq!(e.slots().len(), 1);
    e.remove_slot(SlotId(0)).unwrap();
    assert!(e.pending_discards().is_empty());
    assert_eq!(e.vm().slot_count(), 0);
}

#[test]
fn a_closed_guest_memfd_makes_the_slot_unconvertible() {
    let (_hv, e) = engine();
    add_slot(&e, 0, 0, MIB);
    assert!(e.close_gmem(SlotId(0)).unwrap());
    let err = e
        .convert(Gpa(0), 0x1000, ConvertTo::Private, Origin::Explicit)
        .unwrap_err();
    assert!(
        err.to_string().contains("not backed by guest_memfd"),
        "{err}"
    );
    assert!(!e.close_gmem(SlotId(0)).unwrap());
}
