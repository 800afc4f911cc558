//! `privmem bench`: one JSON document in the documented shape, and exit
//! status 2 for an unknown benchmark name.

use std::process::Command;

fn privmem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(args)
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
