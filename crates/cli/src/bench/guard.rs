//! The regression guard: a row where privmem does more than
//! [`GUARD_FACTOR`] times worse than its own same-run baseline fails the
//! run with the row's name (see the [module docs](super)).
//!
//! **A trip is confirmed before it fails the run.** The benchmark whose
//! row tripped runs once more, and the row fails only if it trips in that
//! run too. An engine that became 2x slower trips both times; one wild
//! stretch of a shared host (measured: a `--quick` `fault` at 2.01x on a
//! host whose full runs give 1.80-1.87x, docs/performance.md) trips once.
//! The first run's row stays in the output, whatever the second gave,
//! with the second's figure beside it (`guard_rerun_worse_than_baseline`).

use super::{BenchError, Row, GUARD_FACTOR};

/// Context key of the confirming run's figure on a row that tripped.
pub const RERUN_KEY: &str = "guard_rerun_worse_than_baseline";

/// The guard's failures among one benchmark's `rows`, each trip confirmed
/// by `rerun` (the same benchmark, run again), which is called only if a
/// row tripped. A row whose trip the second run does not repeat gets that
/// run's figure in its context and is not a failure; a failed rerun, or
/// one without the row, leaves the trip standing.
pub fn confirmed(
    rows: &mut [Row],
    rerun: impl FnOnce() -> anyhow::Result<Vec<Row>>,
) -> Vec<BenchError> {
    let factor = guard_factor();
    let trips = guard_with(rows, factor);
    if trips.is_empty() {
        return trips;
    }
    let second = match rerun() {
        Ok(second) => second,
        Err(e) => {
            return trips
                .into_iter()
                .map(|t| BenchError {
                    error: format!("{}; its confirming run failed: {e:#}", t.error),
                    name: t.name,
                })
                .collect();
        }
    };
    let mut failures = Vec::new();
    for trip in trips {
        let again = second.iter().find(|r| r.name == trip.name);
        let verdict = again.map(|r| (r.worse_than_baseline, guard_failure(r, factor)));
        match verdict {
            Some((w, None)) => {
                eprintln!(
                    "bench guard: {} tripped once ({}), not again: {}x in the confirming run",
                    trip.name,
                    trip.error,
                    w.map_or("-".to_string(), |w| format!("{w:.2}"))
                );
                if let (Some(w), Some(row)) = (w, rows.iter_mut().find(|r| r.name == trip.name)) {
                    row.context.insert(RERUN_KEY.to_string(), w);
                }
            }
            Some((_, Some(why))) => failures.push(BenchError {
                error: format!("{}; confirmed by a second run: {why}", trip.error),
                name: trip.name,
            }),
            None => failures.push(BenchError {
                error: format!("{}; the confirming run had no such row", trip.error),
                name: trip.name,
            }),
        }
    }
    failures
}

/// [`GUARD_FACTOR`], or `PRIVMEM_BENCH_GUARD_FACTOR` (for unoptimized
/// builds, whose engine is several times slower than its baselines).
fn guard_factor() -> f64 {
    std::env::var("PRIVMEM_BENCH_GUARD_FACTOR")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(GUARD_FACTOR)
}

/// The rows of `rows` the guard fails at `factor`, unconfirmed.
fn guard_with(rows: &[Row], factor: f64) -> Vec<BenchError> {
    rows.iter()
        .filter_map(|r| {
            Some(BenchError {
                name: r.name.clone(),
                error: guard_failure(r, factor)?,
            })
        })
        .collect()
}

/// Why the guard fails `r`, if it does: privmem more than `factor` times
/// worse than its baseline, or no figure at all. A context row
/// ([`super::Target::Context`]) has no direction to be worse in: only a
/// missing figure (a ratio that is not finite) fails it.
fn guard_failure(r: &Row, factor: f64) -> Option<String> {
    match r.worse_than_baseline {
        Some(w) if w.is_nan() || w > factor => Some(format!(
            "regression guard: privmem is {w:.2}x worse than its same-run baseline \
             (ratio {:.3}, target {}); the guard allows {factor}x",
            r.ratio, r.target
        )),
        None if !r.ratio.is_finite() => Some(format!(
            "regression guard: the context row has no figure (ratio {}, baseline {}, privmem {})",
            r.ratio, r.baseline, r.privmem
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
