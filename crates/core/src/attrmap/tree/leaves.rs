//! All leaves: their lines ([`super::leaf`]), the extension blocks of the
//! extended ones, and the links.
//!
//! Mutations edit a leaf in place where they can (a narrow leaf whose base
//! stays, an extended leaf's pairs) and otherwise decode it into pairs,
//! edit and re-encode (splits and merges work on [`Ents`]); the tree above
//! never sees the encoding. A leaf in a line form is always exactly what
//! [`Leaf::encode`] makes of its entries; an extended leaf stays extended
//! through in-place edits, and is re-encoded (into a line, if its entries
//! fit one) by the next edit that decodes it.

use super::arena::{Arena, Flat, Node, NIL};
use super::ents::Ents;
use super::leaf::{fits_narrow, Form, Leaf, CAP, EMPTY_LEAF, INLINE_CAP, MAX_KEY, PAD};

/// An extended leaf's pairs: 16 slots so the search is a fixed 4 + 1
/// probes; unused are `(PAD, PAD)`.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Block {
    ents: [(u64, u64); 16],
}

const EMPTY_BLOCK: Block = Block {
    ents: [(PAD, PAD); 16],
};

impl Node for Block {
    const EMPTY: Block = EMPTY_BLOCK;
}

impl Node for Leaf {
    const EMPTY: Leaf = EMPTY_LEAF;
}

impl Block {
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

/// Leaf links: previous and next leaf in key order.
#[derive(Clone, Copy, Debug)]
struct Links {
    prev: u32,
    next: u32,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(super) struct Leaves {
    lines: Arena<Leaf>,
    /// Few and small: flat, so an extended leaf costs one more load.
    blocks: Flat<Block>,
    links: Vec<Links>,
}

impl Leaves {
    pub(super) fn new() -> Leaves {
        Leaves {
            lines: Arena::new(),
            blocks: Flat::new(),
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

    fn block(&self, l: &Leaf) -> &Block {
        self.blocks.get(l.ext())
    }

    /// Entries of leaf `id` with key <= x.
    #[inline]
    pub(super) fn rank(&self, id: u32, x: u64) -> usize {
        let l = self.lines.get(id);
        match l.form() {
            Form::Ext => self.block(l).rank(x),
            _ => l.rank(x),
        }
    }

    /// Entry `j` (< len) of leaf `id`.
    #[inline]
    pub(super) fn entry(&self, id: u32, j: usize) -> (u64, u64) {
        let l = self.lines.get(id);
        match l.form() {
            Form::Ext => self.block(l).ents[j],
            _ => l.entry(j),
        }
    }

    /// The entry of leaf `id` with the largest key <= x, if the leaf has
    /// one: the point query's only leaf access.
    #[inline]
    pub(super) fn pred(&self, id: u32, x: u64) -> Option<(u64, u64)> {
        let l = self.lines.get(id);
        if !l.is_narrow() {
            return self.pred_other(id, x);
        }
        l.narrow_rank(x).checked_sub(1).map(|j| l.narrow_entry(j))
    }

    /// [`Leaves::pred`] of an inline or extended leaf, out of the narrow
    /// lookup's way.
    #[inline(never)]
    fn pred_other(&self, id: u32, x: u64) -> Option<(u64, u64)> {
        let j = self.rank(id, x).checked_sub(1)?;
        Some(self.entry(id, j))
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
        let l = self.lines.get(id);
        match l.form() {
            Form::Ext => Ents::from_slice(&self.block(l).ents[..l.len()]),
            _ => Ents::from_fn(l.len(), |j| l.entry(j)),
        }
    }

    /// Stores `e` (sorted, at most [`CAP`] entries, keys <= [`MAX_KEY`]) as
    /// leaf `id`'s entries, in the form [`Leaf::encode`] gives.
    pub(super) fn write(&mut self, id: u32, e: &[(u64, u64)]) {
        assert!(e.len() <= CAP, "a leaf holds at most {CAP} entries");
        debug_assert!(e.iter().all(|kv| kv.0 <= MAX_KEY));
        let old = *self.lines.get(id);
        if self.lines.get_mut(id).encode_into(e) {
            if old.form() == Form::Ext {
                self.blocks.release(old.ext());
            }
            return;
        }
        let ext = match old.form() {
            Form::Ext => old.ext(),
            _ => self.blocks.alloc(),
        };
        let b = self.blocks.get_mut(ext);
        *b = EMPTY_BLOCK;
        b.ents[..e.len()].copy_from_slice(e);
        *self.lines.get_mut(id) = Leaf::extended(ext, e.len());
    }

    /// Edits extended leaf `id`'s pairs in place with `f` (given the pairs
    /// and the count, it returns the new count): an edit costs what one of
    /// absolute pairs does. The leaf stays extended even if its pairs now
    /// fit a line (the next re-encode makes it one): a leaf of short ranges
    /// and one long tail, trimmed and re-extended by every conversion of a
    /// chunk, would otherwise change form twice per conversion.
    fn edit_block(&mut self, id: u32, f: impl FnOnce(&mut [(u64, u64); 16], usize) -> usize) {
        let l = *self.lines.get(id);
        let (ext, n) = (l.ext(), l.len());
        let b = self.blocks.get_mut(ext);
        let m = f(&mut b.ents, n);
        debug_assert!(m <= CAP);
        if m < n {
            b.ents[m..n].fill((PAD, PAD));
        }
        *self.lines.get_mut(id) = Leaf::extended(ext, m);
    }

    /// Edits leaf `id` as absolute pairs: `f` gets them (with room for
    /// one more) and the count, and returns the new count; then the leaf
    /// is re-encoded. In place for an extended leaf, and for an inline one
    /// that stays inline.
    fn edit_pairs(&mut self, id: u32, f: impl FnOnce(&mut [(u64, u64)], usize) -> usize) {
        let l = self.lines.get_mut(id);
        let n = l.len();
        match l.form() {
            Form::Ext => self.edit_block(id, |e, n| f(e, n)),
            Form::Inline => {
                let mut e = l.inline_entries();
                let m = f(&mut e, n);
                if m <= INLINE_CAP && !fits_narrow(&e[..m]) {
                    l.inline_into(&e[..m]);
                } else {
                    self.write(id, &e[..m]);
                }
            }
            Form::Narrow => {
                let mut e = [(PAD, PAD); CAP + 1];
                for (j, kv) in e[..n].iter_mut().enumerate() {
                    *kv = l.narrow_entry(j);
                }
                let m = f(&mut e, n);
                self.write(id, &e[..m]);
            }
        }
    }

    /// Replaces entry `j` of leaf `id` by `kv`, which keeps the keys
    /// sorted.
    pub(super) fn set(&mut self, id: u32, j: usize, kv: (u64, u64)) {
        let l = self.lines.get_mut(id);
        if !(l.is_narrow() && l.try_set(j, kv)) {
            self.edit_pairs(id, |e, n| {
                e[j] = kv;
                n
            });
        }
    }

    /// Inserts `kv` as entry `j` of leaf `id`, which has room; the keys
    /// stay sorted.
    pub(super) fn insert(&mut self, id: u32, j: usize, kv: (u64, u64)) {
        let l = self.lines.get_mut(id);
        assert!(l.len() < CAP, "insert into a full leaf");
        if !(l.is_narrow() && l.try_insert(j, kv)) {
            self.edit_pairs(id, |e, n| {
                e.copy_within(j..n, j + 1);
                e[j] = kv;
                n + 1
            });
        }
    }

    /// Removes entry `j` of leaf `id` and returns it.
    pub(super) fn remove(&mut self, id: u32, j: usize) -> (u64, u64) {
        let kv = self.entry(id, j);
        let l = self.lines.get_mut(id);
        if !(l.is_narrow() && l.try_remove(j)) {
            self.edit_pairs(id, |e, n| {
                e.copy_within(j + 1..n, j);
                n - 1
            });
        }
        kv
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
    pub(super) fn free(&mut self, id: u32) {
        let Links { prev, next } = self.links[id as usize];
        if prev != NIL {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
        let l = *self.lines.get(id);
        if l.form() == Form::Ext {
            self.blocks.release(l.ext());
        }
        self.lines.release(id);
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.lines.heap_bytes()
            + self.blocks.heap_bytes()
            + self.links.capacity() * std::mem::size_of::<Links>()
    }

    /// Checks leaf `id`'s encoding: count, sorted keys, and form and
    /// padding (a line form is exactly what [`Leaf::encode`] makes of its
    /// entries; an extended leaf has padded pairs, and its entries need
    /// the block or it was edited in place since it last did).
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
        let encoded = match (l.form(), Leaf::encode(e.as_slice())) {
            (Form::Ext, _) => {
                *l == Leaf::extended(l.ext(), n)
                    && self.block(l).ents[n..].iter().all(|&kv| kv == (PAD, PAD))
            }
            (_, line) => line == Some(*l),
        };
        if !encoded {
            return Err(format!("leaf {id} is not encoded as its form requires"));
        }
        Ok(())
    }

    /// Extended leaves among `leaves`, and extension blocks in use (they
    /// must match).
    pub(super) fn ext_counts(&self, leaves: &[u32]) -> (usize, usize) {
        let ext = leaves
            .iter()
            .filter(|&&id| self.lines.get(id).form() == Form::Ext)
            .count();
        (ext, self.blocks.live())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_four_cache_lines() {
        assert_eq!(std::mem::size_of::<Block>(), 256);
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
            (0..3).map(|i| (i << 40, (i << 40) + 1)).collect(),
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
        assert_eq!(ls.blocks.live(), 0, "a line form frees the block");
        assert_eq!(ls.pred(id, 5), None);
    }

    #[test]
    fn edits_move_between_forms() {
        // One edit at a time through narrow, inline and extended, checking
        // the canonical form after each against a plain vector.
        let mut ls = Leaves::new();
        let id = ls.alloc();
        let mut want: Vec<(u64, u64)> = Vec::new();
        let mut x = 0x2545_f491u64;
        for round in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let scale = [1, 0x1000, 1 << 30][(round / 2000 % 3) as usize];
            let key = x % 40 * scale;
            let val = key + [1, 0xffff, 0x1_0000, x >> 20][(x >> 8) as usize % 4];
            let j = want.partition_point(|kv| kv.0 < key);
            let present = want.get(j).is_some_and(|kv| kv.0 == key);
            match (x >> 4) % 3 {
                0 if present => assert_eq!(ls.remove(id, j), want.remove(j)),
                1 if present => {
                    ls.set(id, j, (key, val));
                    want[j] = (key, val);
                }
                _ if !present && want.len() < CAP => {
                    ls.insert(id, j, (key, val));
                    want.insert(j, (key, val));
                }
                _ => continue,
            }
            ls.check(id).unwrap();
            assert_eq!(ls.read(id).as_slice(), &want[..]);
            let (ext, blocks) = ls.ext_counts(&[id]);
            assert_eq!(ext, blocks);
        }
    }
}
