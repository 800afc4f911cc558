#![no_main]
//! MAP_GPA_RANGE decoding: valid results are aligned, non-empty, non-wrapping.
use libfuzzer_sys::fuzz_target;
use privmem_core::exit::MapGpaRange;

fuzz_target!(|data: [u64; 3]| {
    if let Ok(m) = MapGpaRange::decode(data[0], data[1], data[2]) {
        assert!(m.gpa.is_page_aligned());
        assert!(m.pages > 0);
        assert!(m.pages.checked_mul(4096).and_then(|l| m.gpa.raw().checked_add(l)).is_some()
            || (m.gpa.raw() >> 12).checked_add(m.pages).is_some());
        assert_eq!(m.attrs(), data[2]);
    }
});
