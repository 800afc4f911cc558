//! Every example in `examples/` runs with the outcome its `# expect:` line
//! states: on the model always, and on real KVM for `backend=kvm` examples
//! (skipped visibly without /dev/kvm; a failure under REQUIRE_KVM=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Expect {
    status: i32,
    kinds: Vec<Option<String>>,
    kvm: bool,
    implicit: Option<u64>,
    memory_faults: Option<u64>,
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn parse_expect(text: &str) -> Expect {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .expect("example has an `# expect:` line");
    let mut e = Expect {
        status: -1,
        kinds: vec![],
        kvm: false,
        implicit: None,
        memory_faults: None,
    };
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=').expect("key=value");
        match k {
            "status" => e.status = v.parse().unwrap(),
            "kinds" => {
                e.kinds = v
                    .split(',')
                    .map(|s| (s != "-").then(|| s.to_string()))
                    .collect();
            }
            "backend" => e.kvm = v == "kvm",
            "implicit" => e.implicit = Some(v.parse().unwrap()),
            "memory_faults" => e.memory_faults = Some(v.parse().unwrap()),
            other => panic!("unknown expect key {other}"),
        }
    }
    e
}

fn run(file: &Path, backend: &str) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(["run", "--json", "--backend", backend])
        .arg(file)
        .output()
        .expect("privmem runs");
    let status = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: no json ({e}); status {status}; stderr: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, json)
}

fn check(file: &Path, backend: &str, e: &Expect) {
    let (status, doc) = run(file, backend);
    let name = format!("{} on {backend}", file.display());
    assert_eq!(status, e.status, "{name}: exit status; report: {doc:#}");
    assert_eq!(doc["backend"], backend, "{name}");
    let vcpus = doc["vcpus"].as_array().expect("vcpus");
    assert_eq!(vcpus.len(), e.kinds.len(), "{name}: vcpu count");
    for (v, want) in vcpus.iter().zip(&e.kinds) {
        let got = v["error"]["kind"].as_str().map(str::to_string);
        assert_eq!(
            &got, want,
            "{name}: vcpu {} error kind; report: {doc:#}",
            v["index"]
        );
    }
    if let Some(n) = e.implicit {
        assert_eq!(
            doc["conversions"]["implicit"], n,
            "{name}: implicit conversions"
        );
    }
    if let Some(n) = e.memory_faults {
        assert_eq!(
            vcpus[0]["exits"]["memory_fault"], n,
            "{name}: memory faults"
        );
    }
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "examples missing");
    files
}

#[test]
fn examples_run_on_model_with_stated_outcome() {
    for f in example_files() {
        let e = parse_expect(&std::fs::read_to_string(&f).unwrap());
        check(&f, "model", &e);
    }
}

#[test]
fn default_examples_run_on_kvm_with_stated_outcome() {
    if !common::kvm_or_skip("default_examples_run_on_kvm_with_stated_outcome") {
        return;
    }
    for f in example_files() {
        let e = parse_expect(&std::fs::read_to_string(&f).unwrap());
        if e.kvm {
            check(&f, "kvm", &e);
        }
    }
}

#[test]
fn bad_expect_names_address_and_bytes() {
    let f = examples_dir().join("default-bad-expect.toml");
    let (status, doc) = run(&f, "model");
    assert_eq!(status, 1);
    let err = &doc["vcpus"][0]["error"];
    assert_eq!(err["gpa"], "0x2000");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("0x11") && msg.contains("0x12"), "{msg}");
}
