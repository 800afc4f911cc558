//! The human report of `privmem conformance`: one summary line per backend
//! (with the model's profile or the kernel KVM ran), then, per backend, the
//! skips and emulations grouped by reason (one line per distinct reason,
//! with the case ids), and the partial runs and failures in full.

use privmem_conformance::CaseResult;

/// The statuses, in the order the summary counts them.
pub const STATUSES: [&str; 5] = ["pass", "fail", "skip", "partial", "emulated"];

/// The suite's results on one backend.
pub struct BackendRun {
    /// "model" or "kvm".
    pub backend: &'static str,
    /// What it ran as: "profile 7.3, upstream Linux", "kernel 6.18.44 ...".
    pub context: String,
    /// Every case's result, in suite order.
    pub results: Vec<CaseResult>,
}

impl BackendRun {
    /// How many results have `status`.
    fn count(&self, status: &str) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome.status() == status)
            .count()
    }

    /// "model (profile 7.3, upstream Linux)".
    fn label(&self) -> String {
        format!("{} ({})", self.backend, self.context)
    }
}

/// "A1   model  pass  guest_memfd flags", with the reason after a colon
/// (`--verbose`: one line per case as it finishes).
pub fn case_line(r: &CaseResult) -> String {
    let mut s = format!(
        "{:<4} {:<6} {:<5} {}",
        r.case.id,
        r.backend,
        r.outcome.status(),
        r.case.name
    );
    if let Some(why) = r.outcome.reason() {
        s.push_str(": ");
        s.push_str(why);
    }
    s
}

/// One line per backend: "kvm (kernel ...):  3 pass, 0 fail, 41 skip, ...",
/// the labels padded so the counts line up.
pub fn summary(runs: &[BackendRun]) -> Vec<String> {
    let labels: Vec<String> = runs.iter().map(BackendRun::label).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    runs.iter()
        .zip(&labels)
        .map(|(run, label)| {
            let counts: Vec<String> = STATUSES
                .iter()
                .map(|st| format!("{:>2} {st}", run.count(st)))
                .collect();
            format!("{label:<width$}  {}", counts.join(", "))
        })
        .collect()
}

/// The summary, then every backend's cases that did not pass: skips and
/// emulations grouped by reason, partial runs and failures one per case.
pub fn human(runs: &[BackendRun]) -> Vec<String> {
    let mut out = summary(runs);
    for run in runs {
        out.extend(grouped(run, "skip", "skipped"));
        out.extend(grouped(run, "emulated", "emulated (not a pass)"));
        out.extend(in_full(run, "partial", "partial (only some checks ran)"));
        out.extend(in_full(run, "fail", "FAILED"));
    }
    out
}

/// "kvm: 41 skipped, by reason:" and one line per distinct reason: "  ids:
/// reason", reasons in the order of their first case.
fn grouped(run: &BackendRun, status: &str, heading: &str) -> Vec<String> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in run.results.iter().filter(|r| r.outcome.status() == status) {
        let why = r.outcome.reason().unwrap_or("no reason given");
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, ids)) => ids.push(r.case.id),
            None => groups.push((why, vec![r.case.id])),
        }
    }
    if groups.is_empty() {
        return Vec::new();
    }
    let n: usize = groups.iter().map(|(_, ids)| ids.len()).sum();
    let mut out = vec![
        String::new(),
        format!("{}: {n} {heading}, by reason:", run.backend),
    ];
    out.extend(
        groups
            .into_iter()
            .map(|(why, ids)| format!("  {}: {why}", id_ranges(&ids))),
    );
    out
}

/// "kvm: partial ..." and one line per case: "  B1   name: reason".
fn in_full(run: &BackendRun, status: &str, heading: &str) -> Vec<String> {
    let cases: Vec<String> = run
        .results
        .iter()
        .filter(|r| r.outcome.status() == status)
        .map(|r| {
            format!(
                "  {:<4} {}: {}",
                r.case.id,
                r.case.name,
                r.outcome.reason().unwrap_or("no reason given")
            )
        })
        .collect();
    if cases.is_empty() {
        return Vec::new();
    }
    let mut out = vec![String::new(), format!("{}: {heading}:", run.backend)];
    out.extend(cases);
    out
}

/// Case ids with runs of three or more consecutive numbers of one letter
/// shortened: `A1, A2, A3, H1, F27, F28` → "A1–A3, H1, F27, F28".
pub fn id_ranges(ids: &[&str]) -> String {
    let split = |id: &str| -> Option<(String, u32)> {
        let digits = id.find(|c: char| c.is_ascii_digit())?;
        Some((id[..digits].to_string(), id[digits..].parse().ok()?))
    };
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        if let Some((letter, first)) = split(ids[i]) {
            while j + 1 < ids.len()
                && split(ids[j + 1]).is_some_and(|(l, n)| {
                    l == letter && u64::from(n) == u64::from(first) + (j + 1 - i) as u64
                })
            {
                j += 1;
            }
        }
        if j - i >= 2 {
            parts.push(format!("{}–{}", ids[i], ids[j]));
        } else {
            parts.extend(ids[i..=j].iter().map(|s| (*s).to_string()));
        }
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use privmem_conformance::{CaseInfo, Outcome};

    use super::*;

    fn result(id: &'static str, outcome: Outcome) -> CaseResult {
        CaseResult {
            case: CaseInfo { id, name: "a case" },
            backend: "kvm",
            outcome,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn consecutive_ids_are_ranges() {
        assert_eq!(
            id_ranges(&["A1", "A2", "A3", "H1", "F27", "F28"]),
            "A1–A3, H1, F27, F28"
        );
        assert_eq!(id_ranges(&["A1", "A3", "A4", "A5", "B6"]), "A1, A3–A5, B6");
        assert_eq!(id_ranges(&["A9", "A10", "A11", "B12"]), "A9–A11, B12");
        assert_eq!(id_ranges(&["X", "A1", "A2", "A3"]), "X, A1–A3");
        assert_eq!(id_ranges(&[]), "");
    }

    #[test]
    fn skips_are_grouped_by_reason_and_the_rest_in_full() {
        let gmem = || Outcome::Skip("KVM_CAP_GUEST_MEMFD=0".into());
        let run = BackendRun {
            backend: "kvm",
            context: "kernel 6.18".into(),
            results: vec![
                result("A1", gmem()),
                result("A2", gmem()),
                result("B1", Outcome::Partial("half".into())),
                result("B2", Outcome::Pass),
                result("C1", Outcome::Skip("no sw-protected".into())),
                result("A3", gmem()),
                result("D1", Outcome::Fail("EINVAL, expected EFAULT".into())),
            ],
        };
        let out = human(&[run]);
        let text = out.join("\n");
        assert_eq!(
            out[0],
            "kvm (kernel 6.18)   1 pass,  1 fail,  4 skip,  1 partial,  0 emulated"
        );
        assert!(
            text.contains(
                "kvm: 4 skipped, by reason:\n  A1–A3: KVM_CAP_GUEST_MEMFD=0\n  C1: no sw-protected"
            ),
            "{text}"
        );
        assert!(text.contains("  B1   a case: half"), "{text}");
        assert!(
            text.contains("kvm: FAILED:\n  D1   a case: EINVAL, expected EFAULT"),
            "{text}"
        );
        assert!(!text.contains("emulated (not"), "{text}");
    }
}
