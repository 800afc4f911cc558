//! `privmem caps` ends with a summary that follows what it probed: the
//! same run's JSON holds both, so whatever this host has, they must agree.

use std::process::Command;

use serde_json::Value;

fn caps_json() -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(["caps", "--json"])
        .output()
        .expect("privmem runs");
    let doc = serde_json::from_slice(&out.stdout).expect("one JSON document");
    (out.status.code(), doc)
}

#[test]
fn summary_follows_the_probed_capabilities() {
    let (status, doc) = caps_json();
    let lines: Vec<&str> = doc["summary"]
        .as_array()
        .expect("a summary")
        .iter()
        .map(|l| l.as_str().expect("text"))
        .collect();
    let text = lines.join("\n");
    assert!(text.contains("rig/run -- privmem"), "{text}");
    assert!(text.contains("rig/run --kernel 6.12 -- privmem"), "{text}");
    if doc["kvm"]["available"] != Value::Bool(true) {
        assert_eq!(status, Some(1));
        assert!(
            text.starts_with("Every VM type runs on the model here"),
            "{text}"
        );
        return;
    }
    assert_eq!(status, Some(0));
    let gmem = doc["kvm"]["system"]["KVM_CAP_GUEST_MEMFD"]
        .as_u64()
        .expect("probed");
    if gmem == 0 {
        assert!(
            text.contains("guest_memfd: none on this host (KVM_CAP_GUEST_MEMFD = 0)"),
            "{text}"
        );
    } else {
        assert!(
            text.contains(&format!("guest_memfd: yes (KVM_CAP_GUEST_MEMFD = {gmem}")),
            "{text}"
        );
    }
    let first = lines[0];
    let (on_kvm, on_model) = first
        .split_once(" on real KVM")
        .expect("names what runs on KVM");
    for t in doc["backends"]["kvm"].as_array().expect("per type") {
        let name = t["type"].as_str().unwrap();
        if t["runs"] == Value::Bool(true) {
            assert!(on_kvm.contains(name), "{name} runs on KVM: {first}");
        } else {
            let why = t["why"].as_str().unwrap();
            assert!(on_model.contains(name), "{name} runs on the model: {first}");
            assert!(
                lines.contains(&format!("  - {name}: {why}").as_str()),
                "{name}'s reason: {text}"
            );
        }
    }
}
