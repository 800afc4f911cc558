//! One conversion over many fragments: every changed run is discarded and
//! committed (the engine keeps up to two runs inline and spills the rest).

mod common;

use common::machine;
use privmem_core::engine::{ConvertTo, Origin, Outcome};
use privmem_core::{Gpa, GpaRange};

#[test]
fn conversion_across_many_fragments_discards_every_changed_run() {
    let (_hv, m) = machine(
        r#"
[vm]
type = "sw-protected"
memory = "1MiB"
initial = "private"
[[vcpu]]
ops = [ { op = "halt" } ]
"#,
    );
    let e = m.engine.clone();
    // Every other page of the first 16 becomes shared: 8 private runs left.
    for p in (0..16u64).step_by(2) {
        e.convert(Gpa(p * 4096), 4096, ConvertTo::Shared, Origin::Explicit)
            .unwrap();
    }
    let before = e.stats().discarded_gmem;

    let out = e
        .convert(Gpa(0), 16 * 4096, ConvertTo::Shared, Origin::Explicit)
        .unwrap();

    assert_eq!(out, Outcome::Converted { pages: 8 });
    assert_eq!(e.stats().discarded_gmem - before, 8);
    let map = e.attr_map();
    let first16 = GpaRange::new(Gpa(0), 16 * 4096).unwrap();
    assert!(map.is_uniform(first16, false));
    map.check_invariants().unwrap();
}
