//! The proptest twin of `fuzz/fuzz_targets/per_exit.rs`: arbitrary raw
//! hypercall numbers and arguments, fault fields and errnos, answered by a
//! model engine through the per-exit calls (see `support/per_exit.rs`).

#[path = "support/per_exit.rs"]
mod per_exit;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn per_exit_calls_answer_hostile_exits(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = per_exit::check(&data) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn a_fixed_sequence_exercises_every_branch() {
    // Hypercall to private at page 1, then a shared fault there (converts
    // back), a poisoned fault, an EINTR "fault", unknown flags.
    let data = [
        0, 1, 1, 1, 0, 1, 1, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 1, 0, 1, 1, 1, 1, 0, 1, 1, 2, 1, 9, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1,
    ];
    per_exit::check(&data).unwrap();
}
