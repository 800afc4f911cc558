//! A leaf's cache line and its three forms.
//!
//! A leaf holds up to [`CAP`] `(key, value)` entries (start gfn, end gfn),
//! sorted by key, in one 64-byte line: a head word (form, entry count,
//! base or block id), then 56 bytes.
//! - **narrow** (the usual form): the 14 keys and the 14 values as 16-bit
//!   offsets from the base, the first key. A lookup reads this one line: a
//!   branch-free search of the keys, then the value beside them. Unused key
//!   slots hold `0xffff`, above every key offset (at most `0xfffe`), so the
//!   search needs no count. A leaf is narrow iff every key is within
//!   `0xfffe` and every value within `0xffff` of the base: in the attribute
//!   map, iff its ranges lie in 2^16 pages (256 MiB) from its first start.
//!   At a million ranges in 1 TiB (one per MiB), every leaf is narrow.
//! - **inline**: up to [`INLINE_CAP`] absolute `(u64, u64)` pairs (unused
//!   all ones): the maps of a few long ranges (a VM with most of its memory
//!   private) stay one line.
//! - **extended**: anything else (many long or sparse ranges): the head
//!   holds the id of an extension block of absolute pairs ([`super::leaves`]);
//!   a lookup reads the line, then the block.
//!
//! Encoding picks the form ([`Leaf::encode`]: narrow if it fits, else
//! inline if it fits, else extended); an extended leaf edited in place
//! keeps its form until it is next re-encoded ([`super::leaves`]).

/// Entries per leaf.
pub(super) const CAP: usize = 14;
/// Entries an inline leaf holds.
pub(super) const INLINE_CAP: usize = 3;
/// Largest key a leaf stores: the narrow base has 52 bits (gfns are below
/// 2^52).
pub(super) const MAX_KEY: u64 = BASE_MASK;
/// Padding of unused absolute pairs: above every key.
pub(super) const PAD: u64 = u64::MAX;
/// Padding of unused narrow key slots.
const PAD16: u16 = u16::MAX;
/// Largest narrow key offset (below the padding).
const MAX_KEY_OFF: u64 = PAD16 as u64 - 1;
/// Largest narrow value offset.
const MAX_VAL_OFF: u64 = u16::MAX as u64;
/// Head bits 0..52: the base (narrow) or the extension block (extended).
const BASE_MASK: u64 = (1 << 52) - 1;
/// Head bits 52..56: the entry count.
const LEN_SHIFT: u32 = 52;
const LEN_MASK: u64 = 0xf;
/// Head bit 62: inline; bit 63: extended.
const INLINE: u64 = 1 << 62;
const EXT: u64 = 1 << 63;

/// A leaf's form. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    Narrow,
    Inline,
    Ext,
}

/// A leaf's cache line. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(super) struct Leaf {
    head: u64,
    /// Narrow: 14 key offsets (sorted; unused `PAD16`), then 14 value
    /// offsets (unused 0), 16-bit. Inline: up to three key, value pairs of
    /// 64 bits (unused all ones). Each form reads and writes its own width,
    /// so no load waits on narrower stores to the same bytes.
    body: [u8; 56],
}

/// Byte offset of the narrow values.
const VALS: usize = 2 * CAP;

/// An empty (narrow) leaf.
pub(super) const EMPTY_LEAF: Leaf = {
    let mut body = [0u8; 56];
    let mut i = 0;
    while i < VALS {
        body[i] = 0xff;
        i += 1;
    }
    Leaf { head: 0, body }
};

impl Leaf {
    #[inline]
    pub(super) fn form(&self) -> Form {
        if self.head & EXT != 0 {
            Form::Ext
        } else if self.head & INLINE != 0 {
            Form::Inline
        } else {
            Form::Narrow
        }
    }

    #[inline]
    pub(super) fn is_narrow(&self) -> bool {
        self.head & (EXT | INLINE) == 0
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        ((self.head >> LEN_SHIFT) & LEN_MASK) as usize
    }

    /// Narrow: the base.
    #[inline]
    fn base(&self) -> u64 {
        self.head & BASE_MASK
    }

    /// Extended: the block id.
    #[inline]
    pub(super) fn ext(&self) -> u32 {
        (self.head & BASE_MASK) as u32
    }

    /// The line of an extended leaf of `n` entries in block `ext`.
    pub(super) fn extended(ext: u32, n: usize) -> Leaf {
        Leaf {
            head: EXT | (n as u64) << LEN_SHIFT | u64::from(ext),
            ..EMPTY_LEAF
        }
    }

    /// The 16-bit slot at byte `at`.
    #[inline]
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.body[at], self.body[at + 1]])
    }

    #[inline]
    fn set_u16_at(&mut self, at: usize, x: u16) {
        self.body[at..at + 2].copy_from_slice(&x.to_le_bytes());
    }

    /// The 64-bit word at byte `at`.
    #[inline]
    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.body[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn set_u64_at(&mut self, at: usize, x: u64) {
        self.body[at..at + 8].copy_from_slice(&x.to_le_bytes());
    }

    /// Narrow key offset `j`.
    #[inline]
    fn key(&self, j: usize) -> u16 {
        self.u16_at(2 * j)
    }

    /// Narrow value offset `j`.
    #[inline]
    fn val(&self, j: usize) -> u16 {
        self.u16_at(VALS + 2 * j)
    }

    /// Narrow or inline: entries with key <= x.
    #[inline]
    pub(super) fn rank(&self, x: u64) -> usize {
        if self.is_narrow() {
            self.narrow_rank(x)
        } else {
            (0..INLINE_CAP)
                .filter(|&j| self.u64_at(16 * j) <= x.min(MAX_KEY))
                .count()
        }
    }

    /// Narrow: entries with key <= x, by a branch-free binary search over
    /// the 14 key slots (two virtual padding slots make it 16).
    #[inline]
    pub(super) fn narrow_rank(&self, x: u64) -> usize {
        let base = self.base();
        let o = x.wrapping_sub(base).min(MAX_KEY_OFF) as u16;
        let mut i = 0;
        for step in [8, 4, 2] {
            i += usize::from(self.key(i + step - 1) <= o) * step;
        }
        i += usize::from(i < CAP && self.key(i) <= o);
        if x < base {
            0
        } else {
            i
        }
    }

    /// Narrow or inline: entry `j` (< len).
    #[inline]
    pub(super) fn entry(&self, j: usize) -> (u64, u64) {
        if self.is_narrow() {
            self.narrow_entry(j)
        } else {
            (self.u64_at(16 * j), self.u64_at(16 * j + 8))
        }
    }

    /// Narrow: entry `j`.
    #[inline]
    pub(super) fn narrow_entry(&self, j: usize) -> (u64, u64) {
        let base = self.base();
        (base + u64::from(self.key(j)), base + u64::from(self.val(j)))
    }

    /// The line holding `e` (sorted, at most [`CAP`] entries): narrow if
    /// every offset fits, else inline if it has at most [`INLINE_CAP`]
    /// entries, else None (it needs an extension block).
    pub(super) fn encode(e: &[(u64, u64)]) -> Option<Leaf> {
        let mut l = EMPTY_LEAF;
        l.encode_into(e).then_some(l)
    }

    /// [`Leaf::encode`] in place; on false (extension needed) the line is
    /// unchanged.
    pub(super) fn encode_into(&mut self, e: &[(u64, u64)]) -> bool {
        if fits_narrow(e) {
            self.narrow_into(e);
        } else if e.len() <= INLINE_CAP {
            self.inline_into(e);
        } else {
            return false;
        }
        true
    }

    /// Writes `e`, which [`fits_narrow`], in the narrow form.
    fn narrow_into(&mut self, e: &[(u64, u64)]) {
        let base = e.first().map_or(0, |kv| kv.0);
        *self = EMPTY_LEAF;
        self.head = base | (e.len() as u64) << LEN_SHIFT;
        for (j, &(k, v)) in e.iter().enumerate() {
            self.set_u16_at(2 * j, (k - base) as u16);
            self.set_u16_at(VALS + 2 * j, (v - base) as u16);
        }
    }

    /// Writes `e`, at most [`INLINE_CAP`] entries, in the inline form.
    pub(super) fn inline_into(&mut self, e: &[(u64, u64)]) {
        self.head = INLINE | (e.len() as u64) << LEN_SHIFT;
        self.body = [0xff; 56];
        for (j, &(k, v)) in e.iter().enumerate() {
            self.set_u64_at(16 * j, k);
            self.set_u64_at(16 * j + 8, v);
        }
    }

    /// Inline: the entries, with room for one more.
    pub(super) fn inline_entries(&self) -> [(u64, u64); INLINE_CAP + 1] {
        let mut e = [(PAD, PAD); INLINE_CAP + 1];
        for (j, kv) in e[..self.len()].iter_mut().enumerate() {
            *kv = self.entry(j);
        }
        e
    }

    /// Narrow: the offsets of `(k, v)` from the base, if they fit.
    #[inline]
    fn offsets(&self, (k, v): (u64, u64)) -> Option<(u16, u16)> {
        let base = self.base();
        let ko = k.checked_sub(base).filter(|&o| o <= MAX_KEY_OFF)?;
        let vo = v.checked_sub(base).filter(|&o| o <= MAX_VAL_OFF)?;
        Some((ko as u16, vo as u16))
    }

    /// Narrow: replaces entry `j` by `kv` in place if the base (first key)
    /// stays and the offsets fit; returns whether it did.
    pub(super) fn try_set(&mut self, j: usize, kv: (u64, u64)) -> bool {
        if j == 0 && kv.0 != self.base() {
            return false;
        }
        let Some((ko, vo)) = self.offsets(kv) else {
            return false;
        };
        self.set_u16_at(2 * j, ko);
        self.set_u16_at(VALS + 2 * j, vo);
        true
    }

    /// Narrow, not full: inserts `kv` as entry `j` in place if it is not
    /// the first (the base stays) and its offsets fit; returns whether it
    /// did.
    pub(super) fn try_insert(&mut self, j: usize, kv: (u64, u64)) -> bool {
        let n = self.len();
        debug_assert!(n < CAP);
        let Some((ko, vo)) = self.offsets(kv).filter(|_| j > 0) else {
            return false;
        };
        self.body.copy_within(2 * j..2 * n, 2 * j + 2);
        self.body
            .copy_within(VALS + 2 * j..VALS + 2 * n, VALS + 2 * j + 2);
        self.set_u16_at(2 * j, ko);
        self.set_u16_at(VALS + 2 * j, vo);
        self.head += 1 << LEN_SHIFT;
        true
    }

    /// Narrow: removes entry `j` in place if it is not the first (the base
    /// stays); returns whether it did.
    pub(super) fn try_remove(&mut self, j: usize) -> bool {
        if j == 0 {
            return false;
        }
        let n = self.len();
        self.body.copy_within(2 * j + 2..2 * n, 2 * j);
        self.body
            .copy_within(VALS + 2 * j + 2..VALS + 2 * n, VALS + 2 * j);
        self.set_u16_at(2 * (n - 1), PAD16);
        self.set_u16_at(VALS + 2 * (n - 1), 0);
        self.head -= 1 << LEN_SHIFT;
        true
    }
}

/// Whether `e` (sorted) fits the narrow form: every key within
/// `0xfffe` and every value within `0xffff` above the first key.
pub(super) fn fits_narrow(e: &[(u64, u64)]) -> bool {
    let base = e.first().map_or(0, |kv| kv.0);
    e.iter().all(|&(k, v)| {
        k - base <= MAX_KEY_OFF && v.checked_sub(base).is_some_and(|o| o <= MAX_VAL_OFF)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Leaf>(), 64);
        assert_eq!(std::mem::align_of::<Leaf>(), 64);
    }

    #[test]
    fn encode_picks_the_form() {
        let form = |e: &[(u64, u64)]| Leaf::encode(e).map(|l| l.form());
        // The largest offsets that fit, and one past each.
        let top = [(10, 11), (10 + 0xfffe, 10 + 0xffff)];
        assert_eq!(form(&top), Some(Form::Narrow));
        assert_eq!(
            form(&[(10, 11), (10 + 0xffff, 10 + 0xffff)]),
            Some(Form::Inline)
        );
        assert_eq!(form(&[(10, 11), (20, 10 + 0x1_0000)]), Some(Form::Inline));
        assert_eq!(form(&[(10, 9)]), Some(Form::Inline));
        assert_eq!(form(&[(MAX_KEY, MAX_KEY + 1)]), Some(Form::Narrow));
        assert_eq!(form(&[]), Some(Form::Narrow));
        let far: Vec<_> = (0..4).map(|i| (i << 20, (i << 20) + 1)).collect();
        assert_eq!(form(&far[..3]), Some(Form::Inline));
        assert_eq!(form(&far), None);
    }

    #[test]
    fn inline_round_trips_any_values() {
        let e = [(0, u64::MAX - 1), (MAX_KEY - 1, 0), (MAX_KEY, 1 << 63)];
        let l = Leaf::encode(&e).unwrap();
        assert_eq!(l.form(), Form::Inline);
        assert_eq!(l.len(), 3);
        for (j, &kv) in e.iter().enumerate() {
            assert_eq!(l.entry(j), kv);
        }
        for x in [0, 1, MAX_KEY - 1, MAX_KEY, u64::MAX] {
            assert_eq!(l.rank(x), e.iter().filter(|kv| kv.0 <= x).count());
        }
    }
}
