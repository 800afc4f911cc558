//! The whole suite on /dev/kvm: every case the host supports passes; every
//! skip or partial run names the missing capability or VM type, or the host
//! quirk (PVM) that hides the upstream behaviour; and every case whose
//! results came from privmem's own emulation (the port-I/O hypercall
//! transport, the guest_memfd mapping for a NULL `userspace_addr`) is
//! `emulated`, never a pass; a finding case (K1-K4) may skip on a kernel it
//! has no rig measurement for. Without /dev/kvm the test skips visibly (a
//! failure under `REQUIRE_KVM=1`).

mod common;

use privmem_conformance::{run_suite, Outcome};
use privmem_core::{Emulation, Hypervisor};

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
        if let Some(why) = r.outcome.reason().filter(|_| r.outcome != Outcome::Pass) {
            // Listed by scripts/test with the other skips.
            common::skip(&format!(
                "conformance {} on kvm: {}: {why}",
                r.case.id,
                r.outcome.status()
            ));
        }
        match &r.outcome {
            Outcome::Skip(why) | Outcome::Partial(why) => {
                assert!(
                    why.contains("KVM_CAP_")
                        || why.contains("(kvm_pvm)")
                        || why.contains("PRIVMEM_GMEM_HVA")
                        // K1-K4 hold a kernel to its rig measurement.
                        || why.contains("was not measured"),
                    "{}: {} without a capability or host quirk: {why}",
                    r.case.id,
                    r.outcome.status()
                );
                if why.contains("(kvm_pvm)") {
                    assert!(
                        std::path::Path::new("/sys/module/kvm_pvm").exists(),
                        "{}: PVM skip on a host without kvm_pvm: {why}",
                        r.case.id
                    );
                }
            }
            Outcome::Emulated(why) => assert!(
                Emulation::ALL.iter().any(|e| why.contains(e.reason())),
                "{}: emulated without naming the emulation: {why}",
                r.case.id
            ),
            Outcome::Pass | Outcome::Fail(_) => {}
        }
    }
    // Over the port-I/O transport every hypercall result is privmem's.
    if hv.transport() == "port-io"
        && hv
            .check_extension(privmem_core::Cap::ExitHypercall)
            .unwrap_or(0)
            != 0
    {
        for id in ["F30", "F31"] {
            let r = results.iter().find(|r| r.case.id == id).unwrap();
            assert_eq!(r.outcome.status(), "emulated", "{id}: {:?}", r.outcome);
        }
    }
}
