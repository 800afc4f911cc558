//! Range locks: conversions of disjoint GPA ranges proceed in parallel,
//! overlapping ones are serialised. Not one global lock.

use std::sync::{Condvar, Mutex, PoisonError};

use smallvec::SmallVec;

use crate::types::GpaRange;

/// A set of held ranges.
#[derive(Debug, Default)]
pub struct RangeLocks {
    held: Mutex<Held>,
    freed: Condvar,
}

/// The held ranges and how many lockers wait for one of them.
#[derive(Debug, Default)]
struct Held {
    /// Inline: a heap buffer per lock table would let two tables' buffers
    /// share a cache line (see `attrmap::striped`).
    ranges: SmallVec<[GpaRange; 4]>,
    /// Lockers blocked in [`RangeLocks::lock`]: a release wakes them only if
    /// there are any, so an uncontended unlock makes no futex syscall.
    waiters: usize,
}

/// Holds a range until dropped.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: GpaRange,
}

impl RangeLocks {
    /// New, with nothing held.
    pub fn new() -> RangeLocks {
        RangeLocks::default()
    }

    /// Blocks until no held range overlaps `range`, then holds it.
    pub fn lock(&self, range: GpaRange) -> RangeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.ranges.iter().any(|r| r.overlaps(range)) {
            held.waiters += 1;
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
            held.waiters -= 1;
        }
        held.ranges.push(range);
        RangeGuard { locks: self, range }
    }

    /// Number of ranges held now.
    pub fn held(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ranges
            .len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = held.ranges.iter().position(|r| *r == self.range) {
            held.ranges.swap_remove(i);
        }
        let waiters = held.waiters > 0;
        drop(held);
        if waiters {
            self.locks.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Gpa;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn r(a: u64, len: u64) -> GpaRange {
        GpaRange::new(Gpa(a), len).unwrap()
    }

    #[test]
    fn disjoint_ranges_are_held_together() {
        let l = RangeLocks::new();
        let _a = l.lock(r(0, 4096));
        let _b = l.lock(r(4096, 4096));
        assert_eq!(l.held(), 2);
    }

    #[test]
    fn overlapping_range_waits_for_release() {
        let l = Arc::new(RangeLocks::new());
        let g = l.lock(r(0, 8192));
        let acquired = Arc::new(AtomicBool::new(false));
        let (l2, a2) = (l.clone(), acquired.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.lock(r(4096, 4096));
            a2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!acquired.load(Ordering::SeqCst));
        drop(g);
        t.join().unwrap();
        assert!(acquired.load(Ordering::SeqCst));
    }
}
