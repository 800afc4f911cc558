//! [`StripedMap`]: the engine's attribute map and range locks, striped by
//! address, so that vCPUs converting different parts of guest memory take
//! no common lock and write no common cache line.
//!
//! Why: with one map behind one mutex, plus one range-lock table, two vCPUs
//! converting 4 KiB pages of two different slots bounced those locks' lines
//! between their cores on every conversion. Measured on a 2-core PVM guest
//! (model backend, 2 × 64 MiB slots): two vCPUs converted at 0.7-0.8x the
//! rate of one. With the map and the locks split this way, 1.3-1.7x.
//!
//! # Layout
//! Guest-physical space is cut into chunks of `2^chunk_shift` bytes
//! ([`CHUNK_SHIFT`] by default: 64 MiB); chunk `c` belongs to stripe
//! `c % stripes` ([`STRIPES`] by default). Each stripe has its own
//! cache-padded [`AttrMap`] mutex and [`RangeLocks`].
//!
//! # Invariants
//! 1. **A stripe's map is authoritative on its own chunks only.** A `set`
//!    writes the whole range into every stripe it touches, not the range
//!    clipped to each stripe's chunks. So a stripe also holds values for
//!    other stripes' chunks; no query ever reads them. This keeps every
//!    stripe as coalesced as the true map: 1 TiB made private is one stored
//!    range per stripe, not one per chunk. A `set` writes only addresses of
//!    its own range, so two disjoint ranges never overwrite each other's
//!    pages, in any stripe.
//! 2. **The true map** at an address is the value in the stripe that owns
//!    its chunk. [`StripedMap::snapshot`] rebuilds it from each stripe's own
//!    chunks; [`StripedMap::runs`] merges the per-chunk answers into maximal
//!    runs, exactly as [`AttrMap::runs`] on the true map would.
//! 3. **Map locks** are taken in ascending stripe order: all at once by
//!    `set` and `snapshot` (a snapshot never sees half of a `set`), one at a
//!    time by the range walk, whose caller holds the range lock, so no `set`
//!    of that range runs meanwhile.
//! 4. **Range locks**: a range is held in every stripe it touches, taken in
//!    ascending stripe order. Two overlapping ranges share a chunk, hence a
//!    stripe, so they exclude each other there; a locker waits only on a
//!    stripe above every one it holds, so no cycle, no deadlock.

use std::ops::ControlFlow;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{AttrMap, Run};
use crate::rangelock::{RangeGuard, RangeLocks};
use crate::types::{Gpa, GpaRange, PAGE_SHIFT};

/// Default chunk size, as a shift: 64 MiB. Large enough that a 1 TiB range
/// is 16384 chunks (the cost of a walk or a snapshot over it), small enough
/// that two RAM regions or two halves of one rarely share a stripe.
pub const CHUNK_SHIFT: u32 = 26;

/// Default number of stripes (a power of two): more than the vCPUs that
/// usually convert at once. Two conversions in one stripe are still correct, only not parallel.
pub const STRIPES: usize = 16;

/// One stripe, on its own cache lines (two: CPUs that prefetch pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    map: Mutex<AttrMap>,
    locks: RangeLocks,
}

/// The attribute map and range locks, striped by address (see the module
/// documentation for the layout and invariants).
#[derive(Debug)]
pub struct StripedMap {
    stripes: Box<[Stripe]>,
    chunk_shift: u32,
}

/// Holds a range (in every stripe it touches) until dropped.
#[derive(Debug)]
pub struct RangeHold<'a> {
    _guards: Guards<RangeGuard<'a>>,
}

/// A piece of a range inside one chunk, and the stripe that owns it.
#[derive(Clone, Copy, Debug)]
struct Piece {
    range: GpaRange,
    stripe: usize,
}

impl Default for StripedMap {
    fn default() -> StripedMap {
        StripedMap::new()
    }
}

impl StripedMap {
    /// All shared, nothing locked, default geometry.
    pub fn new() -> StripedMap {
        StripedMap::with_geometry(CHUNK_SHIFT, STRIPES)
    }

    /// All shared, with chunks of `2^chunk_shift` bytes (clamped to at
    /// least one page, at most 2^63) in `stripes` stripes (rounded up to a
    /// power of two, at most 2^16).
    pub fn with_geometry(chunk_shift: u32, stripes: usize) -> StripedMap {
        let stripes = stripes.clamp(1, 1 << 16).next_power_of_two();
        StripedMap {
            stripes: (0..stripes).map(|_| Stripe::default()).collect(),
            chunk_shift: chunk_shift.clamp(PAGE_SHIFT, 63),
        }
    }

    /// Blocks until no held range overlaps `range`, then holds it.
    #[inline]
    pub fn lock(&self, range: GpaRange) -> RangeHold<'_> {
        RangeHold {
            _guards: self.each_stripe_of(range, |i| self.stripes[i].locks.lock(range)),
        }
    }

    /// Sets every page of `range` (rounded out to pages) to `private`.
    /// Returns how many pages changed.
    #[inline]
    pub fn set(&self, range: GpaRange, private: bool) -> u64 {
        self.lock_range_maps(range).set(private)
    }

    /// The maps of the stripes `range` touches, locked until dropped: a
    /// check and a `set` of the range through it are one atomic step.
    #[inline]
    pub fn lock_range_maps(&self, range: GpaRange) -> LockedRange<'_> {
        LockedRange {
            striped: self,
            range,
            maps: self.each_stripe_of(range, |i| (i, self.lock_map(i))),
        }
    }

    /// Is the page holding `gpa` private?
    #[inline]
    pub fn is_private(&self, gpa: Gpa) -> bool {
        let stripe = self.stripe(self.chunk(gpa));
        self.lock_map(stripe).is_private(gpa)
    }

    /// The maximal same-attribute run that starts at `range`'s first page,
    /// clipped to `range` (rounded out to pages): [`AttrMap::first_run`] on
    /// the true map. One lock and one lookup unless `range` crosses a chunk.
    #[inline]
    pub fn first_run(&self, range: GpaRange) -> Run {
        if let Some(i) = self.only_stripe(range) {
            return self.lock_map(i).first_run(range);
        }
        let mut first = None;
        self.lock_range_maps(range).sweep(|run| {
            first = Some(run);
            ControlFlow::Break(())
        });
        first.unwrap_or_else(|| AttrMap::new().first_run(range))
    }

    /// Calls `f` with each maximal same-attribute run covering `range`
    /// (rounded out to pages), in address order: what [`AttrMap::runs_iter`]
    /// gives on the true map. The caller should hold `range` (see
    /// [`StripedMap::lock`]), or runs may mix states before and after a
    /// concurrent `set`.
    pub fn for_each_run(&self, range: GpaRange, mut f: impl FnMut(Run)) {
        if let Some(i) = self.only_stripe(range) {
            self.lock_map(i).runs_iter(range).for_each(f);
            return;
        }
        self.lock_range_maps(range).sweep(|run| {
            f(run);
            ControlFlow::Continue(())
        });
    }

    /// [`StripedMap::for_each_run`], collected.
    pub fn runs(&self, range: GpaRange) -> Vec<Run> {
        let mut out = Vec::new();
        self.for_each_run(range, |r| out.push(r));
        out
    }

    /// The true map, as one coalesced [`AttrMap`], consistent: no `set` is
    /// half applied in it.
    pub fn snapshot(&self) -> AttrMap {
        let everything = GpaRange::from_bounds(Gpa(0), Gpa(u64::MAX))
            .expect("the address space is a non-empty range");
        let locked = LockedRange {
            striped: self,
            range: everything,
            maps: Guards::Many(
                (0..self.stripes.len())
                    .map(|i| (i, self.lock_map(i)))
                    .collect(),
            ),
        };
        let mut out = AttrMap::new();
        locked.sweep(|run| {
            if run.private {
                out.set(run.range, true);
            }
            ControlFlow::Continue(())
        });
        out
    }

    /// The stripe of `range`'s one chunk, if it lies in one: the common
    /// case (a page, a 2 MiB block), served without cutting it into pieces.
    #[inline]
    fn only_stripe(&self, range: GpaRange) -> Option<usize> {
        let first = self.chunk(range.start());
        (first == self.chunk(last_byte(range))).then(|| self.stripe(first))
    }

    #[inline]
    fn chunk(&self, gpa: Gpa) -> u64 {
        gpa.raw() >> self.chunk_shift
    }

    #[inline]
    fn stripe(&self, chunk: u64) -> usize {
        // `stripes.len()` is a power of two: the remainder is a mask, and
        // below the length, a usize.
        (chunk & (self.stripes.len() as u64 - 1)) as usize
    }

    /// The stripes `range` touches, ascending, each once: a cyclic
    /// interval of stripes, so at most two plain ranges.
    fn stripes_of(&self, range: GpaRange) -> impl Iterator<Item = usize> {
        let (first, last) = (self.chunk(range.start()), self.chunk(last_byte(range)));
        let n = self.stripes.len();
        let (a, b) = (self.stripe(first), self.stripe(last));
        let (low, high) = if last - first >= n as u64 - 1 {
            (0..n, 0..0)
        } else if a <= b {
            (a..b + 1, 0..0)
        } else {
            (0..b + 1, a..n)
        };
        low.chain(high)
    }

    /// `range` cut at chunk boundaries, in address order.
    fn pieces(&self, range: GpaRange) -> impl Iterator<Item = Piece> + '_ {
        let end = range.end();
        let mut at = Some(range.start());
        std::iter::from_fn(move || {
            let start = at?;
            let chunk = self.chunk(start);
            let chunk_end = chunk
                .checked_add(1)
                .and_then(|c| c.checked_mul(1 << self.chunk_shift))
                .map_or(end, |e| Gpa(e.min(end.raw())));
            at = (chunk_end < end).then_some(chunk_end);
            Some(Piece {
                range: GpaRange::from_bounds(start, chunk_end)?,
                stripe: self.stripe(chunk),
            })
        })
    }

    #[inline]
    fn lock_map(&self, stripe: usize) -> MutexGuard<'_, AttrMap> {
        self.stripes[stripe]
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `take(i)` for each stripe `i` that `range` touches, ascending (the
    /// order locks are taken in).
    fn each_stripe_of<T>(&self, range: GpaRange, mut take: impl FnMut(usize) -> T) -> Guards<T> {
        match self.only_stripe(range) {
            Some(i) => Guards::One(take(i)),
            None => Guards::Many(self.stripes_of(range).map(take).collect()),
        }
    }
}

/// What is held in the stripes one range touches: one thing without an
/// allocation (the common case: a range inside one chunk), or several.
#[derive(Debug)]
enum Guards<T> {
    One(T),
    /// Ascending by stripe.
    Many(Vec<T>),
}

impl<T> Guards<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Guards::One(t) => std::slice::from_ref(t),
            Guards::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Guards::One(t) => std::slice::from_mut(t),
            Guards::Many(v) => v,
        }
    }
}

/// The maps of the stripes one range touches, locked
/// ([`StripedMap::lock_range_maps`]).
#[derive(Debug)]
pub struct LockedRange<'a> {
    striped: &'a StripedMap,
    range: GpaRange,
    /// Ascending by stripe.
    maps: Guards<(usize, MutexGuard<'a, AttrMap>)>,
}

impl LockedRange<'_> {
    /// True if every page of the range has attribute `private`.
    pub fn is_uniform(&self, private: bool) -> bool {
        // One guard: the range lies in one chunk.
        if let Guards::One((_, map)) = &self.maps {
            return map.is_uniform(self.range, private);
        }
        let mut uniform = true;
        self.sweep(|run| {
            uniform = run.private == private;
            if uniform {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        uniform
    }

    /// Sets every page of the range to `private`; returns how many pages
    /// changed.
    pub fn set(&mut self, private: bool) -> u64 {
        let range = self.range;
        // One guard: the range lies in one chunk.
        if let Guards::One((_, map)) = &mut self.maps {
            return map.set(range, private);
        }
        let mut changed = 0;
        self.sweep(|run| {
            if run.private != private {
                changed += pages(run.range);
            }
            ControlFlow::Continue(())
        });
        for (_, map) in self.maps.as_mut_slice() {
            map.set(range, private);
        }
        changed
    }

    /// [`sweep::sweep`] over the range.
    fn sweep(&self, f: impl FnMut(Run) -> ControlFlow<()>) {
        let maps: Vec<(usize, &AttrMap)> = self
            .maps
            .as_slice()
            .iter()
            .map(|(i, m)| (*i, &**m))
            .collect();
        sweep::sweep(self.striped, &maps, self.range, f);
    }
}

/// The address of `range`'s last byte.
fn last_byte(range: GpaRange) -> Gpa {
    Gpa(range.end().raw() - 1)
}

/// Pages in `range` (a piece: page-aligned by the callers' rounding).
fn pages(range: GpaRange) -> u64 {
    let first = range.start().raw() >> PAGE_SHIFT;
    let last = (range.end().raw() - 1) >> PAGE_SHIFT;
    last - first + 1
}

mod sweep;
#[cfg(test)]
mod tests;
