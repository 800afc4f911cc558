use super::*;
use crate::bench::tests::row;
use crate::bench::{RowSpec, Samples, Target};

/// The guard without its confirming run.
fn guard(rows: &[Row]) -> Vec<BenchError> {
    guard_with(rows, GUARD_FACTOR)
}

#[test]
fn the_guard_follows_each_targets_direction() {
    // Lower is better: 2.5x the baseline's time fails, 1.9x passes.
    assert_eq!(guard(&[row(Target::RatioAtMost(1.05), 1.0, 2.5)]).len(), 1);
    assert!(guard(&[row(Target::RatioAtMost(1.05), 1.0, 1.9)]).is_empty());
    assert_eq!(guard(&[row(Target::RatioBelow(1.0), 1.0, 2.1)]).len(), 1);
    // Higher is better: 0.4x the baseline's rate fails, 0.6x passes.
    assert_eq!(guard(&[row(Target::RatioAtLeast(0.9), 1.0, 0.4)]).len(), 1);
    assert!(guard(&[row(Target::RatioAtLeast(0.9), 1.0, 0.6)]).is_empty());
    assert_eq!(
        guard(&[row(Target::PrivmemAtLeast(10.0), 4.0, 1.0)]).len(),
        1
    );
    // A missed target alone is not a regression.
    assert!(guard(&[row(Target::RatioAtMost(1.05), 1.0, 1.5)]).is_empty());
    // No figure at all is.
    let e = guard(&[row(Target::RatioAtMost(1.05), 0.0, 0.0)]);
    assert!(e[0].error.contains("regression guard"), "{}", e[0].error);
}

#[test]
fn a_context_row_is_never_missed_nor_guarded_but_needs_a_figure() {
    // Either side may be the larger one: neither is a regression.
    for privmem in [10.0, 0.1] {
        let r = row(Target::Context, 1.0, privmem);
        assert_eq!(r.met, None);
        assert_eq!(r.worse_than_baseline, None);
        assert_eq!(r.target, "none (context)");
        assert!(guard(&[r]).is_empty());
    }
    // No figure at all (0 / 0) still fails the run.
    let e = guard(&[row(Target::Context, 0.0, 0.0)]);
    assert_eq!(e.len(), 1);
    assert!(e[0].error.contains("no figure"), "{}", e[0].error);
    // The JSON says null for both, not a made-up verdict.
    let json = serde_json::to_value(row(Target::Context, 1.0, 3.0)).unwrap();
    assert!(json["met"].is_null() && json["worse_than_baseline"].is_null());
    let json = serde_json::to_value(row(Target::RatioAtMost(1.0), 1.0, 3.0)).unwrap();
    assert_eq!(json["met"], false);
}

#[test]
fn a_normalized_target_leaves_the_guard_on_privmem_against_its_baseline() {
    // `parallel`: two vCPUs at 0.85x one vCPU's rate, 0.43 of the
    // machine's scaling. The target reads 0.43 and is missed; the guard
    // reads 0.85 (1.18x worse) and passes.
    let s = Samples {
        base: vec![2.0],
        privmem: vec![1.7],
    };
    let spec = |name| RowSpec {
        name,
        unit: "u",
        target: Target::RatioAtLeast(0.9),
        baseline_is: "b",
        note: None,
    };
    let r = spec("t").row_guarded_by(&s, 0.43, s.ratio());
    assert_eq!(r.met, Some(false));
    assert!((r.ratio - 0.43).abs() < 1e-9);
    assert!(guard(&[r]).is_empty());
    // Below half its own baseline's rate, the guard fails it.
    let slow = Samples {
        base: vec![2.0],
        privmem: vec![0.9],
    };
    let r = spec("t").row_guarded_by(&slow, 0.9, slow.ratio());
    assert_eq!(r.met, Some(true));
    assert_eq!(guard(&[r]).len(), 1);
}

fn named(name: &str, target: Target, base: f64, privmem: f64) -> Row {
    let mut r = row(target, base, privmem);
    r.name = name.to_string();
    r
}

#[test]
fn a_trip_the_confirming_run_repeats_fails_with_both_figures() {
    let mut rows = [named("fault", Target::RatioAtMost(1.5), 1.0, 2.1)];
    let e = confirmed(&mut rows, || {
        Ok(vec![named("fault", Target::RatioAtMost(1.5), 1.0, 2.4)])
    });
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].name, "fault");
    assert!(
        e[0].error.contains("2.10x") && e[0].error.contains("2.40x"),
        "{}",
        e[0].error
    );
    assert!(
        e[0].error.contains("confirmed by a second run"),
        "{}",
        e[0].error
    );
}

#[test]
fn a_trip_the_confirming_run_does_not_repeat_passes_with_its_figure_kept() {
    let mut rows = [
        named("fault", Target::RatioAtMost(1.5), 1.0, 2.1),
        named("other", Target::RatioAtMost(1.5), 1.0, 1.0),
    ];
    let e = confirmed(&mut rows, || {
        Ok(vec![
            named("fault", Target::RatioAtMost(1.5), 1.0, 1.8),
            named("other", Target::RatioAtMost(1.5), 1.0, 9.0),
        ])
    });
    assert!(
        e.is_empty(),
        "{:?}",
        e.iter().map(|e| &e.error).collect::<Vec<_>>()
    );
    // The first run's figures stay; the second's sits beside them.
    assert!((rows[0].ratio - 2.1).abs() < 1e-9);
    assert_eq!(rows[0].context.get(RERUN_KEY), Some(&1.8));
    // Only the row that tripped is judged by the second run.
    assert!(!rows[1].context.contains_key(RERUN_KEY));
}

#[test]
fn no_trip_means_no_second_run() {
    let mut rows = [named("fault", Target::RatioAtMost(1.5), 1.0, 1.9)];
    let e = confirmed(&mut rows, || panic!("the benchmark must not run again"));
    assert!(e.is_empty());
}

#[test]
fn a_trip_stands_if_the_confirming_run_fails_or_lacks_the_row() {
    let trip = || [named("fault", Target::RatioAtMost(1.5), 1.0, 3.0)];
    let e = confirmed(&mut trip(), || anyhow::bail!("no memory"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].error.contains("confirming run failed: no memory"),
        "{}",
        e[0].error
    );
    let e = confirmed(&mut trip(), || {
        Ok(vec![named("exit", Target::RatioAtMost(1.5), 1.0, 1.0)])
    });
    assert_eq!(e.len(), 1);
    assert!(e[0].error.contains("no such row"), "{}", e[0].error);
}
