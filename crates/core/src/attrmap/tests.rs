use super::*;
use proptest::prelude::*;

/// Pages `[start_page, start_page + pages)`; a range ending at the last
/// gfn ends at `u64::MAX` (2^64 is not an address).
fn r(start_page: u64, pages: u64) -> GpaRange {
    let top = start_page + pages == GFN_END;
    GpaRange::new(Gpa(start_page * 4096), pages * 4096 - u64::from(top)).unwrap()
}

#[test]
fn set_adjacent_private_ranges_coalesce() {
    let mut m = AttrMap::new();
    m.set(r(0, 2), true);
    m.set(r(2, 2), true);
    assert_eq!(m.len(), 1);
    assert_eq!(m.private_ranges().collect::<Vec<_>>(), vec![r(0, 4)]);
}

#[test]
fn set_shared_in_middle_splits() {
    let mut m = AttrMap::with_private(r(0, 10));
    let changed = m.set(r(4, 2), false);
    assert_eq!(changed, 2);
    assert_eq!(
        m.private_ranges().collect::<Vec<_>>(),
        vec![r(0, 4), r(6, 4)]
    );
}

#[test]
fn set_no_change_returns_zero() {
    let mut m = AttrMap::with_private(r(0, 10));
    assert_eq!(m.set(r(2, 3), true), 0);
    assert_eq!(m.set(r(20, 3), false), 0);
}

#[test]
fn runs_cover_range_exactly() {
    let mut m = AttrMap::new();
    m.set(r(2, 2), true);
    let runs = m.runs(r(0, 6));
    assert_eq!(
        runs,
        vec![
            Run {
                range: r(0, 2),
                private: false
            },
            Run {
                range: r(2, 2),
                private: true
            },
            Run {
                range: r(4, 2),
                private: false
            },
        ]
    );
}

#[test]
fn top_of_address_space_is_handled() {
    let mut m = AttrMap::new();
    let top = GpaRange::new(Gpa(0xffff_ffff_ffff_e000), 8191).unwrap();
    m.set(top, true);
    assert!(m.is_private(Gpa(u64::MAX)));
    assert_eq!(m.private_pages_in(top), 2);
}

#[derive(Clone, Debug)]
struct Op {
    start: u64,
    pages: u64,
    private: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (0u64..64, 1u64..16, any::<bool>()).prop_map(|(start, pages, private)| Op {
        start,
        pages,
        private,
    })
}

/// Pages per oracle cell: single pages; cells that put range ends around
/// the leaves' 16-bit offset limit (12 * 0x1555 = 0xfffc); ranges longer
/// than 2^32 pages; and cells reaching the top gfns (96 << 45 < 2^52).
fn unit() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(1u64),
        1 => Just(0x1555),
        1 => Just(0xffff),
        1 => Just(1 << 30),
        1 => Just(1 << 45),
    ]
}

/// `cells` oracle cells of `unit` pages from cell `start`.
fn cells(unit: u64, start: u64, cells: u64) -> GpaRange {
    r(start * unit, cells * unit)
}

proptest! {
    #[test]
    fn attrmap_matches_dense_oracle(
        unit in unit(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut m = AttrMap::new();
        let mut dense = [false; 96];
        for o in &ops {
            let mut expect_changed = 0;
            for p in o.start..o.start + o.pages {
                if dense[p as usize] != o.private { expect_changed += unit; }
                dense[p as usize] = o.private;
            }
            let changed = m.set(cells(unit, o.start, o.pages), o.private);
            prop_assert_eq!(changed, expect_changed);
            prop_assert!(m.check_invariants().is_ok());
        }
        for (p, &want) in dense.iter().enumerate() {
            let first = p as u64 * unit;
            for page in [first, first + unit / 2, first + unit - 1] {
                prop_assert_eq!(m.is_private(Gpa(page * 4096)), want);
            }
        }
        // runs() partitions any window consistently with the oracle.
        let runs = m.runs(cells(unit, 0, 96));
        let mut cell = 0u64;
        for run in &runs {
            let (s, e) = gfn_span(run.range);
            prop_assert!(s % unit == 0 && e % unit == 0);
            for p in s / unit..e / unit {
                prop_assert_eq!(p, cell);
                prop_assert_eq!(dense[p as usize], run.private);
                cell += 1;
            }
        }
        prop_assert_eq!(cell, 96);
        for w in runs.windows(2) { prop_assert_ne!(w[0].private, w[1].private); }
        // is_uniform and first_run agree with the oracle on every window.
        for a in (0..96u64).step_by(5) {
            for b in (a + 1..=96).step_by(7) {
                let win = cells(unit, a, b - a);
                let slice = &dense[a as usize..b as usize];
                prop_assert_eq!(m.is_uniform(win, true), slice.iter().all(|&x| x));
                prop_assert_eq!(m.is_uniform(win, false), slice.iter().all(|&x| !x));
                prop_assert_eq!(Some(m.first_run(win)), m.runs(win).first().copied());
                let private = slice.iter().filter(|&&x| x).count() as u64;
                prop_assert_eq!(m.private_pages_in(win), private * unit);
            }
        }
        // The canonical form: rebuilding from the oracle gives an equal map.
        let mut rebuilt = AttrMap::new();
        for (p, &priv_) in dense.iter().enumerate() {
            if priv_ { rebuilt.set(cells(unit, p as u64, 1), true); }
        }
        prop_assert_eq!(rebuilt, m);
    }
}

/// The private set as sorted, disjoint, non-touching `(start, end)` gfn
/// pairs, updated by brute force.
#[derive(Default)]
struct Intervals(Vec<(u64, u64)>);

impl Intervals {
    fn private_in(&self, s: u64, e: u64) -> u64 {
        self.0
            .iter()
            .map(|&(a, b)| b.min(e).saturating_sub(a.max(s)))
            .sum()
    }

    fn is_private(&self, g: u64) -> bool {
        self.0.iter().any(|&(a, b)| a <= g && g < b)
    }

    /// Sets `[s, e)`; returns the pages that changed.
    fn set(&mut self, s: u64, e: u64, private: bool) -> u64 {
        let before = self.private_in(s, e);
        let mut v = Vec::new();
        for &(a, b) in &self.0 {
            if a < s {
                v.push((a, b.min(s)));
            }
            if b > e {
                v.push((a.max(e), b));
            }
        }
        if private {
            v.push((s, e));
        }
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        self.0 = out;
        if private {
            (e - s) - before
        } else {
            before
        }
    }
}

/// Last gfn + 1.
const GFN_END: u64 = 1 << 52;

/// Starts around the leaves' offset limits (2^16), 2^32, the top of the
/// gfn space, or anywhere in 2^41 pages.
fn wide_start() -> impl Strategy<Value = u64> {
    let bases = vec![
        0,
        0xfff0,
        0x1_fff0,
        (1 << 32) - 16,
        1 << 40,
        GFN_END - 0x1_0100,
    ];
    prop_oneof![
        (prop::sample::select(bases), 0u64..64).prop_map(|(b, d)| b + d),
        0u64..1 << 41,
    ]
}

/// Short, around 2^16, around 2^32, or anything up to 2^36 pages.
fn wide_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..70,
        0xfff0u64..0x1_0010,
        (1u64 << 32) - 4..(1 << 32) + 4,
        1u64..1 << 36,
    ]
}

fn wide_op() -> impl Strategy<Value = Op> {
    (wide_start(), wide_len(), any::<bool>()).prop_map(|(start, pages, private)| Op {
        start,
        pages: pages.min(GFN_END - start),
        private,
    })
}

proptest! {
    #[test]
    fn attrmap_matches_interval_oracle(ops in proptest::collection::vec(wide_op(), 1..200)) {
        let mut m = AttrMap::new();
        let mut o = Intervals::default();
        for op in &ops {
            let (s, e) = (op.start, op.start + op.pages);
            prop_assert_eq!(m.set(r(op.start, op.pages), op.private), o.set(s, e, op.private));
        }
        prop_assert_eq!(m.check_invariants(), Ok(()));
        let got: Vec<(u64, u64)> = m.private_ranges().map(gfn_span).collect();
        prop_assert_eq!(&got, &o.0);
        for &(a, b) in &o.0 {
            for g in [a.saturating_sub(1), a, a + 1, b - 1, b, b + 1] {
                if g < GFN_END {
                    prop_assert_eq!(m.is_private(Gpa(g * 4096)), o.is_private(g));
                }
            }
        }
        // Every operation's range as a window.
        for op in &ops {
            let (s, e) = (op.start, op.start + op.pages);
            let win = r(op.start, op.pages);
            let private = o.private_in(s, e);
            prop_assert_eq!(m.private_pages_in(win), private);
            prop_assert_eq!(m.is_uniform(win, true), private == e - s);
            prop_assert_eq!(m.is_uniform(win, false), private == 0);
            let runs = m.runs(win);
            prop_assert_eq!(Some(m.first_run(win)), runs.first().copied());
            let mut at = s;
            for run in &runs {
                let (rs, re) = gfn_span(run.range);
                prop_assert_eq!(rs, at);
                prop_assert_eq!(o.private_in(rs, re), if run.private { re - rs } else { 0 });
                at = re;
            }
            prop_assert_eq!(at, e);
        }
    }
}
