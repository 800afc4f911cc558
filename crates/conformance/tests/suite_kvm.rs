//! The whole suite on /dev/kvm: every case the host supports passes, and
//! every skip names the missing capability or VM type, or the host quirk
//! (PVM) that hides the upstream behaviour, or the kernel a finding case
//! (K1-K4) has no measurement for. Without /dev/kvm the test skips
//! visibly (a failure under `REQUIRE_KVM=1`).

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
                why.contains("KVM_CAP_")
                    || why.contains("(kvm_pvm)")
                    || why.contains("PRIVMEM_GMEM_HVA")
                    // K1-K4 hold a kernel to its rig measurement.
                    || why.contains("was not measured"),
                "{}: skip without a capability or host quirk: {why}",
                r.case.id
            );
            if why.contains("(kvm_pvm)") {
                assert!(
                    std::path::Path::new("/sys/module/kvm_pvm").exists(),
                    "{}: PVM skip on a host without kvm_pvm: {why}",
                    r.case.id
                );
            }
        }
    }
}
