use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[test]
fn inner_is_whole_cache_lines() {
    assert_eq!(std::mem::size_of::<Inner>(), 12 * CAP);
}

#[test]
fn a_new_tree_allocates_nothing_and_reads_empty_until_its_first_insert() {
    let mut t = Tree::new();
    assert_eq!((t.root, t.heap_bytes(), t.len()), (NIL, 0, 0));
    assert_eq!(t.pred_le(MAX_KEY), None);
    assert_eq!(t.pred_lt(5), None);
    assert_eq!(t.first_ge(0), None);
    assert_eq!(t.iter().count(), 0);
    t.check().unwrap();
    assert_eq!(t, Tree::new());
    t.insert(7, 9);
    assert!(t.heap_bytes() > 0);
    assert_eq!((t.pred_le(8), t.first_ge(0)), (Some((7, 9)), Some((7, 9))));
    assert_eq!(t.remove(7), 9);
    t.check().unwrap();
    assert_eq!((t.first_ge(0), t.len()), (None, 0));
    assert_eq!(t, Tree::new());
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
fn random_inserts_fill_leaves_to_about_80_percent() {
    // One key per 256 in random order, as `privmem bench attrmap` inserts
    // its ranges: leaves that share with a sibling before splitting end up
    // ~79 % full (~70 % when splitting alone).
    let mut x = 0x5eedu64;
    let mut keys: Vec<u64> = (0..1u64 << 16).map(|i| i * 256).collect();
    for i in (1..keys.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        keys.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut t = Tree::new();
    for &k in &keys {
        t.insert(k, k + 1);
    }
    t.check().unwrap();
    let (mut leaves, mut id) = (0, t.find_leaf(0));
    while id != NIL {
        leaves += 1;
        id = t.leaves.next(id);
    }
    let fill = t.len() as f64 / (leaves * LEAF_CAP) as f64;
    assert!(fill > 0.78, "leaves {fill:.2} full");
}

/// Grows, shrinks and churns a tree of keys `k * scale`, values `k * scale
/// + near` (or arbitrary every 16th), against BTreeMap.
fn churn(scale: u64, near: u64) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = Tree::new();
    let mut m = BTreeMap::new();
    for round in 0..60_000u64 {
        let k = rnd() % 40_000 * scale;
        // Grow for the first third, then shrink, then churn.
        let insert = match round {
            0..20_000 => true,
            20_000..40_000 => false,
            _ => rnd() & 1 == 0,
        };
        let v = if round % 16 == 0 { rnd() } else { k + near };
        if insert && !m.contains_key(&k) {
            t.insert(k, v);
            m.insert(k, v);
        } else if !insert {
            if let Some((&k, &v)) = m.range(k..).next() {
                assert_eq!(t.remove(k), v);
                m.remove(&k);
            }
        }
        if round % 1000 == 999 {
            t.check().unwrap();
            assert!(t.iter().eq(m.iter().map(|(&k, &v)| (k, v))));
            let y = rnd() % (40_000 * scale);
            assert_eq!(
                t.pred_le(y),
                m.range(..=y).next_back().map(|(&k, &v)| (k, v))
            );
        }
    }
}

#[test]
fn random_churn_on_a_deep_tree_matches_btreemap() {
    // Deep enough (20k keys: 5 levels) that inner nodes split, merge and
    // borrow: narrow leaves (keys 1 apart), keys and values around the
    // 16-bit boundary, and wide leaves (keys 2^30 apart).
    churn(1, 1);
    churn(0x1000, 0xffff);
    churn(1 << 30, 1 << 20);
}

#[derive(Clone, Copy, Debug)]
enum Val {
    /// `key + d`.
    Near(u64),
    /// Arbitrary.
    Abs(u64),
}

impl Val {
    fn of(self, key: u64) -> u64 {
        match self {
            Val::Near(d) => key + d,
            Val::Abs(v) => v,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, Val),
    Remove(u64),
    Set(u64, Val),
    Rekey(u64, u64),
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        4 => (0u64..0x1_0100).prop_map(Val::Near),
        1 => any::<u64>().prop_map(Val::Abs),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..2000, val()).prop_map(|(k, v)| Op::Insert(k, v)),
        (0u64..2000).prop_map(Op::Remove),
        (0u64..2000, val()).prop_map(|(k, v)| Op::Set(k, v)),
        (0u64..2000, 1u64..40).prop_map(|(k, d)| Op::Rekey(k, d)),
    ]
}

/// Key spacings: dense, around the narrow limit (0xfffe), and far apart
/// (wide leaves up to the largest gfns).
fn scale() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        Just(7),
        Just(0x1000),
        Just(0x7fff),
        Just(1 << 38),
        Just(MAX_KEY / 2100),
    ]
}

proptest! {
    #[test]
    fn tree_matches_btreemap(scale in scale(), ops in proptest::collection::vec(op(), 1..1500)) {
        let mut t = Tree::new();
        let mut m = BTreeMap::new();
        for o in &ops {
            match *o {
                Op::Insert(k, v) if !m.contains_key(&(k * scale)) => {
                    let k = k * scale;
                    t.insert(k, v.of(k));
                    m.insert(k, v.of(k));
                }
                Op::Remove(k) if m.contains_key(&(k * scale)) => {
                    prop_assert_eq!(t.remove(k * scale), m.remove(&(k * scale)).unwrap());
                }
                Op::Set(k, v) if m.contains_key(&(k * scale)) => {
                    let k = k * scale;
                    t.set_value(k, v.of(k));
                    m.insert(k, v.of(k));
                }
                Op::Rekey(k, d) if m.contains_key(&(k * scale))
                    && m.range(k * scale + 1..=(k + d) * scale).next().is_none() => {
                    t.rekey_up(k * scale, (k + d) * scale);
                    let v = m.remove(&(k * scale)).unwrap();
                    m.insert((k + d) * scale, v);
                }
                _ => {}
            }
        }
        prop_assert_eq!(t.check(), Ok(()));
        prop_assert_eq!(t.len(), m.len());
        prop_assert!(t.iter().eq(m.iter().map(|(&k, &v)| (k, v))));
        for x in (0u64..2100).step_by(13) {
            for x in [x * scale, (x * scale).saturating_sub(1), x * scale + 1] {
                prop_assert_eq!(t.pred_le(x), m.range(..=x).next_back().map(|(&k, &v)| (k, v)));
                prop_assert_eq!(t.pred_lt(x), m.range(..x).next_back().map(|(&k, &v)| (k, v)));
                prop_assert_eq!(t.first_ge(x), m.range(x..).next().map(|(&k, &v)| (k, v)));
            }
        }
    }
}
