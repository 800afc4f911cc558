//! [`Counter`]: a statistics counter that vCPU threads add to without
//! sharing a cache line.
//!
//! Every conversion bumps a few counters. With one `AtomicU64` each, two
//! vCPUs converting disjoint ranges would bounce those lines between their
//! cores on every exit. A `Counter` keeps one padded cell per shard; a
//! thread always adds to the same shard, and [`Counter::load`] sums them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per counter: more than the vCPU threads that usually convert at
/// once; two threads that share a shard are still correct, only slower.
const SHARDS: usize = 8;

/// One cache line (two on CPUs that prefetch pairs) per shard.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// A sharded event counter; reads as an `AtomicU64` does.
#[derive(Debug, Default)]
pub struct Counter {
    cells: [Cell; SHARDS],
}

/// The shard of the calling thread, fixed at its first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl Counter {
    /// A counter at 0.
    pub fn new() -> Counter {
        Counter::default()
    }

    /// Adds `n` (wrapping, as `AtomicU64::fetch_add` does).
    pub fn fetch_add(&self, n: u64, order: Ordering) {
        self.cells[shard()].0.fetch_add(n, order);
    }

    /// The total. Adds racing with the read may or may not be counted, as
    /// with any statistics counter read while it moves.
    pub fn load(&self, order: Ordering) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.0.load(order)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sums_adds_from_many_threads() {
        let c = Arc::new(Counter::new());
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.fetch_add(i, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 1000 * (0 + 1 + ... + 11)
        assert_eq!(c.load(Ordering::Relaxed), 66_000);
    }

    #[test]
    fn starts_at_zero_and_counts_one_thread() {
        let c = Counter::new();
        assert_eq!(c.load(Ordering::Relaxed), 0);
        c.fetch_add(3, Ordering::Relaxed);
        c.fetch_add(4, Ordering::Relaxed);
        assert_eq!(c.load(Ordering::Relaxed), 7);
    }
}
