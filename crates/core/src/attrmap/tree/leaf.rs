//! The tree's leaves: one cache line of 16-bit offsets each, with a wide
//! fallback.
//!
//! A leaf holds up to [`CAP`] `(key, value)` entries (start gfn, end gfn),
//! sorted by key. It is one 64-byte line:
//! - **narrow** (the usual form): a head word with the base (the first
//!   key) and the entry count, then the 14 keys and the 14 values as 16-bit
//!   offsets from the base. A lookup reads this one line: a branch-free
//!   search of the keys, then the value beside them. Unused key slots hold
//!   `0xffff`, above every key offset (at most `0xfffe`), so the search
//!   needs no count. A leaf is narrow iff every key is within `0xfffe` and
//!   every value within `0xffff` of the base: in the attribute map, iff its
//!   ranges lie in 2^16 pages (256 MiB) from its first start. At a million
//!   ranges in 1 TiB (one per 1 MiB), every leaf is narrow.
//! - **wide** (anything else: long or sparse ranges): the head holds the
//!   count and the id of an extension block of 16 absolute `(u64, u64)`
//!   pairs (four lines, unused pairs `u64::MAX`); a lookup reads the line,
//!   then the block.
//!
//! Writes always choose the narrow form when it fits, so the form is a
//! function of the entries, and an extension block exists exactly for the
//! wide leaves. Mutations decode a leaf into [`Ents`], edit and re-encode:
//! the tree above never sees the encoding.

use super::arena::{Arena, NIL};

/// Entries per leaf.
pub(super) const CAP: usize = 14;
/// Largest key a leaf stores: the narrow base has 52 bits (gfns are below
/// 2^52).
pub(super) const MAX_KEY: u64 = BASE_MASK;
/// Padding of unused narrow key slots.
const PAD16: u16 = u16::MAX;
/// Largest narrow key offset (below the padding).
const MAX_KEY_OFF: u64 = PAD16 as u64 - 1;
/// Largest narrow value offset.
const MAX_VAL_OFF: u64 = u16::MAX as u64;
/// Padding of unused wide slots: above every key.
const PAD: u64 = u64::MAX;
/// Head bits 0..52: the base (narrow) or the extension id (wide).
const BASE_MASK: u64 = (1 << 52) - 1;
/// Head bits 52..56: the entry count.
const LEN_SHIFT: u32 = 52;
const LEN_MASK: u64 = 0xf;
/// Head bit 63: the leaf is wide.
const WIDE: u64 = 1 << 63;

/// A leaf's cache line. See the module docs.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Leaf {
    head: u64,
    /// Narrow key offsets, sorted; unused are `PAD16`.
    keys: [u16; CAP],
    /// Narrow value offsets; unused are 0.
    vals: [u16; CAP],
}

const EMPTY_LEAF: Leaf = Leaf {
    head: 0,
    keys: [PAD16; CAP],
    vals: [0; CAP],
};

/// A wide leaf's entries: 16 slots so the search is a fixed 4 + 1 probes.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Wide {
    ents: [(u64, u64); 16],
}

const EMPTY_WIDE: Wide = Wide {
    ents: [(PAD, PAD); 16],
};

impl Leaf {
    #[inline]
    fn is_wide(&self) -> bool {
        self.head & WIDE != 0
    }

    /// The base (narrow) or the extension id (wide).
    #[inline]
    fn low(&self) -> u64 {
        self.head & BASE_MASK
    }

    #[inline]
    fn len(&self) -> usize {
        ((self.head >> LEN_SHIFT) & LEN_MASK) as usize
    }

    /// Narrow: entries with key <= x, by a branch-free binary search over
    /// the 14 key slots (two virtual padding slots make it 16).
    #[inline]
    fn rank(&self, x: u64) -> usize {
        let base = self.low();
        let o = x.wrapping_sub(base).min(MAX_KEY_OFF) as u16;
        let k = &self.keys;
        let mut i = 0;
        for step in [8, 4, 2] {
            i += usize::from(k[i + step - 1] <= o) * step;
        }
        i += usize::from(k.get(i).is_some_and(|&v| v <= o));
        if x < base {
            0
        } else {
            i
        }
    }

    /// Narrow: entry `j`.
    #[inline]
    fn entry(&self, j: usize) -> (u64, u64) {
        let base = self.low();
        (
            base + u64::from(self.keys[j]),
            base + u64::from(self.vals[j]),
        )
    }

    /// The narrow encoding of `e` (at most [`CAP`] entries, sorted), if
    /// every offset fits.
    fn narrow(e: &[(u64, u64)]) -> Option<Leaf> {
        let base = e.first().map_or(0, |kv| kv.0);
        let mut l = EMPTY_LEAF;
        l.head = base | (e.len() as u64) << LEN_SHIFT;
        for (i, &(k, v)) in e.iter().enumerate() {
            let ko = k.checked_sub(base).filter(|&o| o <= MAX_KEY_OFF)?;
            let vo = v.checked_sub(base).filter(|&o| o <= MAX_VAL_OFF)?;
            l.keys[i] = ko as u16;
            l.vals[i] = vo as u16;
        }
        Some(l)
    }
}

impl Wide {
    /// Entries with key <= x (a branch-free binary search).
    #[inline]
    fn rank(&self, x: u64) -> usize {
        // Keys are at most MAX_KEY, the padding above.
        let x = x.min(MAX_KEY);
        let e = &self.ents;
        let mut i = 0;
        for step in [8, 4, 2, 1] {
            i += usize::from(e[i + step - 1].0 <= x) * step;
        }
        i + usize::from(e[i].0 <= x)
    }
}

/// Decoded entries of up to two leaves, for edits, splits and merges.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ents {
    e: [(u64, u64); 2 * CAP],
    n: usize,
}

impl Ents {
    fn new() -> Ents {
        Ents {
            e: [(PAD, PAD); 2 * CAP],
            n: 0,
        }
    }

    pub(super) fn as_slice(&self) -> &[(u64, u64)] {
        &self.e[..self.n]
    }

    pub(super) fn len(&self) -> usize {
        self.n
    }

    pub(super) fn get(&self, j: usize) -> (u64, u64) {
        self.as_slice()[j]
    }

    pub(super) fn set(&mut self, j: usize, kv: (u64, u64)) {
        self.e[..self.n][j] = kv;
    }

    /// Entries with key <= x.
    pub(super) fn rank(&self, x: u64) -> usize {
        self.as_slice().partition_point(|kv| kv.0 <= x)
    }

    pub(super) fn insert(&mut self, j: usize, kv: (u64, u64)) {
        assert!(j <= self.n && self.n < self.e.len());
        self.e.copy_within(j..self.n, j + 1);
        self.e[j] = kv;
        self.n += 1;
    }

    pub(super) fn remove(&mut self, j: usize) -> (u64, u64) {
        let kv = self.get(j);
        self.e.copy_within(j + 1..self.n, j);
        self.n -= 1;
        kv
    }

    /// Appends `other`'s entries (the two fit in one buffer).
    pub(super) fn append(&mut self, other: &Ents) {
        let n = self.n + other.n;
        self.e[self.n..n].copy_from_slice(other.as_slice());
        self.n = n;
    }

    /// Splits off the entries from `at` on.
    pub(super) fn split_off(&mut self, at: usize) -> Ents {
        let mut rest = Ents::new();
        rest.n = self.n - at;
        rest.e[..rest.n].copy_from_slice(&self.e[at..self.n]);
        self.n = at;
        rest
    }
}

/// Leaf links: previous and next leaf in key order.
#[derive(Clone, Copy, Debug)]
struct Links {
    prev: u32,
    next: u32,
}

/// All leaves: their lines, the extension blocks of the wide ones, and
/// the links.
#[derive(Clone, Debug)]
pub(super) struct Leaves {
    lines: Arena<Leaf>,
    wide: Arena<Wide>,
    links: Vec<Links>,
}

impl Leaves {
    pub(super) fn new() -> Leaves {
        Leaves {
            lines: Arena::new(EMPTY_LEAF),
            wide: Arena::new(EMPTY_WIDE),
            links: Vec::new(),
        }
    }

    /// A new, empty, unlinked leaf.
    pub(super) fn alloc(&mut self) -> u32 {
        let id = self.lines.alloc();
        let l = Links {
            prev: NIL,
            next: NIL,
        };
        if id as usize == self.links.len() {
            self.links.push(l);
        } else {
            self.links[id as usize] = l;
        }
        id
    }

    pub(super) fn len(&self, id: u32) -> usize {
        self.lines.get(id).len()
    }

    fn wide_of(&self, l: &Leaf) -> &Wide {
        self.wide.get(l.low() as u32)
    }

    /// Entries of leaf `id` with key <= x.
    #[inline]
    pub(super) fn rank(&self, id: u32, x: u64) -> usize {
        let l = self.lines.get(id);
        if l.is_wide() {
            self.wide_of(l).rank(x)
        } else {
            l.rank(x)
        }
    }

    /// Entry `j` (< len) of leaf `id`.
    #[inline]
    pub(super) fn entry(&self, id: u32, j: usize) -> (u64, u64) {
        let l = self.lines.get(id);
        if l.is_wide() {
            self.wide_of(l).ents[j]
        } else {
            l.entry(j)
        }
    }

    /// The entry of leaf `id` with the largest key <= x, if the leaf has
    /// one: the point query's only leaf access.
    #[inline]
    pub(super) fn pred(&self, id: u32, x: u64) -> Option<(u64, u64)> {
        let l = self.lines.get(id);
        if l.is_wide() {
            return self.wide_pred(l, x);
        }
        l.rank(x).checked_sub(1).map(|j| l.entry(j))
    }

    /// [`Leaves::pred`] of a wide leaf, out of the narrow lookup's way.
    #[cold]
    #[inline(never)]
    fn wide_pred(&self, l: &Leaf, x: u64) -> Option<(u64, u64)> {
        let w = self.wide_of(l);
        w.rank(x).checked_sub(1).map(|j| w.ents[j])
    }

    /// The last entry of leaf `id` (None for NIL or an empty leaf).
    pub(super) fn last(&self, id: u32) -> Option<(u64, u64)> {
        if id == NIL {
            return None;
        }
        self.len(id).checked_sub(1).map(|j| self.entry(id, j))
    }

    /// Leaf `id`'s entries, decoded.
    pub(super) fn read(&self, id: u32) -> Ents {
        let mut e = Ents::new();
        e.n = self.len(id);
        for j in 0..e.n {
            e.e[j] = self.entry(id, j);
        }
        e
    }

    /// Stores `e` (sorted, at most [`CAP`] entries, keys <= [`MAX_KEY`]) as
    /// leaf `id`'s entries: narrow if it fits, else wide.
    pub(super) fn write(&mut self, id: u32, e: &[(u64, u64)]) {
        assert!(e.len() <= CAP, "a leaf holds at most {CAP} entries");
        debug_assert!(e.iter().all(|kv| kv.0 <= MAX_KEY));
        let old = *self.lines.get(id);
        if let Some(l) = Leaf::narrow(e) {
            if old.is_wide() {
                self.wide.release(old.low() as u32);
            }
            *self.lines.get_mut(id) = l;
            return;
        }
        let ext = if old.is_wide() {
            old.low() as u32
        } else {
            self.wide.alloc()
        };
        let w = self.wide.get_mut(ext);
        *w = EMPTY_WIDE;
        w.ents[..e.len()].copy_from_slice(e);
        let l = self.lines.get_mut(id);
        *l = EMPTY_LEAF;
        l.head = WIDE | (e.len() as u64) << LEN_SHIFT | u64::from(ext);
    }

    pub(super) fn prev(&self, id: u32) -> u32 {
        self.links[id as usize].prev
    }

    pub(super) fn next(&self, id: u32) -> u32 {
        self.links[id as usize].next
    }

    /// Links leaf `new` right after `id`.
    pub(super) fn link_after(&mut self, id: u32, new: u32) {
        let next = self.next(id);
        self.links[new as usize] = Links { prev: id, next };
        self.links[id as usize].next = new;
        if next != NIL {
            self.links[next as usize].prev = new;
        }
    }

    /// Unlinks leaf `id` and frees it (and its extension block).
    pub(super) fn remove(&mut self, id: u32) {
        let Links { prev, next } = self.links[id as usize];
        if prev != NIL {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
        let l = *self.lines.get(id);
        if l.is_wide() {
            self.wide.release(l.low() as u32);
        }
        self.lines.release(id);
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.lines.heap_bytes()
            + self.wide.heap_bytes()
            + self.links.capacity() * std::mem::size_of::<Links>()
    }

    /// Checks leaf `id`'s encoding: count, padding, sorted keys, and the
    /// canonical form (narrow iff the entries fit it).
    pub(super) fn check(&self, id: u32) -> Result<(), String> {
        let l = self.lines.get(id);
        let n = l.len();
        if n > CAP {
            return Err(format!("leaf {id} claims {n} entries"));
        }
        let e = self.read(id);
        if e.as_slice().windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(format!("leaf {id} has unsorted keys"));
        }
        let narrow = Leaf::narrow(e.as_slice());
        if l.is_wide() {
            let w = self.wide_of(l);
            if narrow.is_some() || w.ents[n..].iter().any(|&kv| kv != (PAD, PAD)) {
                return Err(format!("leaf {id}: wide form not canonical"));
            }
        } else if l.keys[n..].iter().any(|&k| k != PAD16) || l.vals[n..].iter().any(|&v| v != 0) {
            return Err(format!("leaf {id} has entries after its padding"));
        } else if narrow.is_none_or(|c| c.head != l.head) {
            return Err(format!("leaf {id}: narrow head not canonical"));
        }
        Ok(())
    }

    /// Wide leaves and extension blocks in use (they must match).
    pub(super) fn wide_counts(&self, leaves: &[u32]) -> (usize, usize) {
        let wide = leaves
            .iter()
            .filter(|&&id| self.lines.get(id).is_wide())
            .count();
        (wide, self.wide.live())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Leaf>(), 64);
        assert_eq!(std::mem::align_of::<Leaf>(), 64);
        assert_eq!(std::mem::size_of::<Wide>(), 256);
    }

    #[test]
    fn narrow_boundaries() {
        // The largest offsets that fit, and one past each.
        assert!(Leaf::narrow(&[(10, 11), (10 + 0xfffe, 10 + 0xffff)]).is_some());
        assert!(Leaf::narrow(&[(10, 11), (10 + 0xffff, 10 + 0xffff)]).is_none());
        assert!(Leaf::narrow(&[(10, 11), (20, 10 + 0x1_0000)]).is_none());
        assert!(Leaf::narrow(&[(10, 9)]).is_none());
        assert!(Leaf::narrow(&[(MAX_KEY, MAX_KEY + 1)]).is_some());
        assert!(Leaf::narrow(&[]).is_some());
    }

    #[test]
    fn rank_and_pred_agree_across_forms() {
        let mut ls = Leaves::new();
        let id = ls.alloc();
        for ents in [
            vec![(100u64, 101u64), (200, 300), (0xfffe + 100, 0xffff + 100)],
            vec![(100, 101), (200, 1 << 40)],
            vec![(5, 6)],
            (0..14).map(|i| (i * 7 + 3, i * 7 + 5)).collect(),
            (0..14).map(|i| (i << 40, (i << 40) + 1)).collect(),
        ] {
            ls.write(id, &ents);
            ls.check(id).unwrap();
            assert_eq!(ls.read(id).as_slice(), &ents[..]);
            let xs = ents
                .iter()
                .flat_map(|&(k, v)| [k.wrapping_sub(1), k, k + 1, v - 1, v, v + 1]);
            for x in xs.chain([0, 0xfffe, 0xffff, 0x1_0000, MAX_KEY, u64::MAX]) {
                let want = ents.iter().filter(|kv| kv.0 <= x).count();
                assert_eq!(ls.rank(id, x), want, "x={x:#x} in {ents:x?}");
                assert_eq!(ls.pred(id, x), want.checked_sub(1).map(|j| ents[j]));
            }
        }
        ls.write(id, &[]);
        assert_eq!(ls.wide.live(), 0, "going narrow frees the extension");
        assert_eq!(ls.pred(id, 5), None);
    }
}
