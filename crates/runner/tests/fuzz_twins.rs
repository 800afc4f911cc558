//! Proptest twin of the cargo-fuzz `workload_parser` target in `fuzz/`: short
//! bounded runs in the test command. The long runs are `cargo fuzz run
//! workload_parser` (fuzz/README.md).

use privmem_runner::workload::{self, MAX_GPA};
use proptest::prelude::*;

const SEED_WORKLOAD: &str = r#"
[vm]
type = "coco"
memory = "64MiB"
vcpus = 2
initial = "private"
[policy]
implicit = "convert"
max_repeats = 3
[[slot]]
gpa = "0x0"
size = "32MiB"
[[poison]]
gpa = "0x300000"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x100000", len = 4096, byte = 0xab, access = "private" },
  { op = "map", gpa = "0x100000", pages = 1, to = "shared", expect_ret = 0 },
  { op = "sync", tag = 1 },
]
[[vcpu]]
ops = [{ op = "halt" }]
"#;

fn mutate(seed: &str, edits: &[(usize, u8)]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for &(pos, b) in edits {
        let i = pos % bytes.len();
        bytes[i] = b;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn workload_parser_never_panics_on_mutations(edits in proptest::collection::vec((any::<usize>(), 32u8..127), 0..8)) {
        let text = mutate(SEED_WORKLOAD, &edits);
        if let Ok(w) = workload::parse("fuzz.toml", &text) {
            for s in &w.slots {
                prop_assert!(s.range.end().raw() <= MAX_GPA);
            }
        }
    }

    #[test]
    fn workload_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = workload::parse("fuzz.toml", &text);
    }
}
