//! The host page tables of a guest_memfd mapping (Linux 7.3), as far as
//! hardware poison makes them visible to userspace.
//!
//! A mapping's page-table entry for a file page is *present* once a host
//! access faulted the page in. When the page is poisoned
//! (`memory_failure` → `hwpoison_user_mappings` → `try_to_unmap(...,
//! TTU_HWPOISON)`), every present entry for it, in every mapping, becomes a
//! *hwpoison entry*: later host accesses through that mapping are SIGBUS
//! (`do_swap_page`: `VM_FAULT_HWPOISON`), whatever happens to the file.
//!
//! Verified in the 7.3 rig: `PUNCH_HOLE` drops the poisoned folio (the
//! guest and fresh mappings then get a new zero page), but it zaps with
//! `skip_cows` (`unmap_mapping_range(.., even_cows = 0)` and
//! `unmap_mapping_folio`), and `zap_nonpresent_ptes` keeps hwpoison entries
//! then: a mapping that had the page stays SIGBUS there. `MADV_DONTNEED`
//! zaps without details (`should_zap_cows` true) and clears them; so does
//! `munmap`. A mapping that never had the page present gets no entry.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use privmem_core::attrmap::AttrMap;
use privmem_core::{Gpa, GpaRange, PAGE_SIZE};

/// One mapping's entries, by file page (`pgoff`; a model mapping maps the
/// file from offset 0).
#[derive(Debug, Default)]
pub(crate) struct Ptes {
    /// Present entries ("private" in the map means present).
    present: AttrMap,
    /// Hwpoison entries.
    hwpoison: BTreeSet<u64>,
}

/// A mapping's entries, shared with its file (which poisons them).
pub(crate) type SharedPtes = Arc<Mutex<Ptes>>;

/// Locks `p` (a panic elsewhere leaves the sets consistent: each update is
/// one call).
pub(crate) fn lock(p: &Mutex<Ptes>) -> MutexGuard<'_, Ptes> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pages `[first, end)` as a range of the attribute map (`None` if empty
/// or out of range).
fn pages(first: u64, end: u64) -> Option<GpaRange> {
    let len = end.checked_sub(first)?.checked_mul(PAGE_SIZE)?;
    GpaRange::new(Gpa(first.checked_mul(PAGE_SIZE)?), len).ok()
}

impl Ptes {
    /// A host access faulted pages `[first, end)` in.
    pub(crate) fn fault_in(&mut self, first: u64, end: u64) {
        if let Some(r) = pages(first, end) {
            self.present.set(r, true);
        }
    }

    /// The first page in `[first, end)` with a hwpoison entry.
    pub(crate) fn first_hwpoison(&self, first: u64, end: u64) -> Option<u64> {
        self.hwpoison.range(first..end).next().copied()
    }

    /// `try_to_unmap(TTU_HWPOISON)` for page `pg`: a present entry becomes
    /// a hwpoison entry.
    pub(crate) fn poison(&mut self, pg: u64) {
        let Some(r) = pages(pg, pg + 1) else {
            return;
        };
        if self.present.is_private(r.start()) {
            self.present.set(r, false);
            self.hwpoison.insert(pg);
        }
    }

    /// A zap that skips "COWed" entries (truncation, punch-hole): present
    /// entries go, hwpoison entries stay.
    pub(crate) fn zap_present(&mut self, first: u64, end: u64) {
        if let Some(r) = pages(first, end) {
            self.present.set(r, false);
        }
    }

    /// A zap without details (`MADV_DONTNEED`): every entry goes.
    pub(crate) fn zap_all(&mut self, first: u64, end: u64) {
        self.zap_present(first, end);
        let hit: Vec<u64> = self.hwpoison.range(first..end).copied().collect();
        for pg in hit {
            self.hwpoison.remove(&pg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_present_entries_become_hwpoison_and_only_dontneed_clears_them() {
        let mut p = Ptes::default();
        p.fault_in(0, 2);
        p.poison(1);
        p.poison(3); // never present: no entry
        assert_eq!(p.first_hwpoison(0, 8), Some(1));
        assert_eq!(p.first_hwpoison(2, 8), None);
        p.zap_present(0, 8);
        assert_eq!(p.first_hwpoison(0, 8), Some(1), "punch keeps it");
        p.zap_all(1, 2);
        assert_eq!(p.first_hwpoison(0, 8), None);
        p.poison(0);
        assert_eq!(p.first_hwpoison(0, 8), None, "zapped: no longer present");
    }
}
