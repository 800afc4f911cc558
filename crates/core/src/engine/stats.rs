//! The engine's counters: what it converted and discarded, and what its
//! listeners and pre-faults did. Kept sharded per thread ([`Counters`]),
//! read as one [`Stats`] snapshot ([`Engine::stats`](super::Engine::stats)).

use crate::counter::Counters;

/// One of the engine's counters (the index into its [`Counters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Stat {
    ToPrivatePages,
    ToSharedPages,
    Explicit,
    Implicit,
    DiscardedGmem,
    DiscardedShared,
    DeferredDiscards,
    ListenerRefusals,
    ListenerPanics,
    PrefaultCalls,
    PrefaultErrors,
}

/// How many [`Stat`]s there are.
const COUNT: usize = Stat::PrefaultErrors as usize + 1;

/// The engine's live counters.
#[derive(Debug, Default)]
pub(crate) struct StatCells(Counters<COUNT>);

impl StatCells {
    /// Adds `n` to `stat`.
    pub(crate) fn add(&self, stat: Stat, n: u64) {
        self.0.add(stat as usize, n);
    }

    /// Adds each `(stat, n)`, with one shard lookup.
    pub(crate) fn add_each<const K: usize>(&self, adds: [(Stat, u64); K]) {
        self.0.add_each(adds.map(|(s, n)| (s as usize, n)));
    }

    /// Every counter's total.
    pub(crate) fn snapshot(&self) -> Stats {
        let c = self.0.snapshot();
        let at = |s: Stat| c[s as usize];
        Stats {
            to_private_pages: at(Stat::ToPrivatePages),
            to_shared_pages: at(Stat::ToSharedPages),
            explicit: at(Stat::Explicit),
            implicit: at(Stat::Implicit),
            discarded_gmem: at(Stat::DiscardedGmem),
            discarded_shared: at(Stat::DiscardedShared),
            deferred_discards: at(Stat::DeferredDiscards),
            listener_refusals: at(Stat::ListenerRefusals),
            listener_panics: at(Stat::ListenerPanics),
            prefault_calls: at(Stat::PrefaultCalls),
            prefault_errors: at(Stat::PrefaultErrors),
        }
    }
}

/// The engine's counters at one moment, from
/// [`Engine::stats`](super::Engine::stats): totals since the engine was
/// created, over all threads. Counts racing with the read may or may not be
/// in it, as with any statistics read while they move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pages converted to private.
    pub to_private_pages: u64,
    /// Pages converted to shared.
    pub to_shared_pages: u64,
    /// Explicit conversions (`MAP_GPA_RANGE`, [`Origin::Explicit`](super::Origin::Explicit)) that changed something.
    pub explicit: u64,
    /// Implicit conversions (memory faults, [`Origin::Implicit`](super::Origin::Implicit)) that changed something.
    pub implicit: u64,
    /// guest_memfd pages punched (discarded when going shared).
    pub discarded_gmem: u64,
    /// Shared pages discarded (when going private).
    pub discarded_shared: u64,
    /// Discards that failed after the attributes changed and were deferred
    /// (retried before any later conversion touches their range).
    pub deferred_discards: u64,
    /// Conversions to shared a listener refused.
    pub listener_refusals: u64,
    /// Listener calls that panicked (caught; see
    /// [`Engine::listener_panics`](super::Engine::listener_panics)).
    pub listener_panics: u64,
    /// `KVM_PRE_FAULT_MEMORY` calls made.
    pub prefault_calls: u64,
    /// `KVM_PRE_FAULT_MEMORY` calls that failed (ignored: the guest's own
    /// access faults the page in).
    pub prefault_errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stat_lands_in_its_own_field() {
        let cells = StatCells::default();
        let all = [
            Stat::ToPrivatePages,
            Stat::ToSharedPages,
            Stat::Explicit,
            Stat::Implicit,
            Stat::DiscardedGmem,
            Stat::DiscardedShared,
            Stat::DeferredDiscards,
            Stat::ListenerRefusals,
            Stat::ListenerPanics,
            Stat::PrefaultCalls,
            Stat::PrefaultErrors,
        ];
        for (i, s) in all.into_iter().enumerate() {
            cells.add(s, 1 << i);
        }
        let s = cells.snapshot();
        let got = [
            s.to_private_pages,
            s.to_shared_pages,
            s.explicit,
            s.implicit,
            s.discarded_gmem,
            s.discarded_shared,
            s.deferred_discards,
            s.listener_refusals,
            s.listener_panics,
            s.prefault_calls,
            s.prefault_errors,
        ];
        assert_eq!(got, std::array::from_fn(|i| 1 << i));
    }
}
