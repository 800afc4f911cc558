//! The tree's structural check (tests and [`super::super::AttrMap::check_invariants`]).

use super::{Tree, LEAF_MIN, MIN, NIL, PAD};

impl Tree {
    /// Checks the tree's structure: every leaf's encoding, sorted keys,
    /// separators that bound their subtrees, minimum fill, uniform depth,
    /// leaf links in key order, one extension block per extended leaf, and
    /// the entry count.
    pub(in crate::attrmap) fn check(&self) -> Result<(), String> {
        if self.root == NIL {
            return match self.len {
                0 => Ok(()),
                n => Err(format!("no root but {n} entries")),
            };
        }
        let mut leaves = Vec::new();
        self.check_node(self.root, self.height, 0, PAD, true, &mut leaves)?;
        let mut id = leaves.first().copied().unwrap_or(NIL);
        let mut prev = NIL;
        for &want in &leaves {
            if id != want || self.leaves.prev(id) != prev {
                return Err(format!("leaf links broken at leaf {want}"));
            }
            prev = id;
            id = self.leaves.next(id);
        }
        if id != NIL {
            return Err("last leaf has a next link".into());
        }
        let (ext, blocks) = self.leaves.ext_counts(&leaves);
        if ext != blocks {
            return Err(format!("{ext} extended leaves but {blocks} blocks"));
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

    fn check_leaf(&self, id: u32, lo: u64, hi: u64, root: bool) -> Result<(), String> {
        self.leaves.check(id)?;
        let e = self.leaves.read(id);
        let n = e.len();
        if !root && n < LEAF_MIN {
            return Err(format!("leaf {id} holds {n} < {LEAF_MIN} entries"));
        }
        if e.as_slice().iter().any(|&(k, _)| k < lo || k >= hi) {
            return Err(format!("leaf {id} has a key outside [{lo:#x}, {hi:#x})"));
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
            leaves.push(id);
            return self.check_leaf(id, lo, hi, root);
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
