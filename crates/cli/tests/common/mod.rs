//! Shared helpers for the CLI's integration tests: visible, recorded skips.
#![allow(dead_code)]

/// Where skips are recorded for `scripts/test` to print after the run
/// (libtest hides a passing test's stderr); the KVM tests use the same file.
pub const SKIP_LOG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped.txt");

/// A visible skip: on stderr, and appended to [`SKIP_LOG`].
pub fn skip(line: &str) {
    use std::io::Write as _;
    eprintln!("SKIP: {line}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIP_LOG);
    if let Ok(mut f) = log {
        // One write per line: concurrent tests append whole lines.
        let _ = f.write_all(format!("SKIP: {line}\n").as_bytes());
    }
}

/// True if /dev/kvm opens read/write; otherwise records a skip for `test`
/// and returns false. With `REQUIRE_KVM=1` a missing /dev/kvm fails the
/// test instead.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("REQUIRE_KVM").as_deref() != Ok("1"),
                "{test}: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1"
            );
            skip(&format!("{test}: /dev/kvm unavailable ({e})"));
            false
        }
    }
}

/// Runs the privmem binary under test: (exit code, stdout, stderr); -1
/// when a signal ended it.
pub fn privmem(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
