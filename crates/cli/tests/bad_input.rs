//! Bad input on the command line exits with 2 and a message naming the key,
//! never a panic (exit 101) or an allocation attempt.

use std::io::Write;
use std::process::Command;

fn run_text(text: &str) -> (i32, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    run_path(f.path().to_str().unwrap())
}

fn run_path(path: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(["run", "--backend", "model", path])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_rejected(text: &str, key: &str) {
    let (status, err) = run_text(text);
    assert_eq!(status, 2, "stderr: {err}");
    assert!(err.contains(key), "message should name `{key}`: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unreadable_file_exits_2() {
    let (status, err) = run_path("/nonexistent/w.toml");
    assert_eq!(status, 2);
    assert!(err.contains("/nonexistent/w.toml"), "{err}");
}

#[test]
fn bad_toml_exits_2() {
    assert_rejected("[vm\nmemory = 1", "invalid toml");
}

#[test]
fn unknown_key_exits_2_naming_key() {
    assert_rejected("[vm]\nmemory = 4096\nmemroy = 1\n", "vm.memroy");
}

#[test]
fn unknown_op_key_exits_2_naming_key() {
    assert_rejected(
        "[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1, byte = 1, colour = 1 }]\n",
        "vcpu[0].ops[0].colour",
    );
}

#[test]
fn overflowing_size_exits_2() {
    assert_rejected("[vm]\nmemory = \"99999999999TiB\"\n", "vm.memory");
}

#[test]
fn negative_number_exits_2() {
    assert_rejected("[vm]\nmemory = 4096\nvcpus = -1\n", "vm.vcpus");
}

#[test]
fn two_pow_64_bytes_exits_2() {
    assert_rejected("[vm]\nmemory = \"18446744073709551616\"\n", "vm.memory");
}

#[test]
fn huge_len_op_exits_2() {
    assert_rejected(
        "[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = \"0xffffffffffffffff\", byte = 1 }]\n",
        "vcpu[0].ops[0].gpa",
    );
}

#[test]
fn misaligned_slot_exits_2() {
    assert_rejected("[vm]\n[[slot]]\ngpa = 4097\nsize = 4096\n", "slot[0].gpa");
}

#[test]
fn bad_timeout_exits_2() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"[vm]\nmemory = 4096\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(["run", "--backend", "model", "--timeout", "-1"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
