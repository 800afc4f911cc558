#![no_main]
//! The per-exit calls under hostile input: arbitrary hypercall numbers and
//! arguments, arbitrary memory-fault fields and errnos, answered by a model
//! engine (`Engine::handle_hypercall` / `handle_memory_fault`). Never
//! panics; answers are 0/-22/-1000, `EHWPOISON` is always `Poisoned`, other
//! errnos are never faults, the map always equals the kernel's attributes.
//! Twin: `crates/core/tests/per_exit_props.rs`.
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/core/tests/support/per_exit.rs"]
mod per_exit;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = per_exit::check(data) {
        panic!("{e}");
    }
});
