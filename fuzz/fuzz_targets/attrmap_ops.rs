#![no_main]
//! Attribute-map operation sequences against a dense per-page oracle.
use libfuzzer_sys::fuzz_target;
use privmem_core::attrmap::AttrMap;
use privmem_core::{Gpa, GpaRange};

const PAGES: usize = 256;

fuzz_target!(|ops: Vec<(u8, u8, bool)>| {
    let mut map = AttrMap::new();
    let mut dense = [false; PAGES];
    for (start, len, private) in ops {
        let (start, len) = (start as u64, (len as u64 % 32) + 1);
        let end = (start + len).min(PAGES as u64);
        if end <= start {
            continue;
        }
        let r = GpaRange::new(Gpa(start * 4096), (end - start) * 4096).unwrap();
        let before = dense[start as usize..end as usize].iter().filter(|&&p| p != private).count() as u64;
        assert_eq!(map.set(r, private), before);
        dense[start as usize..end as usize].iter_mut().for_each(|p| *p = private);
        assert!(map.check_invariants().is_ok());
    }
    for (i, &p) in dense.iter().enumerate() {
        assert_eq!(map.is_private(Gpa(i as u64 * 4096)), p);
    }
});
