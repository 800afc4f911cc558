//! A cache-conscious B+ tree map `u64 -> u64` (start gfn → end gfn) for the
//! attribute map.
//!
//! Why not `BTreeMap`: a point query on a million ranges walks ~7 levels of
//! 11-key nodes with a data-dependent (mispredicted) linear search in each,
//! and `range(..=x)` descends twice. And why this size: a random lookup
//! costs what its cache misses cost, so the map is built to stay small
//! enough (a million ranges in ~10 MiB) to live in the last-level cache:
//! - a leaf is one cache line: up to 14 entries as 16-bit offsets from a
//!   per-leaf base, searched branch-free; leaves whose ranges do not fit 16
//!   bits (long or sparse ranges) keep up to 3 absolute pairs in the line,
//!   or more in an extension block ([`leaf`], [`leaves`]);
//! - an inner node is 16 separator keys + 16 child indices (three lines),
//!   searched in two dependent steps of three compares; with ~11 children
//!   per node, the upper inner levels of a million ranges stay in the
//!   first- and second-level caches;
//! - nodes live in arenas addressed by `u32`, without per-node malloc
//!   headers ([`arena`]): leaves in a chunked one, whose growth never
//!   copies them (a million ranges hold ~6 MiB of leaves), inner nodes
//!   (~1.6 MiB) in a flat one, so a level costs one load, not two.
//!
//! Leaves are linked both ways for ordered iteration and for predecessor
//! queries. Separators are lower bounds: every key in child `i > 0` is
//! `>= keys[i]`, every key in child `i - 1` is `< keys[i]`. Nodes other than
//! the root hold at least [`MIN`] children or [`LEAF_MIN`] entries after
//! every removal (merge with, or borrow from, a sibling), so memory stays
//! within a small factor of the entries; a full leaf shares with a sibling
//! that has room before it splits, which keeps leaves ~79 % full under
//! random inserts (~70 % by splitting alone). Keys are at most [`MAX_KEY`]
//! (2^52 - 1: every gfn); values are arbitrary.

mod arena;
mod check;
mod ents;
mod leaf;
mod leaves;
#[cfg(test)]
mod tests;

use arena::{Flat, Node, NIL};
use ents::Ents;
use leaf::{CAP as LEAF_CAP, MAX_KEY};
use leaves::Leaves;

/// Children per inner node.
const CAP: usize = 16;
/// Fewest children a non-root inner node keeps.
const MIN: usize = CAP / 4;
/// Fewest entries a non-root leaf keeps.
const LEAF_MIN: usize = LEAF_CAP / 4;
/// Padding of unused separator slots: above every key.
const PAD: u64 = u64::MAX;
/// Deepest tree: each level multiplies the entries by at least MIN.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Inner {
    /// `keys[i]`: lower bound of child `i` (`keys[0]` unused, 0); unused
    /// slots are `PAD`.
    keys: [u64; CAP],
    /// Child node ids (leaves at the last inner level); unused are `NIL`.
    kids: [u32; CAP],
}

const EMPTY_INNER: Inner = Inner {
    keys: [PAD; CAP],
    kids: [NIL; CAP],
};

impl Node for Inner {
    const EMPTY: Inner = EMPTY_INNER;
}

impl Inner {
    /// Used child slots (key padding sorts last; `keys[0]` is always used).
    #[inline]
    fn len(&self) -> usize {
        self.child_for(PAD - 1) + 1
    }
    /// The child to descend into for `x`: the last `i` with `keys[i] <= x`
    /// (`keys[0]` counts as below everything). A branch-free quaternary
    /// search: three independent compares pick a block of four slots (and
    /// fetch both key lines at once), three more the slot in it. A lookup
    /// is a chain of dependent loads through ~6 nodes, so two dependent
    /// steps per node beat a binary search's four (17 % on a cache-hot walk)
    /// and 15 compares' worth of instructions.
    #[inline]
    fn child_for(&self, x: u64) -> usize {
        const _: () = assert!(CAP == 16, "the probe steps assume 16 slots");
        let k = &self.keys;
        let below = |i: usize| usize::from(k[i] <= x);
        let block = 4 * (below(4) + below(8) + below(12));
        block + below(block + 1) + below(block + 2) + below(block + 3)
    }
}

/// One step of a root-to-leaf path: an inner node and the child taken.
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    node: u32,
    slot: usize,
}

/// A root-to-leaf path.
struct Path {
    steps: [Step; MAX_DEPTH],
    depth: usize,
    leaf: u32,
}

/// The B+ tree. See the module docs.
#[derive(Clone, Debug)]
pub(super) struct Tree {
    leaves: Leaves,
    inners: Flat<Inner>,
    /// [`NIL`] until the first insert: a new tree allocates nothing (the
    /// engine and the model make one per stripe of their striped maps, most
    /// of which a VM never converts in). Once allocated, the root stays.
    root: u32,
    /// Inner levels above the leaves (0: the root is a leaf).
    height: usize,
    len: usize,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree::new()
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Tree {}

impl Tree {
    pub(super) fn new() -> Tree {
        Tree {
            leaves: Leaves::new(),
            inners: Flat::new(),
            root: NIL,
            height: 0,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.leaves.heap_bytes() + self.inners.heap_bytes()
    }

    /// The leaf whose key span holds `x` (no path).
    #[inline]
    fn find_leaf(&self, x: u64) -> u32 {
        let mut id = self.root;
        for _ in 0..self.height {
            let n = self.inners.get(id);
            id = n.kids[n.child_for(x)];
        }
        id
    }

    fn find_path(&self, x: u64) -> Path {
        let mut p = Path {
            steps: [Step::default(); MAX_DEPTH],
            depth: self.height,
            leaf: NIL,
        };
        let mut id = self.root;
        for d in 0..self.height {
            let n = self.inners.get(id);
            let slot = n.child_for(x);
            p.steps[d] = Step { node: id, slot };
            id = n.kids[slot];
        }
        p.leaf = id;
        p
    }

    /// The entry with the largest key `<= x`.
    #[inline]
    pub(super) fn pred_le(&self, x: u64) -> Option<(u64, u64)> {
        if self.root == NIL {
            return None;
        }
        // Keys are at most MAX_KEY, separator padding above.
        let x = x.min(MAX_KEY);
        let id = self.find_leaf(x);
        match self.leaves.pred(id, x) {
            Some(e) => Some(e),
            // Every key of the leaf is above x (its lower separator is
            // stale, or it is the first leaf): the predecessor, if any, is
            // the previous leaf's last entry.
            None => self.leaves.last(self.leaves.prev(id)),
        }
    }

    /// The entry with the largest key `< x`.
    pub(super) fn pred_lt(&self, x: u64) -> Option<(u64, u64)> {
        x.checked_sub(1).and_then(|y| self.pred_le(y))
    }

    /// A cursor at the first entry with key `>= x`.
    fn seek(&self, x: u64) -> (u32, usize) {
        if x > MAX_KEY || self.root == NIL {
            return (NIL, 0);
        }
        let id = self.find_leaf(x);
        let j = match x.checked_sub(1) {
            Some(y) => self.leaves.rank(id, y),
            None => 0,
        };
        if j < self.leaves.len(id) {
            (id, j)
        } else {
            (self.leaves.next(id), 0)
        }
    }

    /// Entries with key `>= x`, in order.
    pub(super) fn iter_from(&self, x: u64) -> Iter<'_> {
        let (leaf, idx) = self.seek(x);
        Iter {
            tree: self,
            leaf,
            idx,
        }
    }

    /// All entries, in order.
    pub(super) fn iter(&self) -> Iter<'_> {
        self.iter_from(0)
    }

    /// The entry with the smallest key `>= x`.
    pub(super) fn first_ge(&self, x: u64) -> Option<(u64, u64)> {
        self.iter_from(x).next()
    }

    /// The leaf holding existing key `key` and the key's index in it.
    fn locate(&self, key: u64) -> (u32, usize) {
        let id = self.find_leaf(key);
        let j = self.leaves.rank(id, key);
        debug_assert!(
            j > 0 && self.leaves.entry(id, j - 1).0 == key,
            "key {key:#x} missing"
        );
        (id, j - 1)
    }

    /// Sets the value of existing key `key`.
    pub(super) fn set_value(&mut self, key: u64, val: u64) {
        let (id, j) = self.locate(key);
        self.leaves.set(id, j, (key, val));
    }

    /// Changes the key of entry `old` to `new`, keeping its value. The
    /// caller guarantees `old < new <` the next key. In place when another
    /// entry of the same leaf follows (then `new` is below it and so below
    /// the leaf's upper separator) or the leaf is the root; otherwise, since
    /// a stale separator may lie between `old` and the next key, by removal
    /// and insertion.
    pub(super) fn rekey_up(&mut self, old: u64, new: u64) {
        let (id, j) = self.locate(old);
        let n = self.leaves.len(id);
        // A root leaf has no separators at all.
        if self.height == 0 || j + 1 < n {
            debug_assert!(old < new && (j + 1 == n || self.leaves.entry(id, j + 1).0 > new));
            let val = self.leaves.entry(id, j).1;
            self.leaves.set(id, j, (new, val));
            return;
        }
        let val = self.remove(old);
        self.insert(new, val);
    }

    /// Inserts `key` (absent, at most [`MAX_KEY`]) with `val`.
    pub(super) fn insert(&mut self, key: u64, val: u64) {
        assert!(key <= MAX_KEY, "tree keys are gfns, below 2^52");
        self.len += 1;
        if self.root == NIL {
            self.root = self.leaves.alloc();
        }
        let id = self.find_leaf(key);
        let j = self.leaves.rank(id, key);
        debug_assert!(
            j == 0 || self.leaves.entry(id, j - 1).0 != key,
            "insert of a present key"
        );
        if self.leaves.len(id) < LEAF_CAP {
            self.leaves.insert(id, j, (key, val));
            return;
        }
        self.insert_overflowing(id, j, key, val);
    }

    /// [`insert`](Self::insert) into full leaf `id` at rank `j`. Out of
    /// line: its buffers (the overflowing entries, the path) stay off the
    /// stack of the common insert, which then touches fewer stack pages.
    #[cold]
    #[inline(never)]
    fn insert_overflowing(&mut self, id: u32, j: usize, key: u64, val: u64) {
        let mut e = self.leaves.read(id);
        e.insert(j, (key, val));
        // Overflow: only now is the path needed. Share with a sibling that
        // has room, else split: the upper half moves to a new leaf on the
        // right.
        let p = self.find_path(key);
        if self.spill(&p, &e) {
            return;
        }
        let right = e.split_off(e.len() / 2);
        self.leaves.write(p.leaf, e.as_slice());
        let new = self.leaves.alloc();
        self.leaves.write(new, right.as_slice());
        self.leaves.link_after(p.leaf, new);
        self.insert_child(&p, p.depth, right.get(0).0, new);
    }

    /// Stores the path's leaf's overflowing entries `e` (one more than a
    /// leaf holds) evenly over the leaf and a sibling with room to spare,
    /// if one has: leaves stay fuller (~79 % instead of ~70 % under random
    /// inserts), so the map is smaller and more of it stays in cache.
    /// "Room" is 4 free slots, so a spill buys the leaf at least two
    /// inserts before it overflows again (sharing with a sibling one slot
    /// short of full gains 3 % fill but costs a cache-resident map 7 % on
    /// every set). Returns whether it did.
    fn spill(&mut self, p: &Path, e: &Ents) -> bool {
        if p.depth == 0 {
            return false;
        }
        let Step { node: parent, slot } = p.steps[p.depth - 1];
        let par = self.inners.get(parent);
        let room = |id: u32| self.leaves.len(id) + 4 <= LEAF_CAP;
        let (l_slot, mut all) = if slot + 1 < par.len() && room(par.kids[slot + 1]) {
            let mut all = *e;
            all.append(&self.leaves.read(par.kids[slot + 1]));
            (slot, all)
        } else if slot > 0 && room(par.kids[slot - 1]) {
            let mut all = self.leaves.read(par.kids[slot - 1]);
            all.append(e);
            (slot - 1, all)
        } else {
            return false;
        };
        let (l, r) = (par.kids[l_slot], par.kids[l_slot + 1]);
        let right = all.split_off(all.len() / 2);
        self.leaves.write(l, all.as_slice());
        self.leaves.write(r, right.as_slice());
        self.inners.get_mut(parent).keys[l_slot + 1] = right.get(0).0;
        true
    }

    /// Inserts child `kid` with lower bound `key` right after the child the
    /// path took at `depth - 1` (splitting upwards as needed).
    fn insert_child(&mut self, p: &Path, depth: usize, key: u64, kid: u32) {
        if depth == 0 {
            // The root split: a new root above the old one.
            let old = self.root;
            let root = self.inners.alloc();
            let r = self.inners.get_mut(root);
            r.keys[0] = 0;
            r.kids[0] = old;
            r.keys[1] = key;
            r.kids[1] = kid;
            self.root = root;
            self.height += 1;
            return;
        }
        let Step { node, slot } = p.steps[depth - 1];
        let at = slot + 1;
        let n = self.inners.get_mut(node);
        let len = n.len();
        if len < CAP {
            n.keys.copy_within(at..len, at + 1);
            n.kids.copy_within(at..len, at + 1);
            n.keys[at] = key;
            n.kids[at] = kid;
            return;
        }
        let mut keys = [PAD; CAP + 1];
        let mut kids = [NIL; CAP + 1];
        keys[..at].copy_from_slice(&n.keys[..at]);
        kids[..at].copy_from_slice(&n.kids[..at]);
        keys[at] = key;
        kids[at] = kid;
        keys[at + 1..].copy_from_slice(&n.keys[at..]);
        kids[at + 1..].copy_from_slice(&n.kids[at..]);
        let half = CAP.div_ceil(2);
        let mut left = EMPTY_INNER;
        left.keys[..half].copy_from_slice(&keys[..half]);
        left.kids[..half].copy_from_slice(&kids[..half]);
        let mut right = EMPTY_INNER;
        right.keys[..CAP + 1 - half].copy_from_slice(&keys[half..]);
        right.kids[..CAP + 1 - half].copy_from_slice(&kids[half..]);
        let up = right.keys[0];
        right.keys[0] = 0;
        *self.inners.get_mut(node) = left;
        let new = self.inners.alloc();
        *self.inners.get_mut(new) = right;
        self.insert_child(p, depth - 1, up, new);
    }

    /// Removes `key` (present); returns its value.
    pub(super) fn remove(&mut self, key: u64) -> u64 {
        let (id, j) = self.locate(key);
        let (_, val) = self.leaves.remove(id, j);
        self.len -= 1;
        if self.height > 0 && self.leaves.len(id) < LEAF_MIN {
            self.fix_underflow(key);
        }
        val
    }

    /// Restores the minimum fill of the leaf of `key` after a remove: only
    /// an underflow needs the path. Out of line, as
    /// [`insert_overflowing`](Self::insert_overflowing).
    #[cold]
    #[inline(never)]
    fn fix_underflow(&mut self, key: u64) {
        let p = self.find_path(key);
        self.fix_leaf(&p);
    }

    /// Restores the minimum fill of the path's leaf: merge with a sibling
    /// when both fit in one leaf, else split their entries evenly.
    fn fix_leaf(&mut self, p: &Path) {
        let Some((l_slot, r_slot)) = self.siblings(p, p.depth) else {
            return; // An only child: nothing to merge with.
        };
        let parent = p.steps[p.depth - 1].node;
        let par = self.inners.get(parent);
        let (l, r) = (par.kids[l_slot], par.kids[r_slot]);
        let mut all = self.leaves.read(l);
        all.append(&self.leaves.read(r));
        if all.len() <= LEAF_CAP {
            self.leaves.write(l, all.as_slice());
            self.leaves.free(r);
            self.remove_child(p, p.depth - 1, r_slot);
            return;
        }
        let right = all.split_off(all.len() / 2);
        self.leaves.write(l, all.as_slice());
        self.leaves.write(r, right.as_slice());
        self.inners.get_mut(parent).keys[r_slot] = right.get(0).0;
    }

    /// The slots of the node at path depth `depth` (under `p.steps[depth -
    /// 1]`) and of a sibling, left one first; None for an only child.
    fn siblings(&self, p: &Path, depth: usize) -> Option<(usize, usize)> {
        let Step { node, slot } = p.steps[depth - 1];
        if slot + 1 < self.inners.get(node).len() {
            Some((slot, slot + 1))
        } else if slot > 0 {
            Some((slot - 1, slot))
        } else {
            None
        }
    }

    /// Removes child `slot` of the node at `p.steps[depth]`, then restores
    /// that node's fill (or shrinks the root).
    fn remove_child(&mut self, p: &Path, depth: usize, slot: usize) {
        let node = p.steps[depth].node;
        let n = self.inners.get_mut(node);
        let len = n.len();
        n.keys.copy_within(slot + 1..len, slot);
        n.kids.copy_within(slot + 1..len, slot);
        n.keys[len - 1] = PAD;
        n.kids[len - 1] = NIL;
        n.keys[0] = 0;
        let len = len - 1;
        if depth == 0 {
            if len == 1 {
                // A root with one child: the child becomes the root.
                self.root = n.kids[0];
                self.inners.release(node);
                self.height -= 1;
            }
            return;
        }
        if len < MIN {
            self.fix_inner(p, depth);
        }
    }

    /// Restores the minimum fill of inner node `p.steps[depth]`.
    fn fix_inner(&mut self, p: &Path, depth: usize) {
        let Some((l_slot, r_slot)) = self.siblings(p, depth) else {
            return;
        };
        let parent = p.steps[depth - 1].node;
        let par = *self.inners.get(parent);
        let (l, r) = (par.kids[l_slot], par.kids[r_slot]);
        let (left, right) = (*self.inners.get(l), *self.inners.get(r));
        let (ln, rn) = (left.len(), right.len());
        // Concatenate, giving the right node's first child its separator.
        let mut keys = [PAD; 2 * CAP];
        let mut kids = [NIL; 2 * CAP];
        keys[..ln].copy_from_slice(&left.keys[..ln]);
        kids[..ln].copy_from_slice(&left.kids[..ln]);
        keys[ln..ln + rn].copy_from_slice(&right.keys[..rn]);
        kids[ln..ln + rn].copy_from_slice(&right.kids[..rn]);
        keys[ln] = par.keys[r_slot];
        let total = ln + rn;
        if total <= CAP {
            let merged = self.inners.get_mut(l);
            merged.keys[..total].copy_from_slice(&keys[..total]);
            merged.kids[..total].copy_from_slice(&kids[..total]);
            merged.keys[0] = 0;
            self.inners.release(r);
            self.remove_child(p, depth - 1, r_slot);
            return;
        }
        let half = total / 2;
        let mut a = EMPTY_INNER;
        let mut b = EMPTY_INNER;
        a.keys[..half].copy_from_slice(&keys[..half]);
        a.kids[..half].copy_from_slice(&kids[..half]);
        b.keys[..total - half].copy_from_slice(&keys[half..total]);
        b.kids[..total - half].copy_from_slice(&kids[half..total]);
        a.keys[0] = 0;
        let up = b.keys[0];
        b.keys[0] = 0;
        *self.inners.get_mut(l) = a;
        *self.inners.get_mut(r) = b;
        self.inners.get_mut(parent).keys[r_slot] = up;
    }
}

/// An in-order iterator over entries.
#[derive(Clone)]
pub(super) struct Iter<'a> {
    tree: &'a Tree,
    leaf: u32,
    idx: usize,
}

impl Iterator for Iter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let leaves = &self.tree.leaves;
        while self.leaf != NIL {
            if self.idx < leaves.len(self.leaf) {
                self.idx += 1;
                return Some(leaves.entry(self.leaf, self.idx - 1));
            }
            self.leaf = leaves.next(self.leaf);
            self.idx = 0;
        }
        None
    }
}
