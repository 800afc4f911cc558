//! `privmem bench`: one JSON document in the documented shape, and exit
//! status 2 for an unknown benchmark name.

use std::process::Command;

/// An unoptimized engine is several times slower than its baselines:
/// debug builds widen the regression guard (the guard's own test sets it).
const GUARD: (&str, &str) = (
    "PRIVMEM_BENCH_GUARD_FACTOR",
    if cfg!(debug_assertions) { "100" } else { "2" },
);

fn privmem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(args)
        .env(GUARD.0, GUARD.1)
        .output()
        .unwrap()
}

#[test]
fn bench_quick_json_has_the_documented_fields() {
    // `convert` runs on the model on every host and takes about a second.
    let out = privmem(&["bench", "convert", "--quick", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["machine"].as_str().is_some_and(|m| !m.is_empty()));
    let benches = doc["benches"].as_array().unwrap();
    let names: Vec<&str> = benches
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["convert/2MiB", "convert/4KiB"]);
    for b in benches {
        assert_eq!(b["unit"], "s/GiB");
        for key in ["baseline", "privmem", "ratio"] {
            assert!(b[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {b}");
        }
        assert!(b["target"].as_str().is_some_and(|t| t.starts_with("<=")));
        assert!(b["met"].is_boolean());
    }
}

#[test]
fn bench_unknown_name_exits_2() {
    let out = privmem(&["bench", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown benchmark `nosuch`"));
}

fn privmem_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_privmem"));
    c.args(args).env_remove("REQUIRE_KVM").env(GUARD.0, GUARD.1);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn a_benchmark_that_fails_fails_the_run() {
    let out = privmem_env(
        &["bench", "attrmap", "--quick", "--json"],
        &[("PRIVMEM_BENCH_INJECT", "error:attrmap")],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["errors"][0]["name"], "attrmap", "{doc}");
    // The table form too.
    let out = privmem_env(
        &["bench", "attrmap", "--quick"],
        &[("PRIVMEM_BENCH_INJECT", "error:attrmap")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("attrmap: FAILED: injected failure"));
}

#[test]
fn a_benchmark_without_dev_kvm_is_a_recorded_skip() {
    let inject = [("PRIVMEM_BENCH_INJECT", "no-kvm")];
    let out = privmem_env(&["bench", "exit", "--quick", "--json"], &inject);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["benches"].as_array().map(Vec::len), Some(0), "{doc}");
    assert_eq!(doc["skipped"][0]["name"], "exit", "{doc}");
    assert!(doc["skipped"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("/dev/kvm unavailable")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bench exit: SKIPPED"));
    // Where /dev/kvm is required, the same skip is a failure.
    let out = privmem_env(
        &["bench", "exit", "--quick", "--json"],
        &[inject[0], ("REQUIRE_KVM", "1")],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn rss_probe_reports_the_setups_own_memory_per_setup() {
    let out = privmem(&["bench", "--rss-probe", &(1u64 << 30).to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kib = doc["rss_growth_kib"].as_f64().unwrap();
    let heap = doc["heap_bytes"].as_f64().unwrap();
    // A fresh process, so the figure is the setups' alone: well under the
    // tens of MiB the whole bench process holds. And a figure: one setup
    // alone once grew the RSS by 0 KiB on both sides of the ratio.
    assert!(kib > 0.0 && kib < 8192.0, "{doc}");
    assert!(heap > 0.0, "{doc}");
}

#[test]
fn a_row_twice_worse_than_its_baseline_fails_the_run_by_name() {
    let args = ["bench", "convert", "--quick", "--json"];
    let out = privmem_env(&args, &[("PRIVMEM_BENCH_INJECT", "regress:convert/4KiB")]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = doc["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{doc}");
    assert_eq!(errors[0]["name"], "convert/4KiB");
    let error = errors[0]["error"].as_str().unwrap();
    assert!(error.contains("regression guard"), "{error}");
    // The trip was confirmed by a second run of the benchmark.
    assert!(error.contains("confirmed by a second run"), "{error}");
    // Without the injection the same run passes the guard: every row is
    // within it, or was in its confirming run.
    let out = privmem_env(&args, &[]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for b in doc["benches"].as_array().unwrap() {
        let limit: f64 = GUARD.1.parse().unwrap();
        let first = b["worse_than_baseline"].as_f64().unwrap();
        let rerun = b["context"]["guard_rerun_worse_than_baseline"].as_f64();
        assert!(first <= limit || rerun.is_some_and(|w| w <= limit), "{b}");
    }
}

#[test]
fn private_memory_benchmarks_skip_visibly_without_it() {
    let args = [
        "bench",
        "embed",
        "kvm/convert",
        "kvm/exit",
        "kvm/prefault",
        "--json",
    ];
    let inject = ("PRIVMEM_BENCH_INJECT", "no-private-mem");
    let out = privmem_env(&args, &[inject]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["benches"].as_array().unwrap().is_empty(), "{doc}");
    let skipped = doc["skipped"].as_array().unwrap();
    let names: Vec<&str> = skipped
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["embed", "kvm/convert", "kvm/exit", "kvm/prefault"]);
    for s in skipped {
        let why = s["reason"].as_str().unwrap();
        assert!(
            why.contains("no private memory") || why.contains("/dev/kvm unavailable"),
            "{why}"
        );
    }
    // In the rig a skip is an error.
    let out = privmem_env(&args, &[inject, ("REQUIRE_PRIVATE_MEM", "1")]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["errors"].as_array().unwrap().len(), 4, "{doc}");
}
