//! A cache-conscious B+ tree map `u64 -> u64` (start gfn → end gfn) for the
//! attribute map.
//!
//! Why not `BTreeMap`: a point query on a million ranges walks ~7 levels of
//! 11-key nodes with a data-dependent (mispredicted) linear search in each,
//! and `range(..=x)` descends twice. Here:
//! - a leaf is exactly four cache lines: 16 `(start, end)` pairs,
//!   64-byte aligned; unused slots hold `u64::MAX`, so "how many keys are
//!   <= x" is a branch-free count over the whole leaf and the value sits in
//!   a line the count already fetched;
//! - an inner node is 16 separator keys + 16 child indices (three lines),
//!   searched the same way; with ~11 entries per node, a million ranges
//!   need 3 inner levels, the upper two of which stay in cache;
//! - nodes live in chunked arenas addressed by `u32`: no per-node malloc
//!   header, and growth never copies nodes (see [`Arena`]).
//!
//! Leaves are linked both ways for ordered iteration and for predecessor
//! queries. Separators are lower bounds: every key in child `i > 0` is
//! `>= keys[i]`, every key in child `i - 1` is `< keys[i]`. Nodes other than
//! the root hold at least [`MIN`] entries after every removal (merge with,
//! or borrow from, a sibling), so memory stays within a small factor of the
//! entries.

/// Entries per leaf and children per inner node.
const CAP: usize = 16;
/// Fewest entries a non-root node keeps.
const MIN: usize = CAP / 4;
/// "No node" (and the padding of unused child slots).
const NIL: u32 = u32::MAX;
/// Padding of unused key slots: above every gfn (< 2^52).
const PAD: u64 = u64::MAX;
/// Nodes per arena chunk (64 KiB of leaves).
const CHUNK: usize = 256;
/// Deepest tree: each level multiplies the entries by at least MIN.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Leaf {
    /// `(start, end)` pairs, sorted by start; unused slots are `(PAD, PAD)`.
    ents: [(u64, u64); CAP],
}

const EMPTY_LEAF: Leaf = Leaf {
    ents: [(PAD, PAD); CAP],
};

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

/// Leaf links: previous and next leaf in key order.
#[derive(Clone, Copy, Debug)]
struct Links {
    prev: u32,
    next: u32,
}

/// A chunked arena of `T` with a free list. Growth allocates one more
/// chunk and never moves nodes, so no insertion ever pays for copying the
/// whole tree (a `Vec` arena would, on doubling: ~10 ms at a million
/// ranges), and the slack is at most one partly used chunk.
#[derive(Clone, Debug)]
struct Arena<T: Copy> {
    chunks: Vec<Box<[T; CHUNK]>>,
    used: usize,
    free: Vec<u32>,
    empty: T,
}

impl<T: Copy> Arena<T> {
    fn new(empty: T) -> Arena<T> {
        Arena {
            chunks: Vec::new(),
            used: 0,
            free: Vec::new(),
            empty,
        }
    }

    fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = self.empty;
            return id;
        }
        if self.used == self.chunks.len() * CHUNK {
            self.chunks.push(Box::new([self.empty; CHUNK]));
        }
        self.used += 1;
        u32::try_from(self.used - 1).expect("fewer than 2^32 nodes")
    }

    fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    #[inline]
    fn get(&self, id: u32) -> &T {
        let i = id as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    #[inline]
    fn get_mut(&mut self, id: u32) -> &mut T {
        let i = id as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<T>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[T; CHUNK]>>()
            + self.free.capacity() * 4
    }
}

impl Leaf {
    /// Used slots (padding sorts last).
    #[inline]
    fn len(&self) -> usize {
        self.rank(PAD - 1)
    }
    /// Entries with start <= x (a branch-free binary search).
    #[inline]
    fn rank(&self, x: u64) -> usize {
        let e = &self.ents;
        // Count among e[0..15] (probes 7, then +-4, +-2, +-1), then e[15].
        let mut i = 0;
        for step in [8, 4, 2, 1] {
            i += usize::from(e[i + step - 1].0 <= x) * step;
        }
        i + usize::from(e[i].0 <= x)
    }
}

impl Inner {
    /// Used child slots (key padding sorts last; `keys[0]` is always used).
    #[inline]
    fn len(&self) -> usize {
        self.child_for(PAD - 1) + 1
    }
    /// The child to descend into for `x`: the last `i` with `keys[i] <= x`
    /// (`keys[0]` counts as below everything). A branch-free binary search:
    /// inner nodes near the root are hot in cache, where 4 dependent probes
    /// beat 15 compares.
    #[inline]
    fn child_for(&self, x: u64) -> usize {
        const _: () = assert!(CAP == 16, "the probe steps assume 16 slots");
        let mut i = 0;
        for step in [8, 4, 2, 1] {
            i += usize::from(self.keys[i + step] <= x) * step;
        }
        i
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
    leaves: Arena<Leaf>,
    links: Vec<Links>,
    inners: Arena<Inner>,
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
        let mut leaves = Arena::new(EMPTY_LEAF);
        let root = leaves.alloc();
        Tree {
            leaves,
            links: vec![Links {
                prev: NIL,
                next: NIL,
            }],
            inners: Arena::new(EMPTY_INNER),
            root,
            height: 0,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.leaves.heap_bytes()
            + self.inners.heap_bytes()
            + self.links.capacity() * std::mem::size_of::<Links>()
    }

    fn leaf(&self, id: u32) -> &Leaf {
        self.leaves.get(id)
    }

    fn link(&self, id: u32) -> Links {
        self.links[id as usize]
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
        let id = self.find_leaf(x);
        let leaf = self.leaf(id);
        match leaf.rank(x) {
            0 => {
                let prev = self.link(id).prev;
                (prev != NIL).then(|| {
                    let l = self.leaf(prev);
                    l.ents[l.len() - 1]
                })
            }
            j => Some(leaf.ents[j - 1]),
        }
    }

    /// The entry with the largest key `< x`.
    pub(super) fn pred_lt(&self, x: u64) -> Option<(u64, u64)> {
        x.checked_sub(1).and_then(|y| self.pred_le(y))
    }

    /// A cursor at the first entry with key `>= x`.
    fn seek(&self, x: u64) -> (u32, usize) {
        let id = self.find_leaf(x);
        let j = match x.checked_sub(1) {
            Some(y) => self.leaf(id).rank(y),
            None => 0,
        };
        // Slot j is used iff it holds a real key (padding sorts last).
        if self.leaf(id).ents.get(j).is_some_and(|e| e.0 != PAD) {
            (id, j)
        } else {
            (self.link(id).next, 0)
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

    /// Sets the value of existing key `key`.
    pub(super) fn set_value(&mut self, key: u64, val: u64) {
        let id = self.find_leaf(key);
        let leaf = self.leaves.get_mut(id);
        let j = leaf.rank(key);
        debug_assert!(
            j > 0 && leaf.ents[j - 1].0 == key,
            "set_value of a missing key"
        );
        leaf.ents[j - 1].1 = val;
    }

    /// Changes the key of entry `old` to `new`, keeping its value. The
    /// caller guarantees `old < new <` the next key. In place when another
    /// entry of the same leaf follows (then `new` is below it and so below
    /// the leaf's upper separator) or the leaf is the root; otherwise, since
    /// a stale separator may lie between `old` and the next key, by removal
    /// and insertion.
    pub(super) fn rekey_up(&mut self, old: u64, new: u64) {
        let id = self.find_leaf(old);
        let leaf = self.leaves.get_mut(id);
        let j = leaf.rank(old);
        debug_assert!(j > 0 && leaf.ents[j - 1].0 == old, "rekey of a missing key");
        // A root leaf has no separators at all.
        if self.height == 0 || leaf.ents.get(j).is_some_and(|e| e.0 != PAD) {
            debug_assert!(old < new && leaf.ents.get(j).is_none_or(|e| e.0 > new));
            leaf.ents[j - 1].0 = new;
            return;
        }
        let val = self.remove(old);
        self.insert(new, val);
    }

    /// Inserts `key` (absent) with `val`.
    pub(super) fn insert(&mut self, key: u64, val: u64) {
        self.len += 1;
        let id = self.find_leaf(key);
        let leaf = self.leaves.get_mut(id);
        let n = leaf.len();
        let j = leaf.rank(key);
        debug_assert!(
            j == 0 || leaf.ents[j - 1].0 != key,
            "insert of a present key"
        );
        if n < CAP {
            leaf.ents.copy_within(j..n, j + 1);
            leaf.ents[j] = (key, val);
            return;
        }
        // Split: the upper half moves to a new leaf on the right. Only now
        // is the path needed.
        let p = self.find_path(key);
        let leaf = self.leaves.get_mut(p.leaf);
        let mut all = [(PAD, PAD); CAP + 1];
        all[..j].copy_from_slice(&leaf.ents[..j]);
        all[j] = (key, val);
        all[j + 1..].copy_from_slice(&leaf.ents[j..]);
        let half = all.len() / 2;
        let mut left = EMPTY_LEAF;
        left.ents[..half].copy_from_slice(&all[..half]);
        let mut right = EMPTY_LEAF;
        right.ents[..all.len() - half].copy_from_slice(&all[half..]);
        *self.leaves.get_mut(p.leaf) = left;
        let new = self.leaves.alloc();
        *self.leaves.get_mut(new) = right;
        self.link_after(p.leaf, new);
        self.insert_child(&p, p.depth, all[half].0, new);
    }

    /// Links new leaf `new` right after `id`.
    fn link_after(&mut self, id: u32, new: u32) {
        let next = self.link(id).next;
        let l = Links { prev: id, next };
        if new as usize == self.links.len() {
            self.links.push(l);
        } else {
            self.links[new as usize] = l;
        }
        self.links[id as usize].next = new;
        if next != NIL {
            self.links[next as usize].prev = new;
        }
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
        let id = self.find_leaf(key);
        let leaf = self.leaves.get_mut(id);
        let n = leaf.len();
        let j = leaf.rank(key);
        debug_assert!(
            j > 0 && leaf.ents[j - 1].0 == key,
            "remove of a missing key"
        );
        let val = leaf.ents[j - 1].1;
        leaf.ents.copy_within(j..n, j - 1);
        leaf.ents[n - 1] = (PAD, PAD);
        self.len -= 1;
        if self.height > 0 && n - 1 < MIN {
            // Only an underflow needs the path.
            let p = self.find_path(key);
            self.fix_leaf(&p);
        }
        val
    }

    /// Restores the minimum fill of the path's leaf: merge with a sibling
    /// when both fit in one node, else borrow from it.
    fn fix_leaf(&mut self, p: &Path) {
        let Step { node: parent, slot } = p.steps[p.depth - 1];
        let par = *self.inners.get(parent);
        let plen = par.len();
        let (l_slot, r_slot) = if slot + 1 < plen {
            (slot, slot + 1)
        } else if slot > 0 {
            (slot - 1, slot)
        } else {
            return; // An only child: nothing to merge with.
        };
        let (l, r) = (par.kids[l_slot], par.kids[r_slot]);
        let (mut left, mut right) = (*self.leaf(l), *self.leaf(r));
        let (ln, rn) = (left.len(), right.len());
        if ln + rn <= CAP {
            left.ents[ln..ln + rn].copy_from_slice(&right.ents[..rn]);
            *self.leaves.get_mut(l) = left;
            self.unlink_leaf(r);
            self.remove_child(p, p.depth - 1, r_slot);
            return;
        }
        // Borrow: split the entries evenly.
        let mut all = [(PAD, PAD); 2 * CAP];
        all[..ln].copy_from_slice(&left.ents[..ln]);
        all[ln..ln + rn].copy_from_slice(&right.ents[..rn]);
        let total = ln + rn;
        let half = total / 2;
        left = EMPTY_LEAF;
        right = EMPTY_LEAF;
        left.ents[..half].copy_from_slice(&all[..half]);
        right.ents[..total - half].copy_from_slice(&all[half..total]);
        *self.leaves.get_mut(l) = left;
        *self.leaves.get_mut(r) = right;
        self.inners.get_mut(parent).keys[r_slot] = all[half].0;
    }

    fn unlink_leaf(&mut self, id: u32) {
        let Links { prev, next } = self.link(id);
        if prev != NIL {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
        self.leaves.release(id);
    }

    /// Removes child `slot` of the node at `p.steps[level]`, then restores
    /// that node's fill (or shrinks the root).
    fn remove_child(&mut self, p: &Path, level: usize, slot: usize) {
        let node = p.steps[level].node;
        let n = self.inners.get_mut(node);
        let len = n.len();
        n.keys.copy_within(slot + 1..len, slot);
        n.kids.copy_within(slot + 1..len, slot);
        n.keys[len - 1] = PAD;
        n.kids[len - 1] = NIL;
        n.keys[0] = 0;
        let len = len - 1;
        if level == 0 {
            if len == 1 {
                // A root with one child: the child becomes the root.
                self.root = n.kids[0];
                self.inners.release(node);
                self.height -= 1;
            }
            return;
        }
        if len < MIN {
            self.fix_inner(p, level);
        }
    }

    /// Restores the minimum fill of inner node `p.steps[level]`.
    fn fix_inner(&mut self, p: &Path, level: usize) {
        let Step { node: parent, slot } = p.steps[level - 1];
        let par = *self.inners.get(parent);
        let plen = par.len();
        let (l_slot, r_slot) = if slot + 1 < plen {
            (slot, slot + 1)
        } else if slot > 0 {
            (slot - 1, slot)
        } else {
            return;
        };
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
            self.remove_child(p, level - 1, r_slot);
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

    /// Checks the tree's structure: sorted keys, separators that bound
    /// their subtrees, minimum fill, uniform depth, leaf links in key order,
    /// and the entry count.
    pub(super) fn check(&self) -> Result<(), String> {
        let mut leaves = Vec::new();
        self.check_node(self.root, self.height, 0, PAD, true, &mut leaves)?;
        let mut id = leaves.first().copied().unwrap_or(NIL);
        let mut prev = NIL;
        for &want in &leaves {
            if id != want || self.link(id).prev != prev {
                return Err(format!("leaf links broken at leaf {want}"));
            }
            prev = id;
            id = self.link(id).next;
        }
        if id != NIL {
            return Err("last leaf has a next link".into());
        }
        let count = self.iter().count();
        if count != self.len {
            return Err(format!("len {} but {count} entries", self.len));
        }
        let mut last = None;
        for (k, _) in self.iter() {
            if last.is_some_and(|l| l >= k) {
                return Err(format!("keys out of order at {k:#x}"));
            }
            last = Some(k);
        }
        Ok(())
    }

    fn check_node(
        &self,
        id: u32,
        height: usize,
        lo: u64,
        hi: u64,
        root: bool,
        leaves: &mut Vec<u32>,
    ) -> Result<(), String> {
        if height == 0 {
            let l = self.leaf(id);
            let n = l.len();
            if !root && n < MIN {
                return Err(format!("leaf {id} holds {n} < {MIN} entries"));
            }
            if l.ents[n..].iter().any(|e| *e != (PAD, PAD)) {
                return Err(format!("leaf {id} has entries after its padding"));
            }
            if l.ents[..n].iter().any(|&(k, _)| k < lo || k >= hi) {
                return Err(format!("leaf {id} has a key outside [{lo:#x}, {hi:#x})"));
            }
            leaves.push(id);
            return Ok(());
        }
        let n = self.inners.get(id);
        let len = n.len();
        if len < if root { 2 } else { MIN } {
            return Err(format!("inner {id} has {len} children"));
        }
        if n.kids[len..].iter().any(|&k| k != NIL) || n.keys[len..].iter().any(|&k| k != PAD) {
            return Err(format!("inner {id} has children after its padding"));
        }
        for i in 0..len {
            let clo = if i == 0 { lo } else { n.keys[i] };
            let chi = if i + 1 < len { n.keys[i + 1] } else { hi };
            if clo > chi || (i > 0 && n.keys[i] < lo) {
                return Err(format!("inner {id} separators out of order"));
            }
            self.check_node(n.kids[i], height - 1, clo, chi, false, leaves)?;
        }
        Ok(())
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
        while self.leaf != NIL {
            let l = self.tree.leaf(self.leaf);
            let e = l.ents.get(self.idx).copied().unwrap_or((PAD, PAD));
            if e.0 != PAD {
                self.idx += 1;
                return Some(e);
            }
            self.leaf = self.tree.link(self.leaf).next;
            self.idx = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn leaf_and_inner_are_whole_cache_lines() {
        assert_eq!(std::mem::size_of::<Leaf>(), 16 * CAP);
        assert_eq!(std::mem::size_of::<Inner>(), 12 * CAP);
    }

    #[test]
    fn ascending_inserts_then_removals_keep_structure() {
        let mut t = Tree::new();
        for k in 0..5000u64 {
            t.insert(k * 3, k);
        }
        t.check().unwrap();
        assert_eq!(t.pred_le(3 * 4999 + 2), Some((3 * 4999, 4999)));
        for k in (0..5000u64).filter(|k| k % 7 != 0) {
            assert_eq!(t.remove(k * 3), k);
        }
        t.check().unwrap();
        assert_eq!(t.len(), 5000usize.div_ceil(7));
        for k in (0..5000u64).filter(|k| k % 7 == 0) {
            t.remove(k * 3);
        }
        t.check().unwrap();
        assert_eq!(t.len(), 0);
        assert_eq!(t.pred_le(100), None);
    }

    #[test]
    fn random_churn_on_a_deep_tree_matches_btreemap() {
        // Deep enough (20k keys: 4 levels) that inner nodes split, merge
        // and borrow; checked against BTreeMap every 1000 operations.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = Tree::new();
        let mut m = BTreeMap::new();
        for round in 0..60_000 {
            let k = rnd() % 40_000;
            // Grow for the first third, then shrink, then churn.
            let insert = match round {
                0..20_000 => true,
                20_000..40_000 => false,
                _ => rnd() & 1 == 0,
            };
            if insert && !m.contains_key(&k) {
                t.insert(k, round);
                m.insert(k, round);
            } else if !insert {
                if let Some((&k, &v)) = m.range(k..).next() {
                    assert_eq!(t.remove(k), v);
                    m.remove(&k);
                }
            }
            if round % 1000 == 999 {
                t.check().unwrap();
                assert!(t.iter().eq(m.iter().map(|(&k, &v)| (k, v))));
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Set(u64, u64),
        Rekey(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..2000).prop_map(Op::Insert),
            (0u64..2000).prop_map(Op::Remove),
            (0u64..2000, any::<u64>()).prop_map(|(k, v)| Op::Set(k, v)),
            (0u64..2000, 1u64..40).prop_map(|(k, d)| Op::Rekey(k, d)),
        ]
    }

    proptest! {
        #[test]
        fn tree_matches_btreemap(ops in proptest::collection::vec(op(), 1..1500)) {
            let mut t = Tree::new();
            let mut m = BTreeMap::new();
            for o in &ops {
                match *o {
                    Op::Insert(k) if !m.contains_key(&k) => {
                        t.insert(k, k + 1);
                        m.insert(k, k + 1);
                    }
                    Op::Remove(k) if m.contains_key(&k) => {
                        prop_assert_eq!(t.remove(k), m.remove(&k).unwrap());
                    }
                    Op::Set(k, v) if m.contains_key(&k) => {
                        t.set_value(k, v);
                        m.insert(k, v);
                    }
                    Op::Rekey(k, d) if m.contains_key(&k)
                        && m.range(k + 1..=k + d).next().is_none() => {
                        t.rekey_up(k, k + d);
                        let v = m.remove(&k).unwrap();
                        m.insert(k + d, v);
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(t.check(), Ok(()));
            prop_assert_eq!(t.len(), m.len());
            prop_assert!(t.iter().eq(m.iter().map(|(&k, &v)| (k, v))));
            for x in (0u64..2100).step_by(13) {
                prop_assert_eq!(t.pred_le(x), m.range(..=x).next_back().map(|(&k, &v)| (k, v)));
                prop_assert_eq!(t.pred_lt(x), m.range(..x).next_back().map(|(&k, &v)| (k, v)));
                prop_assert_eq!(t.first_ge(x), m.range(x..).next().map(|(&k, &v)| (k, v)));
            }
        }
    }
}
