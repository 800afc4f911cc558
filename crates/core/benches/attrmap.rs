//! Micro benchmarks of the attribute map: point query and set on maps of
//! 1 Ki, 64 Ki and 1 Mi fragments (one private range of 1-64 pages in every
//! 256-page stride, inserted in random order), as `privmem bench attrmap`
//! builds them at full size.
//!
//! `cargo bench -p privmem-core --bench attrmap`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use privmem_core::attrmap::AttrMap;
use privmem_core::{Gpa, GpaRange, PAGE_SIZE};

/// xorshift64*: deterministic inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn pages(start: u64, n: u64) -> GpaRange {
    GpaRange::new(Gpa(start * PAGE_SIZE), n * PAGE_SIZE).unwrap()
}

/// A map of `fragments` private ranges over `fragments * 256` pages.
fn fragmented(fragments: u64) -> AttrMap {
    let mut rng = Rng(0x5eed);
    let mut order: Vec<u64> = (0..fragments).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut m = AttrMap::new();
    for i in order {
        let r = rng.next();
        m.set(pages(i * 256 + r % 128, 1 + (r >> 32) % 64), true);
    }
    m
}

fn bench(c: &mut Criterion) {
    for (label, fragments) in [("1Ki", 1u64 << 10), ("64Ki", 1 << 16), ("1Mi", 1 << 20)] {
        let map = fragmented(fragments);
        let span = fragments * 256;
        let mut rng = Rng(42);
        let gpas: Vec<Gpa> = (0..4096)
            .map(|_| Gpa((rng.next() % span) * PAGE_SIZE))
            .collect();
        let mut g = c.benchmark_group(format!("attrmap/{label}"));
        g.throughput(Throughput::Elements(gpas.len() as u64));
        g.bench_function("query", |b| {
            b.iter(|| {
                gpas.iter()
                    .filter(|&&a| map.is_private(black_box(a)))
                    .count()
            })
        });
        let sets: Vec<(GpaRange, bool)> = (0..4096)
            .map(|_| {
                let start = rng.next() % (span - 64);
                (pages(start, 1 + rng.next() % 64), rng.next() & 1 == 1)
            })
            .collect();
        g.bench_function("set", |b| {
            b.iter_batched_ref(
                || map.clone(),
                |m| {
                    for &(r, p) in &sets {
                        black_box(m.set(r, p));
                    }
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
