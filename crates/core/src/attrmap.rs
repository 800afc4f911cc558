//! A coalesced range map of page attributes.
//!
//! Only PRIVATE exists as an attribute, so the map stores the set of private
//! ranges; absence means shared. Keys are guest frame numbers (GFNs), so every
//! range is page-aligned by construction.
//!
//! Invariants (checked by [`AttrMap::check_invariants`], and locally after
//! every mutation in debug builds):
//! 1. every stored range `[start, end)` is non-empty: `start < end`;
//! 2. ranges are disjoint and sorted (the tree's key order);
//! 3. no two stored ranges touch: for neighbours `a`, `b`, `a.end < b.start`
//!    (equal-valued neighbours are always merged, so the map is canonical:
//!    one attribute assignment has exactly one representation).
//!
//! Set, point query and the range walk are O(log n + k) for k touched ranges.
//! Storage is a cache-conscious B+ tree of `(start, end)` pairs ([`tree`]),
//! sized so that a random lookup stays in the last-level cache: a leaf is
//! one cache line holding up to 14 ranges as 16-bit offsets from a per-leaf
//! base, as long as its ranges lie within 2^16 pages of its first start;
//! other leaves (long or sparse ranges) hold up to 3 absolute pairs in the
//! line, or point to a block of them. Memory depends on the number of
//! ranges, not the guest size: a 1 TiB guest with 10^6 fragments (one per
//! MiB) takes ~10 MiB, 10 B per range; leaves with a block cost up to
//! 320 B per 3 to 14 ranges.

pub mod striped;
mod tree;

use crate::types::{Gpa, GpaRange, PAGE_SHIFT};
use tree::Tree;

/// The attribute map: a canonical set of private GFN ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttrMap {
    /// start gfn → end gfn (exclusive), private ranges only.
    ranges: Tree,
}

/// A maximal run of pages with one attribute inside a queried range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The pages.
    pub range: GpaRange,
    /// Their attribute.
    pub private: bool,
}

fn gfn_span(range: GpaRange) -> (u64, u64) {
    let start = range.start().raw() >> PAGE_SHIFT;
    let end = (range.end().raw() - 1) >> PAGE_SHIFT;
    (start, end + 1)
}

fn gfn_range(start: u64, end: u64) -> GpaRange {
    // gfns come from valid GpaRanges, so start < end <= 2^52; the last page's
    // exclusive end (2^64) is clamped to u64::MAX, the largest representable end.
    let e = if end >= 1 << (64 - PAGE_SHIFT) {
        u64::MAX
    } else {
        end << PAGE_SHIFT
    };
    GpaRange::from_bounds(Gpa(start << PAGE_SHIFT), Gpa(e))
        .expect("attrmap ranges are non-empty by invariant 1")
}

impl AttrMap {
    /// An all-shared map.
    pub fn new() -> AttrMap {
        AttrMap::default()
    }

    /// A map where `range` is private.
    pub fn with_private(range: GpaRange) -> AttrMap {
        let mut m = AttrMap::new();
        m.set(range, true);
        m
    }

    /// Number of stored (private) ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True if everything is shared.
    pub fn is_empty(&self) -> bool {
        self.ranges.len() == 0
    }

    /// Is the page holding `gpa` private?
    #[inline]
    pub fn is_private(&self, gpa: Gpa) -> bool {
        let gfn = gpa.raw() >> PAGE_SHIFT;
        self.ranges.pred_le(gfn).is_some_and(|(_, end)| gfn < end)
    }

    /// Number of private pages inside `range` (rounded out to pages).
    pub fn private_pages_in(&self, range: GpaRange) -> u64 {
        let (start, end) = gfn_span(range);
        self.overlapping(start, end)
            .map(|(s, e)| e.min(end) - s.max(start))
            .sum()
    }

    /// True if every page of `range` has attribute `private`. O(log n).
    pub fn is_uniform(&self, range: GpaRange, private: bool) -> bool {
        let (start, end) = gfn_span(range);
        let covering = self
            .ranges
            .pred_le(start)
            .map(|(_, e)| e)
            .filter(|&e| e > start);
        if private {
            // Canonical ranges never touch: one stored range must cover it.
            covering.is_some_and(|e| e >= end)
        } else {
            covering.is_none() && self.ranges.first_ge(start).is_none_or(|(s, _)| s >= end)
        }
    }

    /// The maximal same-attribute run that starts at `range`'s first page,
    /// clipped to `range` (rounded out to pages): the first element of
    /// [`AttrMap::runs`] without building the rest. O(log n).
    pub fn first_run(&self, range: GpaRange) -> Run {
        let (start, end) = gfn_span(range);
        if let Some((_, e)) = self.ranges.pred_le(start) {
            if e > start {
                return Run {
                    range: gfn_range(start, e.min(end)),
                    private: true,
                };
            }
        }
        // A range starting at `start` would have been found above.
        let next = self.ranges.first_ge(start).map_or(end, |(s, _)| s.min(end));
        Run {
            range: gfn_range(start, next),
            private: false,
        }
    }

    /// Stored ranges overlapping `[start, end)` (gfns), in order.
    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.ranges.pred_lt(start).filter(|&(_, e)| e > start);
        let rest = self
            .ranges
            .iter_from(start)
            .take_while(move |&(s, _)| s < end);
        first.into_iter().chain(rest)
    }

    /// Sets `range` (rounded out to pages) to `private`. Returns the number of
    /// pages whose attribute changed. O(log n + k), no allocation beyond the
    /// map's own nodes.
    pub fn set(&mut self, range: GpaRange, private: bool) -> u64 {
        let (start, end) = gfn_span(range);
        let changed = if private {
            self.insert_private(start, end)
        } else {
            self.remove_private(start, end)
        };
        self.debug_check_local(start, end);
        changed
    }

    /// Makes `[start, end)` private, merging every range it overlaps or
    /// touches. Returns the pages that were shared before.
    fn insert_private(&mut self, start: u64, end: u64) -> u64 {
        // Private pages of [start, end) before the change.
        let mut covered = 0;
        let mut new_end = end;
        // Ranges beginning inside [start, end] (touching at `end` counts:
        // invariant 3) are absorbed.
        while let Some((s, e)) = self.ranges.first_ge(start).filter(|&(s, _)| s <= end) {
            covered += e.min(end) - s;
            new_end = new_end.max(e);
            self.ranges.remove(s);
        }
        // A range beginning before `start` that reaches it is extended in
        // place. Ranges never touch, so it ends before any absorbed one.
        if let Some((s, e)) = self.ranges.pred_lt(start) {
            if e >= start {
                covered += e.min(end) - start;
                self.ranges.set_value(s, e.max(new_end));
                return (end - start) - covered;
            }
        }
        self.ranges.insert(start, new_end);
        (end - start) - covered
    }

    /// Makes `[start, end)` shared, trimming or splitting the ranges it
    /// overlaps. Returns the pages that were private before.
    fn remove_private(&mut self, start: u64, end: u64) -> u64 {
        let mut removed = 0;
        // A range beginning before `start` keeps its head; if it also
        // reaches past `end`, its tail becomes a range of its own and
        // nothing else can overlap (ranges are disjoint).
        if let Some((s, old_end)) = self.ranges.pred_lt(start) {
            if old_end > start {
                self.ranges.set_value(s, start);
                removed += old_end.min(end) - start;
                if old_end > end {
                    self.ranges.insert(end, old_end);
                    return removed;
                }
            }
        }
        while let Some((s, e)) = self.ranges.first_ge(start).filter(|&(s, _)| s < end) {
            removed += e.min(end) - s;
            if e > end {
                // Its tail [end, e) stays: same place in the order (the next
                // range starts after e), so the key moves in place.
                self.ranges.rekey_up(s, end);
                break;
            }
            self.ranges.remove(s);
        }
        removed
    }

    /// The maximal same-attribute runs covering `range` (rounded out to pages).
    pub fn runs(&self, range: GpaRange) -> Vec<Run> {
        self.runs_iter(range).collect()
    }

    /// [`AttrMap::runs`] as an iterator (no allocation).
    ///
    /// The first run costs one descent ([`AttrMap::first_run`]) and is
    /// usually the only one (a conversion changes one run); only a range
    /// that holds more walks the stored ranges from where it ends. The
    /// first run is maximal, so the next one has the other attribute.
    pub fn runs_iter(&self, range: GpaRange) -> impl Iterator<Item = Run> + '_ {
        let first = self.first_run(range);
        let rest = GpaRange::from_bounds(first.range.end(), range.end());
        std::iter::once(first).chain(rest.into_iter().flat_map(|r| self.walk_runs(r)))
    }

    /// [`AttrMap::runs_iter`] by walking the stored ranges that overlap
    /// `range`.
    fn walk_runs(&self, range: GpaRange) -> impl Iterator<Item = Run> + '_ {
        let (start, end) = gfn_span(range);
        let mut stored = self.overlapping(start, end).peekable();
        let mut cursor = start;
        std::iter::from_fn(move || {
            if cursor >= end {
                return None;
            }
            let (next, private) = match stored.peek() {
                Some(&(s, e)) if s <= cursor => {
                    stored.next();
                    (e.min(end), true)
                }
                Some(&(s, _)) => (s, false),
                None => (end, false),
            };
            let run = Run {
                range: gfn_range(cursor, next),
                private,
            };
            cursor = next;
            Some(run)
        })
    }

    /// All private ranges, in address order.
    pub fn private_ranges(&self) -> impl Iterator<Item = GpaRange> + '_ {
        self.ranges.iter().map(|(s, e)| gfn_range(s, e))
    }

    /// Heap bytes held by the map's nodes (arena chunks, links, free list).
    pub fn heap_bytes(&self) -> usize {
        self.ranges.heap_bytes()
    }

    /// Checks all invariants. O(n).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.ranges.check()?;
        let mut prev_end: Option<u64> = None;
        for (s, e) in self.ranges.iter() {
            if s >= e {
                return Err(format!("empty range [{s:#x}, {e:#x})"));
            }
            if let Some(pe) = prev_end {
                if pe >= s {
                    return Err(format!(
                        "range at gfn {s:#x} touches or overlaps previous ending {pe:#x}"
                    ));
                }
            }
            prev_end = Some(e);
        }
        Ok(())
    }

    /// Checks the invariants around `[start, end)` only: O(log n + k).
    fn debug_check_local(&self, start: u64, end: u64) {
        if cfg!(debug_assertions) {
            let lo = self.ranges.pred_lt(start).map_or(0, |(s, _)| s);
            let hi = self.ranges.first_ge(end).map_or(u64::MAX, |(s, _)| s);
            let mut prev_end: Option<u64> = None;
            for (s, e) in self.ranges.iter_from(lo).take_while(|&(s, _)| s <= hi) {
                assert!(s < e, "attrmap invariant 1 broken at gfn {s:#x}");
                if let Some(pe) = prev_end {
                    assert!(pe < s, "attrmap invariant 3 broken at gfn {s:#x}");
                }
                prev_end = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests;
