//! A guest that never halts is ended by `--timeout` with exit status 1 and
//! `error.kind = "timeout"`, on the model and on real KVM.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

const SPIN: &str = r#"
[vm]
type = "default"
memory = "1MiB"
[[vcpu]]
ops = [ { op = "write", gpa = "0x0", len = 4096, byte = 1 }, { op = "spin" } ]
"#;

fn run_spin(backend: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(SPIN.as_bytes()).unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(["run", "--json", "--timeout", "0.5", "--backend", backend])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "timeout took {:?}",
        start.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["vcpus"][0]["error"]["kind"], "timeout");
}

#[test]
fn spinning_guest_on_model_times_out() {
    run_spin("model");
}

#[test]
fn spinning_guest_on_kvm_times_out() {
    if !common::kvm_or_skip("spinning_guest_on_kvm_times_out") {
        return;
    }
    run_spin("kvm");
}
