//! The differential test: the same proptest operation sequences on the
//! model (profile matching the running kernel) and on real KVM must give
//! identical results. Without /dev/kvm it skips visibly (a failure under
//! `REQUIRE_KVM=1`). A model-vs-model run checks the harness itself is
//! deterministic.

mod common;

use privmem_conformance::differential::{run, DiffConfig};
use privmem_conformance::host_model;
use privmem_core::VmType;
use privmem_model::{KernelProfile, ModelHypervisor};

/// The model profile matching the running kernel.
fn profile() -> KernelProfile {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if release.starts_with("6.12") {
        KernelProfile::V6_12
    } else {
        KernelProfile::V6_18
    }
}

fn config() -> DiffConfig {
    let mut cfg = DiffConfig::default();
    if let Some(n) = std::env::var("PRIVMEM_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.cases = n;
    }
    if let Some(s) = std::env::var("PRIVMEM_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.seed = s;
    }
    cfg
}

#[test]
fn model_against_itself_is_deterministic() {
    let a = ModelHypervisor::new(profile());
    let b = ModelHypervisor::new(profile());
    let report = run(&a, &b, &config()).expect("differential ran");
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
    assert!(report.vm_types.contains(&VmType::SwProtected));
    for what in [
        "SetAttributes: ok",
        "Run: Fault",
        "Run: Hlt",
        "SetRegion: ok",
        "CreateGmem: ok",
    ] {
        assert!(
            report.coverage.contains_key(what),
            "no `{what}` in {:#?}",
            report.coverage
        );
    }
}

#[test]
fn pvm_quirked_model_against_itself_is_deterministic() {
    let quirked = || ModelHypervisor::new(profile()).with_quirks(privmem_core::Quirks::PVM);
    let report = run(&quirked(), &quirked(), &config()).expect("differential ran");
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
}

#[test]
fn model_and_kvm_agree() {
    let Some(kvm) = common::kvm_or_skip("model_and_kvm_agree") else {
        return;
    };
    // The model as this host should look: its MMU width and its quirks
    // (PVM here; none on the rig's upstream 6.12).
    let model = host_model(profile());
    let report = run(&model, &kvm, &config()).expect("differential ran");
    eprintln!(
        "differential: {} sequences, {} steps per backend, VM types {:?}, seed {:#x}, \
         model max_gpa_bits {}, quirks {:?}",
        report.sequences,
        report.steps,
        report.vm_types,
        report.seed,
        model.max_gpa_bits(),
        privmem_core::Hypervisor::quirks(&model)
    );
    for (what, n) in &report.coverage {
        eprintln!("  {n:6}  {what}");
    }
    assert!(report.agreed(), "{}", report.difference.unwrap_or_default());
}
