//! `privmem conformance --findings`: the kernel behaviours privmem found
//! (`docs/findings/`), each with the result the rig measured on every
//! kernel, and the result of its pinned case (K1–K4) on each backend run.

use privmem_conformance::findings::{kernel_release, Finding, FINDINGS};
use privmem_conformance::{run_suite, CaseResult};
use privmem_core::Hypervisor;
use privmem_kvm::KvmHypervisor;
use privmem_model::ModelHypervisor;
use serde_json::json;

use super::{kvm_required, ConformanceArgs, ModelProfile, SuiteBackend};

/// A pinned case's result on one backend, with the kernel it behaved as.
struct Pinned {
    kernel: String,
    result: CaseResult,
}

/// Runs `--findings`; the process exit code (1 if a pinned case failed).
pub(super) fn main(args: &ConformanceArgs, profile: ModelProfile) -> i32 {
    let (model, kvm) = match backends(args, profile) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let cases: Vec<&str> = FINDINGS.iter().map(|f| f.case).collect();
    let filter = |id: &str| cases.contains(&id);
    let mut pinned = Vec::new();
    if let Some(hv) = &model {
        pinned.extend(run_pinned(hv, &filter));
    }
    if let Some(hv) = &kvm {
        pinned.extend(run_pinned(hv, &filter));
    }
    if args.json {
        println!("{}", to_json(&pinned));
    } else {
        print_human(&pinned);
    }
    i32::from(pinned.iter().any(|p| p.result.outcome.status() == "fail"))
}

/// The backends `--backend` selects: the model at `profile` (the host's
/// model for `--profile host`), and KVM where it opens. `Err` is an exit
/// code, after a message.
fn backends(
    args: &ConformanceArgs,
    profile: ModelProfile,
) -> Result<(Option<ModelHypervisor>, Option<KvmHypervisor>), i32> {
    let (model, kvm, must_kvm) = match args.backend {
        SuiteBackend::Auto => (true, true, kvm_required()),
        SuiteBackend::Kvm => (false, true, true),
        SuiteBackend::Model => (true, false, false),
        SuiteBackend::All => (true, true, true),
    };
    let model = model.then(|| profile.build());
    let kvm = if kvm {
        match KvmHypervisor::open(crate::backends::kvm_options()) {
            Ok(h) => Some(h),
            Err(e) if must_kvm => {
                eprintln!("privmem: /dev/kvm unavailable: {e}");
                return Err(2);
            }
            Err(e) => {
                eprintln!("SKIP: kvm backend: /dev/kvm unavailable ({e})");
                None
            }
        }
    } else {
        None
    };
    Ok((model, kvm))
}

fn run_pinned<H: Hypervisor>(hv: &H, filter: &dyn Fn(&str) -> bool) -> Vec<Pinned> {
    let kernel = kernel_release(hv);
    run_suite(hv, filter, |_| {})
        .into_iter()
        .map(|result| Pinned {
            kernel: kernel.clone(),
            result,
        })
        .collect()
}

fn pinned_for<'p>(pinned: &'p [Pinned], f: &Finding) -> impl Iterator<Item = &'p Pinned> {
    let case = f.case;
    pinned.iter().filter(move |p| p.result.case.id == case)
}

fn print_human(pinned: &[Pinned]) {
    println!(
        "Kernel behaviours privmem found, as the rig measured them (reproducers: rig/findings, \
         `rig/run --kernel K -- findings`)."
    );
    for f in FINDINGS {
        println!();
        println!("{}  {}: {}", f.case, f.id, f.title);
        for m in f.measured {
            println!("    {:<9} {}: {}", m.kernel, m.verdict, m.result);
        }
        for p in pinned_for(pinned, f) {
            let mut line = format!(
                "    pinned case {} on {} (kernel {}): {}",
                f.case,
                p.result.backend,
                p.kernel,
                p.result.outcome.status()
            );
            if let Some(why) = p.result.outcome.reason() {
                line.push_str(": ");
                line.push_str(why);
            }
            println!("{line}");
        }
        println!("    write-up: {}; reproducer: {}", f.doc, f.reproducer);
    }
}

fn to_json(pinned: &[Pinned]) -> serde_json::Value {
    let findings: Vec<_> = FINDINGS
        .iter()
        .map(|f| {
            let measured: Vec<_> = f
                .measured
                .iter()
                .map(|m| json!({ "kernel": m.kernel, "verdict": m.verdict, "result": m.result }))
                .collect();
            let runs: Vec<_> = pinned_for(pinned, f)
                .map(|p| {
                    json!({
                        "backend": p.result.backend,
                        "kernel": p.kernel,
                        "status": p.result.outcome.status(),
                        "reason": p.result.outcome.reason(),
                    })
                })
                .collect();
            json!({
                "id": f.id,
                "case": f.case,
                "title": f.title,
                "doc": f.doc,
                "reproducer": f.reproducer,
                "measured": measured,
                "pinned": runs,
            })
        })
        .collect();
    json!({ "findings": findings })
}
