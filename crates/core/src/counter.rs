//! [`Counters`]: a set of statistics counters that vCPU threads add to
//! without sharing a cache line.
//!
//! Every conversion bumps a few counters. With one `AtomicU64` each, two
//! vCPUs converting disjoint ranges would bounce those lines between their
//! cores on every exit. `Counters` keeps one padded block of all `N`
//! counters per shard; a thread always adds to the same shard, so one
//! conversion touches one cache line of counters, and
//! [`Counters::load`] sums the shards.
//!
//! The layout is shard-major on purpose: one block per shard holding every
//! counter (8 × 128 bytes for up to 16 counters), not one padded array of
//! shards per counter, which would be 1 KiB per counter, touch a line per
//! counter bumped, and make the structure that embeds it (the engine) large
//! to create and move.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards: more than the vCPU threads that usually convert at once; two
/// threads that share a shard are still correct, only slower.
const SHARDS: usize = 8;

/// One shard: the `N` counters of one group of threads, on their own cache
/// line(s) (128-byte aligned: CPUs that prefetch line pairs).
#[derive(Debug)]
#[repr(align(128))]
struct Shard<const N: usize>([AtomicU64; N]);

/// `N` sharded event counters, indexed `0..N`; each reads as an
/// `AtomicU64` does.
#[derive(Debug)]
pub struct Counters<const N: usize> {
    shards: [Shard<N>; SHARDS],
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters {
            shards: std::array::from_fn(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0)))),
        }
    }
}

/// The shard of the calling thread, fixed at its first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl<const N: usize> Counters<N> {
    /// `N` counters at 0.
    pub fn new() -> Counters<N> {
        Counters::default()
    }

    /// Adds `n` to counter `i` (wrapping, as `AtomicU64::fetch_add` does).
    ///
    /// # Panics
    /// If `i >= N` (a caller's bug: indices are the caller's constants).
    pub fn add(&self, i: usize, n: u64) {
        self.shards[shard()].0[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds each `(i, n)` of `adds`, finding the calling thread's shard
    /// once (a conversion bumps several counters).
    ///
    /// # Panics
    /// If an `i >= N`.
    pub fn add_each<const K: usize>(&self, adds: [(usize, u64); K]) {
        let shard = &self.shards[shard()].0;
        for (i, n) in adds {
            shard[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The total of counter `i`. Adds racing with the read may or may not
    /// be counted, as with any statistics counter read while it moves.
    ///
    /// # Panics
    /// If `i >= N`.
    pub fn load(&self, i: usize) -> u64 {
        self.shards.iter().fold(0u64, |sum, s| {
            sum.wrapping_add(s.0[i].load(Ordering::Relaxed))
        })
    }

    /// Every counter's total, as [`load`](Self::load) reads each.
    pub fn snapshot(&self) -> [u64; N] {
        std::array::from_fn(|i| self.load(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sums_adds_from_many_threads() {
        let c = Arc::new(Counters::<2>::new());
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(0, i);
                        c.add(1, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 1000 * (0 + 1 + ... + 11), and 12 * 1000.
        assert_eq!(c.snapshot(), [66_000, 12_000]);
    }

    #[test]
    fn starts_at_zero_and_keeps_counters_apart() {
        let c = Counters::<3>::new();
        assert_eq!(c.snapshot(), [0, 0, 0]);
        c.add(0, 3);
        c.add(2, 4);
        c.add(2, 1);
        assert_eq!(c.snapshot(), [3, 0, 5]);
        assert_eq!(c.load(2), 5);
        c.add_each([(1, 2), (2, 10), (1, 1)]);
        assert_eq!(c.snapshot(), [3, 3, 15]);
    }

    #[test]
    fn a_shard_of_sixteen_counters_is_one_128_byte_block() {
        assert_eq!(std::mem::size_of::<Counters<16>>(), SHARDS * 128);
        assert_eq!(std::mem::size_of::<Counters<11>>(), SHARDS * 128);
    }
}
