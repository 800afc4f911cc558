//! `privmem run --trace FILE` and `privmem demo --trace DIR` from the
//! outside: what gets written, and what is refused.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/implicit-convert.toml"
);

fn privmem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_privmem"))
        .args(args)
        .output()
        .expect("privmem runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_traced(path: &Path) -> Output {
    let p = path.to_str().expect("utf-8 path");
    privmem(&["run", "--backend", "model", EXAMPLE, "--trace", p])
}

#[test]
fn json_trace_has_every_conversion_in_order_and_the_final_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let out = run_traced(&path);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines[0]["initial"], "private");
    assert_eq!(lines[0]["slots"][0]["guest_memfd"], true);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "final_map");
    let events = &lines[1..lines.len() - 1];
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let conv: Vec<(&str, bool)> = events
        .iter()
        .filter(|e| e["event"] == "converted")
        .map(|e| {
            (
                e["gpa"].as_str().unwrap(),
                e["to_private"].as_bool().unwrap(),
            )
        })
        .collect();
    // The workload's story: four pages go shared, then two come back.
    let story = [
        ("0x100000", false),
        ("0x101000", false),
        ("0x102000", false),
        ("0x103000", false),
        ("0x100000", true),
        ("0x101000", true),
    ];
    assert_eq!(conv, story);
    for e in events.iter().filter(|e| e["event"] == "converted") {
        assert_eq!(e["cause"], "memory_fault");
        assert_eq!(e["vcpu"], 0);
        assert_eq!(e["discard"], true);
    }
    // Every conversion follows the memory fault that asked for it.
    for (i, e) in events.iter().enumerate() {
        if e["event"] == "converted" {
            let f = &events[i - 1];
            assert_eq!(f["event"], "memory_fault");
            assert_eq!(f["gpa"], e["gpa"]);
            assert_eq!(f["private"], e["to_private"]);
        }
    }
    let done = events.last().unwrap();
    assert_eq!(done["event"], "vcpu_done");
    assert_eq!(done["state"], "halted");
    let shared: Vec<&Value> = last["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["private"] == false)
        .collect();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0]["gpa"], "0x102000");
    assert_eq!(shared[0]["size"], "0x2000");
}

#[test]
fn json_trace_names_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.json");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/fault-loop.toml"
    );
    let out = privmem(&[
        "run",
        "--backend",
        "model",
        example,
        "--trace",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    let done: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "vcpu_done")
        .expect("a vcpu_done line");
    assert_eq!(done["state"], "stopped");
    assert_eq!(done["error"]["kind"], "fault_loop");
    assert_eq!(done["error"]["gpa"], "0x1000");
}

#[test]
fn svg_trace_is_a_picture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.svg");
    let out = run_traced(&path);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&path).unwrap();
    let tree =
        resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default()).expect("a valid SVG");
    assert!(tree.size().width() > 900.0 && tree.size().height() > 400.0);
    for label in ["vCPU 0", "final", "0x102000", "guest physical address"] {
        assert!(svg.contains(label), "the picture says {label}");
    }
}

#[test]
fn other_extensions_exit_2_before_running() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t.txt", "t", "t.svg.gz"] {
        let path = dir.path().join(name);
        let out = run_traced(&path);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(".svg") && err.contains(".json"), "{err}");
        assert!(!err.contains("backend"), "refused before running: {err}");
        assert!(!path.exists());
    }
}

#[test]
fn unwritable_trace_exits_2() {
    let out = run_traced(Path::new("/nonexistent-dir/t.svg"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent-dir/t.svg"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_writes_one_picture_per_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("pictures");
    let out = privmem(&[
        "demo",
        "--backend",
        "model",
        "--trace",
        traces.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut names: Vec<String> = std::fs::read_dir(&traces)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "conversions-discard.svg",
            "deny.svg",
            "fault-loop.svg",
            "implicit-convert.svg",
            "poison.svg",
            "unresolvable.svg"
        ]
    );
    let poison = std::fs::read_to_string(traces.join("poison.svg")).unwrap();
    assert!(
        poison.contains("hwpoison at 0x300000"),
        "the failure is labelled"
    );
}
