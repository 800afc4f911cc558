//! Proptest twins of the cargo-fuzz targets in `fuzz/`: short bounded runs in
//! the test command. The long runs are `cargo fuzz run <target>` (fuzz/README.md).

use privmem_core::abi::{
    decode_exit, exit_reason, RunResult, EFAULT, EHWPOISON, KVM_EXIT_MEMORY_FAULT,
};
use privmem_core::exit::MapGpaRange;
use privmem_core::Exit;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn exit_decode_memory_fault_only_from_contract(
        run in proptest::collection::vec(any::<u8>(), 0..600),
        failed in any::<bool>(),
        errno in prop_oneof![Just(EFAULT), Just(EHWPOISON), Just(4), Just(11), any::<i32>()],
        reason in prop_oneof![Just(39u32), Just(2), Just(3), Just(6), any::<u32>()],
    ) {
        let mut run = run;
        if run.len() >= 12 {
            run[8..12].copy_from_slice(&reason.to_ne_bytes());
        }
        let result = if failed { RunResult::Err(errno) } else { RunResult::Ok };
        if let Ok(Exit::MemoryFault(_)) = decode_exit(result, &run) {
            prop_assert!(failed && (errno == EFAULT || errno == EHWPOISON));
            prop_assert_eq!(exit_reason(&run).ok(), Some(KVM_EXIT_MEMORY_FAULT));
        }
    }

    #[test]
    fn map_gpa_range_decode_valid_means_sane(gpa in any::<u64>(), pages in any::<u64>(), attrs in prop_oneof![0u64..64, any::<u64>()]) {
        if let Ok(m) = MapGpaRange::decode(gpa, pages, attrs) {
            prop_assert!(m.gpa.is_page_aligned());
            prop_assert!(m.pages > 0);
            prop_assert!((m.gpa.raw() >> 12).checked_add(m.pages).is_some());
            prop_assert_eq!(m.attrs(), attrs);
            prop_assert_eq!(m.to_private, attrs & 0x10 != 0);
        }
    }
}
