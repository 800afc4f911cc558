//! Shared helpers for the suite's integration tests.
#![allow(dead_code)]

use privmem_conformance::{CaseResult, Outcome};
use privmem_kvm::{sigrtmin, KickSignal, KvmHypervisor, KvmOptions};

/// Opens /dev/kvm with the host's options ([`KvmOptions::probe`]) and a
/// `SIGRTMIN` kick, as the CLI does, or prints a visible skip and returns
/// `None`; with `REQUIRE_KVM=1` a missing /dev/kvm fails the test instead.
pub fn kvm_or_skip(test: &str) -> Option<KvmHypervisor> {
    let options = KvmOptions::probe().with_kick(KickSignal::Install(sigrtmin()));
    match KvmHypervisor::open(options) {
        Ok(h) => Some(h),
        Err(e) => {
            assert!(
                std::env::var("REQUIRE_KVM").as_deref() != Ok("1"),
                "{test}: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1"
            );
            skip(&format!("{test}: /dev/kvm unavailable ({e})"));
            None
        }
    }
}

/// Where skips are recorded for `scripts/test` to print after the run
/// (libtest hides a passing test's stderr); the KVM tests use the same file.
pub const SKIP_LOG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped.txt");

/// A visible skip: on stderr, and appended to [`SKIP_LOG`].
pub fn skip(line: &str) {
    use std::io::Write as _;
    eprintln!("SKIP: {line}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIP_LOG);
    if let Ok(mut f) = log {
        // One write per line: concurrent tests append whole lines.
        let _ = f.write_all(format!("SKIP: {line}\n").as_bytes());
    }
}

/// Prints one line per result (visible with `--nocapture`, and on failure).
pub fn print(results: &[CaseResult]) {
    for r in results {
        eprintln!(
            "{:<4} {:<6} {:<5} {:>6.2}s {} {}",
            r.case.id,
            r.backend,
            r.outcome.status(),
            r.elapsed.as_secs_f64(),
            r.case.name,
            r.outcome.reason().unwrap_or("")
        );
    }
}

/// The failures, formatted.
pub fn failures(results: &[CaseResult]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail(why) => Some(format!("{} ({}): {why}", r.case.id, r.backend)),
            _ => None,
        })
        .collect()
}
