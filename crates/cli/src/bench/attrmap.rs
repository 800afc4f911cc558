//! `attrmap`: privmem's attribute map at 1 million fragments (a 1 TiB
//! guest), against the `rangemap` crate and a per-page bitmap as QEMU keeps
//! (`RamBlockAttributes`: one bit per page of the RAMBlock).
//!
//! All three hold the same set of private pages: 2^20 private ranges of 1 to
//! 64 pages, one in every 256-page stride of 2^28 pages, inserted in random
//! order. Queries are point lookups of uniformly random pages; sets assign a
//! random 1-64 page range to private or shared (50/50), applied to a fresh
//! clone of each structure every round. Every structure sees the same
//! sequence and must give the same answers (checked). Memory is the live
//! heap of the structure, counted by the allocator in glibc chunk sizes.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::bail;
use privmem_baseline::thread_heap_bytes;
use privmem_core::attrmap::AttrMap;
use privmem_core::{Gpa, GpaRange, PAGE_SIZE};
use rangemap::RangeSet;

use super::util::{timed, Rng};
use super::{median, Ctx, Row, RowSpec, Samples, Target};

/// Pages in a 1 TiB guest.
const GUEST_PAGES: u64 = 1 << 28;
/// Fragments: one private range per 256-page stride.
const FRAGMENTS: u64 = 1 << 20;
const STRIDE: u64 = GUEST_PAGES / FRAGMENTS;

/// The operations every structure supports.
trait PageSet: Clone {
    fn name(&self) -> &'static str;
    fn set(&mut self, r: Range<u64>, private: bool);
    fn get(&self, gfn: u64) -> bool;
}

#[derive(Clone)]
struct Privmem(AttrMap);

fn gpa_range(r: &Range<u64>) -> GpaRange {
    GpaRange::new(Gpa(r.start * PAGE_SIZE), (r.end - r.start) * PAGE_SIZE)
        .expect("bench ranges are non-empty")
}

impl PageSet for Privmem {
    fn name(&self) -> &'static str {
        "attrmap"
    }
    fn set(&mut self, r: Range<u64>, private: bool) {
        self.0.set(gpa_range(&r), private);
    }
    fn get(&self, gfn: u64) -> bool {
        self.0.is_private(Gpa(gfn * PAGE_SIZE))
    }
}

#[derive(Clone)]
struct Rangemap(RangeSet<u64>);

impl PageSet for Rangemap {
    fn name(&self) -> &'static str {
        "rangemap"
    }
    fn set(&mut self, r: Range<u64>, private: bool) {
        if private {
            self.0.insert(r);
        } else {
            self.0.remove(r);
        }
    }
    fn get(&self, gfn: u64) -> bool {
        self.0.contains(&gfn)
    }
}

/// One bit per page, set = private.
#[derive(Clone)]
struct Bitmap(Vec<u64>);

impl PageSet for Bitmap {
    fn name(&self) -> &'static str {
        "bitmap"
    }
    fn set(&mut self, r: Range<u64>, private: bool) {
        let (mut i, end) = (r.start, r.end);
        while i < end {
            let word = (i / 64) as usize;
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if private {
                self.0[word] |= mask;
            } else {
                self.0[word] &= !mask;
            }
            i += n;
        }
    }
    fn get(&self, gfn: u64) -> bool {
        self.0[(gfn / 64) as usize] >> (gfn % 64) & 1 != 0
    }
}

/// The fragments, in a random insertion order.
fn fragments() -> Vec<Range<u64>> {
    let mut rng = Rng::new(0x5eed);
    let mut v: Vec<Range<u64>> = (0..FRAGMENTS)
        .map(|i| {
            let r = rng.next();
            let start = i * STRIDE + r % 128;
            start..start + 1 + (r >> 32) % 64
        })
        .collect();
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

struct Built<S> {
    set: S,
    heap: i64,
}

fn build<S: PageSet>(mut empty: S, frags: &[Range<u64>]) -> Built<S> {
    let before = thread_heap_bytes();
    for r in frags {
        empty.set(r.clone(), true);
    }
    Built {
        heap: thread_heap_bytes() - before,
        set: empty,
    }
}

fn query<S: PageSet>(s: &S, gfns: &[u64]) -> (f64, u64) {
    timed(|| gfns.iter().filter(|&&g| s.get(g)).count() as u64)
}

fn apply<S: PageSet>(s: &mut S, ops: &[(Range<u64>, bool)]) -> f64 {
    timed(|| {
        for (r, p) in ops {
            s.set(r.clone(), *p);
        }
    })
    .0
}

/// Three structures measured in rotating order: `f(k)` measures structure k.
fn rotate(
    ctx: &mut Ctx,
    label: &str,
    rounds: usize,
    mut f: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<[Vec<f64>; 3]> {
    let mut out: [Vec<f64>; 3] = Default::default();
    ctx.status(&format!("{label}: warm-up"));
    for k in 0..3 {
        f(k)?;
    }
    for r in 0..rounds {
        ctx.status(&format!("{label}: round {}/{rounds}", r + 1));
        for i in 0..3 {
            let k = (r + i) % 3;
            out[k].push(f(k)?);
        }
    }
    Ok(out)
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let nq: usize = if ctx.quick { 1 << 20 } else { 4 << 20 };
    let nset: usize = if ctx.quick { 1 << 17 } else { 1 << 19 };
    ctx.status("building 1M-fragment maps");
    let frags = fragments();
    let p = build(Privmem(AttrMap::new()), &frags);
    let rm = build(Rangemap(RangeSet::new()), &frags);
    let bm = build(Bitmap(vec![0; (GUEST_PAGES / 64) as usize]), &frags);
    // The bitmap's 32 MiB were allocated (zeroed) before `build` counted.
    let bm_heap = (GUEST_PAGES / 8) as i64 + bm.heap;
    if p.set.0.len() as u64 != FRAGMENTS {
        bail!(
            "attrmap holds {} ranges, expected {FRAGMENTS}",
            p.set.0.len()
        );
    }
    let mut rng = Rng::new(42);
    let gfns: Vec<u64> = (0..nq).map(|_| rng.below(GUEST_PAGES)).collect();
    // A guest walking its memory: increasing pages, 1-512 apart, wrapping.
    let mut at = 0u64;
    let sweep: Vec<u64> = (0..nq)
        .map(|_| {
            at = (at + 1 + rng.below(512)) % GUEST_PAGES;
            at
        })
        .collect();
    let ops: Vec<(Range<u64>, bool)> = (0..nset)
        .map(|_| {
            let start = rng.below(GUEST_PAGES - 64);
            (start..start + 1 + rng.below(64), rng.next() & 1 == 1)
        })
        .collect();

    // Queries.
    let mut hits = [0u64; 3];
    let rounds = ctx.rounds();
    let q = rotate(ctx, "attrmap/query", rounds, |k| {
        let (t, h) = match k {
            0 => query(&p.set, &gfns),
            1 => query(&rm.set, &gfns),
            _ => query(&bm.set, &gfns),
        };
        hits[k] = h;
        Ok(t * 1e9 / nq as f64)
    })?;
    if hits[0] != hits[1] || hits[0] != hits[2] {
        bail!("structures disagree on queries: {hits:?}");
    }
    let qs = rotate(ctx, "attrmap/query-sweep", rounds, |k| {
        let (t, h) = match k {
            0 => query(&p.set, &sweep),
            1 => query(&rm.set, &sweep),
            _ => query(&bm.set, &sweep),
        };
        hits[k] = h;
        Ok(t * 1e9 / nq as f64)
    })?;
    if hits[0] != hits[1] || hits[0] != hits[2] {
        bail!("structures disagree on sweep queries: {hits:?}");
    }

    // Sets, each round on a fresh clone.
    let mut finals: [Option<Vec<bool>>; 3] = Default::default();
    let probe: Vec<u64> = gfns.iter().take(1 << 16).copied().collect();
    let st = rotate(ctx, "attrmap/set", rounds, |k| {
        let (t, answers) = match k {
            0 => set_round(&p.set, &ops, &probe),
            1 => set_round(&rm.set, &ops, &probe),
            _ => set_round(&bm.set, &ops, &probe),
        };
        finals[k] = Some(answers);
        Ok(t * 1e9 / nset as f64)
    })?;
    if finals[0] != finals[1] || finals[0] != finals[2] {
        bail!("structures disagree after the set sequence");
    }

    let per_range = |b: i64| b as f64 / FRAGMENTS as f64;
    let names = [p.set.name(), rm.set.name(), bm.set.name()];
    let mut rows = Vec::new();
    let pair = |k: usize, v: &[Vec<f64>; 3]| Samples {
        base: v[1].clone(),
        privmem: v[k].clone(),
    };
    let ctx_of = |label: &str, v: f64| BTreeMap::from([(label.to_string(), v)]);

    let mut row = RowSpec {
        name: "attrmap/query",
        unit: "ns/query",
        target: Target::RatioBelow(1.0),
        baseline_is: "rangemap::RangeSet<u64> point lookup",
        note: Some(format!(
            "{nq} random page lookups, 2^20 private ranges in 2^28 pages; context: {} (per-page bitmap)",
            names[2]
        )),
    }
    .row(&pair(0, &q));
    row.context = ctx_of("bitmap_ns_per_query", median(&q[2]));
    rows.push(row);

    let rate = |v: &[f64]| v.iter().map(|ns| 1e3 / ns).collect::<Vec<f64>>();
    let rate_samples = Samples {
        base: rate(&q[1]),
        privmem: rate(&q[0]),
    };
    let mut row = RowSpec {
        name: "attrmap/query-rate",
        unit: "M/s",
        target: Target::PrivmemAtLeast(10.0),
        baseline_is: "rangemap::RangeSet<u64> lookups per second",
        note: Some("uniformly random pages, as attrmap/query".into()),
    }
    .row(&rate_samples);
    row.context = ctx_of("bitmap_m_per_s", median(&rate(&q[2])));
    rows.push(row);

    let sweep_rate = Samples {
        base: rate(&qs[1]),
        privmem: rate(&qs[0]),
    };
    let mut row = RowSpec {
        name: "attrmap/query-sweep-rate",
        unit: "M/s",
        target: Target::PrivmemAtLeast(10.0),
        baseline_is: "rangemap::RangeSet<u64> lookups per second",
        note: Some(format!(
            "{nq} lookups of increasing pages 1-512 apart (a guest walking its memory), same maps"
        )),
    }
    .row(&sweep_rate);
    row.context = ctx_of("bitmap_m_per_s", median(&rate(&qs[2])));
    rows.push(row);

    let mut row = RowSpec {
        name: "attrmap/set",
        unit: "ns/set",
        target: Target::RatioBelow(1.0),
        baseline_is: "rangemap::RangeSet<u64> insert/remove",
        note: Some(format!(
            "{nset} random 1-64 page assignments (50% private) on the 1M-fragment map"
        )),
    }
    .row(&pair(0, &st));
    row.context = ctx_of("bitmap_ns_per_set", median(&st[2]));
    rows.push(row);

    let mem = Samples {
        base: vec![per_range(rm.heap)],
        privmem: vec![per_range(p.heap)],
    };
    let mut row = RowSpec {
        name: "attrmap/memory",
        unit: "B/range",
        target: Target::PrivmemAtMost(64.0),
        baseline_is: "rangemap::RangeSet<u64> heap bytes per range",
        note: Some(format!(
            "live heap after inserting 2^20 ranges: attrmap {} MiB, rangemap {} MiB, bitmap {} MiB (fixed: 1 bit per page)",
            p.heap >> 20,
            rm.heap >> 20,
            bm_heap >> 20
        )),
    }
    .row(&mem);
    row.context = ctx_of("bitmap_b_per_range", per_range(bm_heap));
    rows.push(row);
    Ok(rows)
}

fn set_round<S: PageSet>(s: &S, ops: &[(Range<u64>, bool)], probe: &[u64]) -> (f64, Vec<bool>) {
    let mut c = s.clone();
    let t = apply(&mut c, ops);
    let answers = probe.iter().map(|&g| c.get(g)).collect();
    (t, answers)
}
