#![no_main]
//! The workload parser never panics and never accepts out-of-range memory.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(w) = privmem_runner::workload::parse("fuzz.toml", text) {
            for s in &w.slots {
                assert!(s.range.end().raw() <= privmem_runner::workload::MAX_GPA);
            }
        }
    }
});
