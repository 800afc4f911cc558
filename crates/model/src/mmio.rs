//! MMIO SPTEs of software-protected VMs: the state that makes a gfn's
//! earlier no-slot (MMIO) access change how a later access to it resolves.
//!
//! With the TDP MMU, a guest access to a gfn without a memslot installs an
//! MMIO SPTE (`make_mmio_spte`) stamped with the memslot generation. Range
//! zaps (attribute changes, PUNCH_HOLE, memslot deletion on non-default
//! VMs) skip it, as it is not shadow-present (`tdp_mmu_zap_leafs`); only a
//! later fault that installs another SPTE for the gfn replaces it. A later
//! access to the gfn takes a reserved-bit fault, for which
//! `kvm_mmu_page_fault` does **not** derive `PFERR_PRIVATE_ACCESS` from the
//! attributes:
//!
//! - SPTE of the current generation → `handle_mmio_page_fault` emulates:
//!   an MMIO exit, whatever the attributes say;
//! - stale SPTE (a memslot changed since) → the normal fault path with
//!   `is_private = false`, so a private gfn gives a *shared*
//!   `KVM_EXIT_MEMORY_FAULT` (`kvm_mmu_faultin_pfn`'s mismatch check).
//!
//! Linux 6.12 `arch/x86/kvm/mmu/mmu.c` (`kvm_mmu_page_fault`,
//! `handle_mmio_page_fault`, `check_mmio_spte`), found by the rig
//! differential. Default VMs never see a difference (nothing is private),
//! and the model's coco VMs take privateness from the access, so only
//! sw-protected VMs keep this state.
//!
//! The generation counts memslot changes: the VM's own
//! `KVM_SET_USER_MEMORY_REGION*` calls, and the runtime-area memslot
//! privmem's KVM backend installs in `load_program` and deletes with the
//! vCPU, which the model's vCPUs count the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What a gfn's MMIO SPTE makes of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Spte {
    /// No MMIO SPTE: the attributes decide.
    None,
    /// Current generation: emulated as MMIO.
    Live,
    /// Older generation: the normal path, as a shared access.
    Stale,
}

/// Per-VM MMIO SPTEs: gfn → the memslot generation it was installed at.
#[derive(Debug, Default)]
pub(crate) struct MmioSptes {
    generation: AtomicU64,
    any: AtomicBool,
    sptes: Mutex<BTreeMap<u64, u64>>,
}

impl MmioSptes {
    /// A memslot changed (`kvm_swap_active_memslots` bumps the generation).
    pub(crate) fn memslots_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The SPTE state of `gfn`.
    pub(crate) fn lookup(&self, gfn: u64) -> Spte {
        if !self.any.load(Ordering::Acquire) {
            return Spte::None;
        }
        let sptes = self.sptes.lock().expect("mmio sptes");
        match sptes.get(&gfn) {
            None => Spte::None,
            Some(&g) if g == self.generation.load(Ordering::Acquire) => Spte::Live,
            Some(_) => Spte::Stale,
        }
    }

    /// The first gfn in `(gfn, end)` with an MMIO SPTE, if any: a run of
    /// pages that resolve alike must stop there.
    pub(crate) fn next_after(&self, gfn: u64, end: u64) -> Option<u64> {
        if !self.any.load(Ordering::Acquire) || gfn.saturating_add(1) >= end {
            return None;
        }
        let sptes = self.sptes.lock().expect("mmio sptes");
        sptes.range(gfn + 1..end).next().map(|(&g, _)| g)
    }

    /// A no-slot access installed an MMIO SPTE for `gfn`.
    pub(crate) fn install(&self, gfn: u64) {
        let mut sptes = self.sptes.lock().expect("mmio sptes");
        sptes.insert(gfn, self.generation.load(Ordering::Acquire));
        self.any.store(true, Ordering::Release);
    }

    /// A fault mapped `gfn` to memory, replacing its MMIO SPTE.
    pub(crate) fn replace(&self, gfn: u64) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut sptes = self.sptes.lock().expect("mmio sptes");
        sptes.remove(&gfn);
        self.any.store(!sptes.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_spte_is_live_until_a_memslot_changes() {
        let m = MmioSptes::default();
        assert_eq!(m.lookup(5), Spte::None);
        m.install(5);
        assert_eq!(m.lookup(5), Spte::Live);
        assert_eq!(m.lookup(6), Spte::None);
        m.memslots_changed();
        assert_eq!(m.lookup(5), Spte::Stale);
        m.install(5);
        assert_eq!(m.lookup(5), Spte::Live);
        m.replace(5);
        assert_eq!(m.lookup(5), Spte::None);
    }

    #[test]
    fn next_after_finds_the_first_spte_past_a_gfn() {
        let m = MmioSptes::default();
        assert_eq!(m.next_after(0, 100), None);
        m.install(7);
        m.install(3);
        assert_eq!(m.next_after(0, 100), Some(3));
        assert_eq!(m.next_after(3, 100), Some(7));
        assert_eq!(m.next_after(3, 7), None);
        assert_eq!(m.next_after(7, 100), None);
    }
}
