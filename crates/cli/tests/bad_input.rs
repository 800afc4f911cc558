//! Bad input on the command line exits with 2 and a message naming the key,
//! never a panic (exit 101) or an allocation attempt.

use std::io::Write;
use std::process::Command;

fn run_text(text: &str) -> (i32, String, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let path = f.path().to_str().unwrap().to_string();
    let (status, err) = run_path(&path);
    (status, err, path)
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

/// Exit 2, and the message names the file, the line, the key and the value.
fn assert_rejected(text: &str, key: &str, line: usize, value: &str) {
    let (status, err, path) = run_text(text);
    assert_eq!(status, 2, "stderr: {err}");
    let head = format!("{path}:{line}: key `{key}` = {value}: ");
    assert!(
        err.contains(&head),
        "message should start with {head:?}: {err}"
    );
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
    let (status, err, path) = run_text("[vm]\nmemory = 4096\n[vm\nmemory = 1");
    assert_eq!(status, 2, "stderr: {err}");
    assert!(err.contains(&format!("{path}:3: invalid toml")), "{err}");
}

#[test]
fn unknown_key_exits_2_naming_key() {
    assert_rejected("[vm]\nmemory = 4096\nmemroy = 1\n", "vm.memroy", 3, "1");
}

#[test]
fn unknown_op_key_exits_2_naming_key() {
    assert_rejected(
        "[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1, byte = 1, colour = 1 }]\n",
        "vcpu[0].ops[0].colour",
        4,
        "1",
    );
}

#[test]
fn overflowing_size_exits_2() {
    assert_rejected(
        "[vm]\nmemory = \"99999999999TiB\"\n",
        "vm.memory",
        2,
        "\"99999999999TiB\"",
    );
}

#[test]
fn negative_number_exits_2() {
    assert_rejected("[vm]\nmemory = 4096\nvcpus = -1\n", "vm.vcpus", 3, "-1");
}

#[test]
fn two_pow_64_bytes_exits_2() {
    assert_rejected(
        "[vm]\nmemory = \"18446744073709551616\"\n",
        "vm.memory",
        2,
        "\"18446744073709551616\"",
    );
}

#[test]
fn huge_len_op_exits_2() {
    assert_rejected(
        "[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = \"0xffffffffffffffff\", byte = 1 }]\n",
        "vcpu[0].ops[0].gpa",
        4,
        "0",
    );
}

#[test]
fn misaligned_slot_exits_2() {
    assert_rejected(
        "[vm]\n[[slot]]\ngpa = 4097\nsize = 4096\n",
        "slot[0].gpa",
        3,
        "4097",
    );
}

#[test]
fn vcpus_count_differing_from_vcpu_tables_exits_2_naming_both_numbers() {
    let (status, err, path) =
        run_text("[vm]\nmemory = 4096\nvcpus = 3\n[[vcpu]]\nops = [{ op = \"halt\" }]\n");
    assert_eq!(status, 2, "stderr: {err}");
    assert!(
        err.contains(&format!("{path}:3: key `vm.vcpus` = 3: ")),
        "{err}"
    );
    assert!(
        err.contains("vcpus = 3") && err.contains("1 [[vcpu]] table"),
        "{err}"
    );
}

#[test]
fn key_of_another_op_exits_2_naming_it() {
    assert_rejected(
        "[vm]\nmemory = 4096\n[[vcpu]]\nops = [\n  { op = \"write\", gpa = 0, len = 1, byte = 1, expect = 2 },\n]\n",
        "vcpu[0].ops[0].expect",
        5,
        "2",
    );
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
