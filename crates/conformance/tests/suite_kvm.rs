//! The whole suite on /dev/kvm: every case the host supports passes, and
//! every skip names the missing capability or VM type. Without /dev/kvm the
//! test skips visibly (a failure under `REQUIRE_KVM=1`).

mod common;

use privmem_conformance::{run_suite, Outcome};

#[test]
fn every_supported_case_passes_on_kvm() {
    let Some(hv) = common::kvm_or_skip("every_supported_case_passes_on_kvm") else {
        return;
    };
    let results = run_suite(&hv, &|_| true, |_| {});
    common::print(&results);
    let failures = common::failures(&results);
    assert!(failures.is_empty(), "{failures:#?}");
    for r in &results {
        if let Outcome::Skip(why) = &r.outcome {
            assert!(
                why.contains("KVM_CAP_"),
                "{}: skip without a capability: {why}",
                r.case.id
            );
        }
    }
}
