//! Decoded leaf entries, for edits that re-encode a leaf, splits and
//! merges.

use super::leaf::{CAP, PAD};

/// The entries of up to two leaves, sorted by key.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ents {
    e: [(u64, u64); 2 * CAP],
    n: usize,
}

impl Ents {
    pub(super) fn new() -> Ents {
        Ents {
            e: [(PAD, PAD); 2 * CAP],
            n: 0,
        }
    }

    /// The first `n` entries of `src`.
    pub(super) fn from_slice(src: &[(u64, u64)]) -> Ents {
        let mut e = Ents::new();
        e.e[..src.len()].copy_from_slice(src);
        e.n = src.len();
        e
    }

    /// `n` entries, entry `j` given by `f(j)`.
    pub(super) fn from_fn(n: usize, f: impl Fn(usize) -> (u64, u64)) -> Ents {
        let mut e = Ents::new();
        for (j, kv) in e.e[..n].iter_mut().enumerate() {
            *kv = f(j);
        }
        e.n = n;
        e
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

    pub(super) fn insert(&mut self, j: usize, kv: (u64, u64)) {
        assert!(j <= self.n && self.n < self.e.len());
        self.e.copy_within(j..self.n, j + 1);
        self.e[j] = kv;
        self.n += 1;
    }

    /// Appends `other`'s entries (the two fit in one buffer).
    pub(super) fn append(&mut self, other: &Ents) {
        let n = self.n + other.n;
        self.e[self.n..n].copy_from_slice(other.as_slice());
        self.n = n;
    }

    /// Splits off the entries from `at` on.
    pub(super) fn split_off(&mut self, at: usize) -> Ents {
        let rest = Ents::from_slice(&self.e[at..self.n]);
        self.n = at;
        rest
    }
}
