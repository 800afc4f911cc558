use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Pages in the tests' guest: 96, with chunks of 4 pages in 4 stripes, so
/// ranges cross chunk boundaries and stripes wrap.
const PAGES: u64 = 96;
const SHIFT: u32 = PAGE_SHIFT + 2;

fn small() -> StripedMap {
    StripedMap::with_geometry(SHIFT, 4)
}

fn r(start_page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa(start_page << PAGE_SHIFT), pages << PAGE_SHIFT).unwrap()
}

#[derive(Clone, Debug)]
struct Op {
    start: u64,
    pages: u64,
    private: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (0..PAGES, 1..=40u64, any::<bool>()).prop_map(|(start, pages, private)| Op {
        start,
        pages: pages.min(PAGES - start),
        private,
    })
}

proptest! {
    /// `set`'s change count, `runs` and `snapshot` agree with a dense
    /// oracle (one bool per page) and with one plain `AttrMap`.
    #[test]
    fn striped_map_matches_the_dense_oracle(ops in proptest::collection::vec(op(), 1..60)) {
        let m = small();
        let mut plain = AttrMap::new();
        let mut dense = [false; PAGES as usize];
        for o in &ops {
            let want = (o.start..o.start + o.pages)
                .filter(|&p| dense[p as usize] != o.private)
                .count() as u64;
            (o.start..o.start + o.pages).for_each(|p| dense[p as usize] = o.private);
            plain.set(r(o.start, o.pages), o.private);
            prop_assert_eq!(m.set(r(o.start, o.pages), o.private), want);
        }
        let snap = m.snapshot();
        prop_assert_eq!(snap.check_invariants(), Ok(()));
        prop_assert_eq!(&snap, &plain);
        for (p, &want) in dense.iter().enumerate() {
            prop_assert_eq!(snap.is_private(Gpa((p as u64) << PAGE_SHIFT)), want);
        }
        // Every operation's range as a window, and the whole guest.
        for win in ops.iter().map(|o| r(o.start, o.pages)).chain([r(0, PAGES)]) {
            prop_assert_eq!(m.runs(win), plain.runs(win));
            prop_assert_eq!(m.first_run(win), plain.first_run(win));
            for private in [false, true] {
                let locked = m.lock_range_maps(win);
                prop_assert_eq!(locked.is_uniform(private), plain.is_uniform(win, private));
            }
        }
        for (p, &want) in dense.iter().enumerate() {
            prop_assert_eq!(m.is_private(Gpa((p as u64) << PAGE_SHIFT)), want);
        }
    }
}

#[test]
fn a_run_spanning_chunks_is_one_run() {
    let m = small();
    assert_eq!(m.set(r(1, 20), true), 20);
    assert_eq!(
        m.runs(r(0, 24)),
        vec![
            Run {
                range: r(0, 1),
                private: false
            },
            Run {
                range: r(1, 20),
                private: true
            },
            Run {
                range: r(21, 3),
                private: false
            },
        ]
    );
}

#[test]
fn a_range_over_every_chunk_stays_one_stored_range_per_stripe() {
    let m = small();
    m.set(r(0, PAGES), true);
    for s in m.stripes.iter() {
        assert_eq!(s.map.lock().unwrap().len(), 1);
    }
    assert_eq!(m.snapshot(), AttrMap::with_private(r(0, PAGES)));
}

#[test]
fn stripes_are_a_power_of_two() {
    assert_eq!(StripedMap::with_geometry(SHIFT, 3).stripes.len(), 4);
    assert_eq!(StripedMap::with_geometry(SHIFT, 0).stripes.len(), 1);
    assert_eq!(StripedMap::new().stripes.len(), STRIPES);
}

#[test]
fn setting_again_changes_nothing() {
    let m = small();
    assert_eq!(m.set(r(3, 30), true), 30);
    assert_eq!(m.set(r(3, 30), true), 0);
    assert_eq!(m.set(r(10, 4), false), 4);
    // pages 0-2, 10-13 and 33-39.
    assert_eq!(m.set(r(0, 40), true), 14);
}

#[test]
fn the_default_geometry_keeps_a_terabyte_coalesced() {
    let m = StripedMap::new();
    let tib = GpaRange::new(Gpa(0), 1 << 40).unwrap();
    assert_eq!(m.set(tib, true), 1 << 28);
    assert_eq!(m.snapshot().len(), 1);
    assert_eq!(m.runs(tib).len(), 1);
}

#[test]
fn the_last_page_of_the_address_space_is_a_piece() {
    let m = small();
    let top = GpaRange::from_bounds(Gpa(u64::MAX - 8191), Gpa(u64::MAX)).unwrap();
    assert_eq!(m.set(top, true), 2);
    assert_eq!(m.runs(top).len(), 1);
    assert!(m.snapshot().is_private(Gpa(u64::MAX - 1)));
}

/// Two ranges that overlap only in one chunk exclude each other; disjoint
/// ranges in one stripe do not.
#[test]
fn range_locks_exclude_exactly_the_overlapping_ranges() {
    let m = Arc::new(small());
    let held = m.lock(r(2, 8)); // chunks 0-2
    let _disjoint = m.lock(r(16, 4)); // chunk 4: stripe 0 again
    let acquired = Arc::new(AtomicBool::new(false));
    let (m2, a2) = (m.clone(), acquired.clone());
    let t = std::thread::spawn(move || {
        let _g = m2.lock(r(9, 2)); // overlaps page 9 only
        a2.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!acquired.load(Ordering::SeqCst));
    drop(held);
    t.join().unwrap();
    assert!(acquired.load(Ordering::SeqCst));
}

/// Many threads locking random overlapping multi-stripe ranges finish: the
/// ascending stripe order admits no deadlock.
#[test]
fn crossing_range_locks_do_not_deadlock() {
    let m = Arc::new(small());
    let (done, finished) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (m, done) = (m.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let start = (i * 7 + t * 13) % (PAGES - 20);
                    let _g = m.lock(r(start, 1 + (i + t) % 20));
                    m.set(r(start, 1), i % 2 == 0);
                }
                done.send(()).unwrap();
            })
        })
        .collect();
    for _ in &threads {
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("range lockers deadlocked");
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
}

/// Every engine and every model VM builds 16 stripes up front (64 MiB
/// chunks): a stripe stays three 128-byte blocks (its map's arenas keep no
/// node templates inline; they were 1 KiB a stripe, 16 KiB a map, written
/// at every VM's setup).
#[test]
fn a_stripe_is_at_most_three_padded_blocks() {
    assert!(
        std::mem::size_of::<Stripe>() <= 3 * 128,
        "{} bytes",
        std::mem::size_of::<Stripe>()
    );
}
