//! `privmem conformance --findings`: every finding with both kernels'
//! measured results and its write-up, and the pinned case's result per
//! backend run, in human and JSON form.

mod common;

use std::path::Path;

use common::privmem;
use privmem_conformance::findings::FINDINGS;

fn json(profile: &str) -> serde_json::Value {
    let (code, out, err) = privmem(&[
        "conformance",
        "--findings",
        "--backend",
        "model",
        "--profile",
        profile,
        "--json",
    ]);
    assert_eq!(code, 0, "stderr: {err}\nstdout: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn json_lists_every_finding_with_both_kernels_and_the_pinned_case() {
    let v = json("6.12");
    let findings = v["findings"].as_array().expect("findings array");
    assert_eq!(findings.len(), FINDINGS.len());
    assert!(findings.len() >= 4, "{v}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (f, want) in findings.iter().zip(FINDINGS) {
        assert_eq!(f["id"], want.id);
        assert_eq!(f["case"], want.case);
        let doc = f["doc"].as_str().unwrap();
        assert!(root.join(doc).is_file(), "{doc} is missing");
        let kernels: Vec<_> = f["measured"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert!(!m["verdict"].as_str().unwrap().is_empty(), "{m}");
                assert!(!m["result"].as_str().unwrap().is_empty(), "{m}");
                m["kernel"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(kernels, ["6.12.118", "7.3.4"], "{f}");
        let pinned = f["pinned"].as_array().unwrap();
        assert_eq!(pinned.len(), 1, "one backend ran: {f}");
        assert_eq!(pinned[0]["backend"], "model");
        assert_eq!(pinned[0]["kernel"], "6.12");
        let status = pinned[0]["status"].as_str().unwrap();
        // K3 waits for the backend trait's pre-fault call; the others pass.
        assert!(
            status == "pass" || (status == "skip" && want.case == "K3"),
            "{f}"
        );
    }
}

#[test]
fn human_output_names_each_finding_kernel_and_write_up() {
    let (code, out, err) = privmem(&[
        "conformance",
        "--findings",
        "--backend",
        "model",
        "--profile",
        "6.12",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    for f in FINDINGS {
        assert!(out.contains(&format!("{}  {}: ", f.case, f.id)), "{out}");
        assert!(out.contains(f.doc), "{out}");
        for m in f.measured {
            assert!(
                out.contains(&format!("{}: {}", m.verdict, m.result)),
                "{out}"
            );
        }
        assert!(
            out.contains(&format!("pinned case {} on model (kernel 6.12): ", f.case)),
            "{out}"
        );
    }
}

#[test]
fn findings_excludes_the_differential_and_only() {
    for extra in [["--differential", ""], ["--only", "K1"]] {
        let mut args = vec!["conformance", "--findings"];
        args.extend(extra.iter().filter(|a| !a.is_empty()));
        let (code, _, err) = privmem(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{err}");
    }
}
