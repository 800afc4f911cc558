//! `privmem conformance`: by default the model runs the newest verified
//! upstream profile (7.3) and passes every case, in a report of a few
//! lines; `--profile host` models this host's KVM and skips what the KVM
//! backend skips; the human report groups skips by reason and agrees with
//! the JSON; `--verbose` prints every case.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::privmem;
use privmem_conformance::case_list;

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["conformance", "--json"];
    all.extend(args);
    let (code, out, err) = privmem(&all);
    assert_eq!(code, 0, "{all:?}: stderr: {err}\nstdout: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `backend` → (case id → status), from the JSON report.
fn statuses(v: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut m: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for c in v["cases"].as_array().expect("cases") {
        m.entry(c["backend"].as_str().unwrap().to_string())
            .or_default()
            .insert(
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            );
    }
    m
}

#[test]
fn by_default_the_model_passes_every_case_of_7_3_in_a_few_lines() {
    let n = case_list().len();
    let (code, out, err) = privmem(&["conformance", "--backend", "model"]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("model (profile 7.3, upstream Linux)  {n} pass,  0 fail,  0 skip,  0 partial,  0 emulated"),
        "{out}"
    );
    // The summary, a blank line and the hint: no per-case lines.
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[2].contains("--verbose"), "{out}");
    let v = json(&["--backend", "model"]);
    assert_eq!(v["profile"], "7.3");
    let s = statuses(&v);
    assert_eq!(s["model"].len(), n);
    assert!(s["model"].values().all(|st| st == "pass"), "{v}");
}

#[test]
fn verbose_prints_every_case_then_the_summary() {
    let n = case_list().len();
    let (code, out, err) = privmem(&["conformance", "--backend", "model", "--verbose"]);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), n + 1, "{out}");
    for (line, case) in lines.iter().zip(case_list()) {
        assert!(
            line.starts_with(&format!("{:<4} model  pass  {}", case.id, case.name)),
            "{line}"
        );
    }
    assert!(lines[n].starts_with("model (profile 7.3"), "{out}");
    assert!(
        err.contains("model: profile 7.3, upstream Linux, max_gpa_bits"),
        "{err}"
    );
}

#[test]
fn the_host_profile_skips_what_this_hosts_kvm_skips() {
    if !common::kvm_or_skip("the_host_profile_skips_what_this_hosts_kvm_skips") {
        return;
    }
    let v = json(&["--backend", "all", "--profile", "host"]);
    assert_eq!(v["profile"], "host");
    let s = statuses(&v);
    let (model, kvm) = (&s["model"], &s["kvm"]);
    assert_eq!(model.len(), kvm.len());
    // The findings (K1-K4) are held to a rig kernel's measurement, which
    // a non-rig kernel lacks; every other case skips (or runs partly) on
    // the host's model exactly where it does on the host's KVM.
    for (id, st) in kvm.iter().filter(|(id, _)| !id.starts_with('K')) {
        let m = &model[id];
        let ran = |st: &str| matches!(st, "pass" | "emulated");
        assert!(
            m == st || (ran(m) && ran(st)),
            "{id}: model (host profile) {m}, kvm {st}: {v}"
        );
    }
    // `auto` is an alias.
    assert_eq!(
        statuses(&json(&["--backend", "model", "--profile", "auto"]))["model"],
        *model
    );
}

#[test]
fn the_report_groups_skips_by_reason_and_agrees_with_the_json() {
    if !common::kvm_or_skip("the_report_groups_skips_by_reason_and_agrees_with_the_json") {
        return;
    }
    let v = json(&["--backend", "kvm"]);
    let (code, out, err) = privmem(&["conformance", "--backend", "kvm"]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    let cases = v["cases"].as_array().unwrap();
    let count = |st: &str| cases.iter().filter(|c| c["status"] == st).count();
    let summary = out.lines().next().unwrap();
    assert!(summary.starts_with("kvm (/dev/kvm, kernel "), "{out}");
    let counts = format!(
        "{:>2} pass, {:>2} fail, {:>2} skip, {:>2} partial, {:>2} emulated",
        count("pass"),
        count("fail"),
        count("skip"),
        count("partial"),
        count("emulated")
    );
    assert!(summary.ends_with(&counts), "{summary} vs {counts}");
    // One line per distinct skip reason, ending in that reason.
    let reasons: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c["status"] == "skip")
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    let mut lines = out
        .lines()
        .skip_while(|l| !l.ends_with("skipped, by reason:"));
    if reasons.is_empty() {
        assert!(lines.next().is_none(), "{out}");
        return;
    }
    lines.next();
    let group_lines: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).collect();
    assert_eq!(group_lines.len(), reasons.len(), "{out}");
    for reason in reasons {
        let ids: Vec<&str> = cases
            .iter()
            .filter(|c| c["status"] == "skip" && c["reason"] == reason)
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        let line = group_lines
            .iter()
            .find(|l| l.ends_with(&format!(": {reason}")))
            .unwrap_or_else(|| panic!("no line for `{reason}`: {out}"));
        let (listed, _) = line.trim_start().split_once(": ").unwrap();
        let want: BTreeSet<String> = ids.iter().map(|s| (*s).to_string()).collect();
        assert_eq!(expand(listed), want, "`{line}`");
    }
}

/// "A1–A3, H1" → {A1, A2, A3, H1}.
fn expand(listed: &str) -> BTreeSet<String> {
    let split = |id: &str| {
        let d = id.find(|c: char| c.is_ascii_digit()).unwrap();
        (id[..d].to_string(), id[d..].parse::<u32>().unwrap())
    };
    let mut ids = BTreeSet::new();
    for token in listed.split(", ") {
        match token.split_once('–') {
            Some((a, b)) => {
                let ((la, na), (lb, nb)) = (split(a), split(b));
                assert_eq!(la, lb, "{token}");
                assert!(nb >= na + 2, "a range of fewer than 3: {token}");
                ids.extend((na..=nb).map(|n| format!("{la}{n}")));
            }
            None => {
                ids.insert(token.to_string());
            }
        }
    }
    ids
}

#[test]
fn unknown_and_retired_profiles_exit_2() {
    for (p, want) in [("7.4", "host for this host's KVM"), ("6.18", "retired")] {
        let (code, _, err) = privmem(&["conformance", "--profile", p]);
        assert_eq!(code, 2, "{p}: {err}");
        assert!(err.contains(want), "{p}: {err}");
    }
}

/// `privmem ARGS` under a pseudo-terminal (util-linux `script`): all it
/// wrote, stdout and stderr together; `None` after a visible skip when
/// `script` is missing.
fn on_a_terminal(test: &str, args: &str) -> Option<String> {
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_privmem"));
    match std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "{cmd}: {out:?}");
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            common::skip(&format!("{test}: util-linux `script` unavailable ({e})"));
            None
        }
    }
}

/// The bar is drawn at most 20 times a second, so a fast run may skip the
/// last counts: the test looks for the bar and its total.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let n = case_list().len();
    let test = "progress_is_drawn_on_a_terminal_only";
    if let Some(tty) = on_a_terminal(test, "conformance --backend model") {
        assert!(
            tty.contains("conformance [") && tty.contains(&format!("/{n} (")),
            "{tty}"
        );
    }
    let (_, out, err) = privmem(&["conformance", "--backend", "model"]);
    assert!(
        !err.contains("conformance [") && !err.contains('\x1b'),
        "{err}"
    );
    assert!(!out.contains('\x1b'), "{out}");
    if !common::kvm_or_skip(test) {
        return;
    }
    if let Some(tty) = on_a_terminal(test, "conformance --differential --cases 8") {
        assert!(
            tty.contains("differential [") && tty.contains("/8 ("),
            "{tty}"
        );
    }
    let (code, out, err) = privmem(&["conformance", "--differential", "--cases", "8"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("sequences (") && !err.contains('\x1b'),
        "{err}"
    );
    assert!(out.contains("differential: "), "{out}");
}
