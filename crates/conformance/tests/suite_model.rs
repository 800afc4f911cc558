//! The whole suite on the model: with the 6.18 profile (this host's kernel)
//! every case must pass, with no skips; with the 6.12 profile (the rig's
//! kernel) nothing may fail and the only skips are the guest_memfd flags
//! 6.12 lacks. With the PVM host quirks the model behaves as this host's
//! KVM backend: the cases whose upstream behaviour PVM hides skip, naming
//! the quirk, and nothing fails.

mod common;

use privmem_conformance::{case_list, run_suite, Outcome};
use privmem_model::{KernelProfile, ModelHypervisor, Quirks};

/// A finding case (K1-K4) the model cannot hold to a rig measurement: the
/// 6.18 profile was never measured, and the model has no pre-fault (K3).
fn unmeasured_finding(r: &privmem_conformance::CaseResult) -> bool {
    matches!(&r.outcome, Outcome::Skip(why) if r.case.id.starts_with('K')
        && (why.contains("was not measured") || why.contains("KVM_CAP_PRE_FAULT_MEMORY=0")))
}

#[test]
fn every_case_passes_on_the_6_18_model_without_skips() {
    let hv = ModelHypervisor::new(KernelProfile::V6_18);
    let results = run_suite(&hv, &|_| true, |_| {});
    common::print(&results);
    assert_eq!(results.len(), case_list().len());
    let not_passed: Vec<_> = results
        .iter()
        .filter(|r| r.outcome != Outcome::Pass && !unmeasured_finding(r))
        .map(|r| {
            format!(
                "{} {}: {:?}",
                r.case.id,
                r.outcome.status(),
                r.outcome.reason()
            )
        })
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
}

#[test]
fn nothing_fails_on_the_6_12_model_and_skips_name_gmem_flags() {
    let hv = ModelHypervisor::new(KernelProfile::V6_12);
    let results = run_suite(&hv, &|_| true, |_| {});
    common::print(&results);
    let failures = common::failures(&results);
    assert!(failures.is_empty(), "{failures:#?}");
    for r in &results {
        if let Outcome::Skip(why) = &r.outcome {
            assert!(
                why.contains("KVM_CAP_GUEST_MEMFD_FLAGS") || unmeasured_finding(r),
                "{}: unexpected skip {why}",
                r.case.id
            );
        }
    }
    let c_and_d = results.iter().filter(|r| r.case.id.starts_with(['C', 'D']));
    assert!(
        c_and_d.clone().count() == 7 && c_and_d.into_iter().all(|r| r.outcome == Outcome::Pass)
    );
}

#[test]
fn pvm_quirked_6_18_model_skips_only_what_pvm_hides() {
    let hv = ModelHypervisor::new(KernelProfile::V6_18).with_quirks(Quirks::PVM);
    let results = run_suite(&hv, &|_| true, |_| {});
    common::print(&results);
    let failures = common::failures(&results);
    assert!(failures.is_empty(), "{failures:#?}");
    let skipped: Vec<&str> = results
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Skip(why) if why.contains("(kvm_pvm)")))
        .map(|r| r.case.id)
        .collect();
    assert_eq!(skipped, ["F26", "F27"]);
    // The KVM backend's mapping keeps A13 and F28 testable under PVM.
    for id in ["A13", "F28"] {
        let r = results.iter().find(|r| r.case.id == id).unwrap();
        assert_eq!(r.outcome, Outcome::Pass, "{id}");
    }
}

#[test]
fn pvm_without_the_gmem_mapping_skips_a13_and_f28_too() {
    let quirks = Quirks {
        pvm: true,
        gmem_hva: false,
    };
    let hv = ModelHypervisor::new(KernelProfile::V6_18).with_quirks(quirks);
    let results = run_suite(&hv, &|_| true, |_| {});
    let failures = common::failures(&results);
    assert!(failures.is_empty(), "{failures:#?}");
    for id in ["A13", "F26", "F27", "F28"] {
        let r = results.iter().find(|r| r.case.id == id).unwrap();
        assert!(
            matches!(&r.outcome, Outcome::Skip(why) if why.contains("(kvm_pvm)")),
            "{id}: {:?}",
            r.outcome
        );
    }
}
