//! `privmem conformance`: the kernel-selftest checklist (A1–A20, B1–B6,
//! C1–C5, D1–D2, P1, V1, H1–H2, K1–K4, F26–F31) on every available backend, and with
//! `--differential` the model-vs-KVM differential test; `--findings` lists
//! the kernel findings and runs their pinned cases (K1–K4).

mod findings;

use clap::ValueEnum;
use privmem_conformance::differential::{self, DiffConfig, DiffReport};
use privmem_conformance::differential::{default_floor, Coverage};
use privmem_conformance::{host_model, kernel_of, run_suite, CaseResult};
use privmem_core::Hypervisor;
use privmem_model::{KernelProfile, ModelHypervisor};
use serde_json::json;

/// Which backends the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SuiteBackend {
    /// The model, and KVM if /dev/kvm opens.
    Auto,
    /// Only /dev/kvm (an error if it cannot be opened).
    Kvm,
    /// Only the model.
    Model,
    /// The model and KVM (an error if /dev/kvm cannot be opened).
    All,
}

/// `privmem conformance` arguments.
#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {
    /// Backends to run the suite on.
    #[arg(long, value_enum, default_value = "auto")]
    backend: SuiteBackend,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Kernel profile for the model: 7.3, 6.12, or auto (the running kernel's).
    #[arg(long, default_value = "auto")]
    profile: String,
    /// Run only these case ids (comma-separated, e.g. C1,D2).
    #[arg(long)]
    only: Option<String>,
    /// Run the model-vs-KVM differential test instead of the suite.
    #[arg(long)]
    differential: bool,
    /// List the kernel findings (docs/findings/) with each rig kernel's
    /// measured result, and run their pinned cases on the chosen backends.
    #[arg(long, conflicts_with_all = ["differential", "only"])]
    findings: bool,
    /// Differential: number of generated sequences.
    #[arg(long, default_value_t = 64)]
    cases: u32,
    /// Differential: RNG seed (default: a fixed seed, so runs repeat).
    #[arg(long)]
    seed: Option<u64>,
    /// Differential: longest sequence, in steps.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Differential: the least share of steps, in percent, that must be
    /// compared with a kernel result that varies (not n/a, not one errno
    /// every time, not privmem's emulation). Default: 70 where the host has
    /// private memory (sw-protected VMs and guest_memfd, the rig), lower
    /// where it cannot compare as much (see `differential::default_floor`).
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    min_coverage: Option<f64>,
}

/// A percentage 0-100 as a share 0-1.
fn percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("`{s}` is not a percentage: {e}"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v / 100.0)
    } else {
        Err(format!("{v} is not between 0 and 100"))
    }
}

/// True when `REQUIRE_KVM=1`: a missing /dev/kvm is an error, not a skip.
fn kvm_required() -> bool {
    std::env::var("REQUIRE_KVM").as_deref() == Ok("1")
}

/// Runs the command; the process exit code.
pub fn main(args: &ConformanceArgs) -> i32 {
    let profile = match crate::backends::model_profile(&args.profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("privmem: {e}");
            return 2;
        }
    };
    if args.differential {
        return differential_main(args, profile);
    }
    if args.findings {
        return findings::main(args, profile);
    }
    let (model, kvm, must_kvm) = match args.backend {
        SuiteBackend::Auto => (true, true, kvm_required()),
        SuiteBackend::Kvm => (false, true, true),
        SuiteBackend::Model => (true, false, false),
        SuiteBackend::All => (true, true, true),
    };
    let kvm = if kvm {
        match crate::backends::open_kvm_raw() {
            Ok(h) => Some(h),
            Err(e) if must_kvm => {
                eprintln!("privmem: /dev/kvm unavailable: {e}");
                return 2;
            }
            Err(e) => {
                eprintln!("SKIP: kvm backend: /dev/kvm unavailable ({e})");
                None
            }
        }
    } else {
        None
    };
    let only: Option<Vec<String>> = args.only.as_ref().map(|o| {
        o.split(',')
            .map(|s| s.trim().to_ascii_uppercase())
            .collect()
    });
    let filter = |id: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == id));
    let print = |r: &CaseResult| {
        if !args.json {
            println!("{}", line(r));
        }
    };
    let mut results = Vec::new();
    if model {
        // `--profile auto` models this host: its MMU width and its quirks
        // (PVM); an explicit profile models upstream.
        let hv = if args.profile == "auto" {
            host_model(profile, crate::backends::kvm_options().quirks)
        } else {
            ModelHypervisor::new(profile)
        };
        if !args.json {
            eprintln!(
                "model: kernel profile {}, {}",
                profile.name(),
                build_line(&hv)
            );
        }
        results.extend(run_suite(&hv, &filter, print));
    }
    if let Some(kvm) = &kvm {
        if !args.json {
            eprintln!(
                "kvm: kernel {} (expectations of {}), hypercall transport {}",
                kvm.kernel_release(),
                kernel_of(kvm).name(),
                kvm.transport()
            );
        }
        results.extend(run_suite(kvm, &filter, print));
    }
    if args.json {
        println!("{}", to_json(&results));
    } else {
        for line in summary(&results) {
            println!("{line}");
        }
    }
    i32::from(results.iter().any(|r| r.outcome.status() == "fail"))
}

/// Per backend: "kvm: 2 pass, 0 fail, 26 skip, 1 partial, 2 emulated".
fn summary(results: &[CaseResult]) -> Vec<String> {
    let mut backends: Vec<&str> = results.iter().map(|r| r.backend).collect();
    backends.dedup();
    backends
        .into_iter()
        .map(|b| {
            let counts: Vec<String> = ["pass", "fail", "skip", "partial", "emulated"]
                .into_iter()
                .map(|st| {
                    let n = results
                        .iter()
                        .filter(|r| r.backend == b && r.outcome.status() == st)
                        .count();
                    format!("{n} {st}")
                })
                .collect();
            format!("{b}: {}", counts.join(", "))
        })
        .collect()
}

/// "pvm, gmem_hva", or "none".
fn quirk_names(q: privmem_core::Quirks) -> String {
    let names: Vec<&str> = [("pvm", q.pvm), ("gmem_hva", q.gmem_hva)]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// "A1   model  pass  guest_memfd flags", with the reason after a colon.
fn line(r: &CaseResult) -> String {
    let mut s = format!(
        "{:<4} {:<6} {:<5} {}",
        r.case.id,
        r.backend,
        r.outcome.status(),
        r.case.name
    );
    if let Some(why) = r.outcome.reason() {
        s.push_str(": ");
        s.push_str(why);
    }
    s
}

fn to_json(results: &[CaseResult]) -> serde_json::Value {
    let cases: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "id": r.case.id,
                "name": r.case.name,
                "backend": r.backend,
                "status": r.outcome.status(),
                "reason": r.outcome.reason(),
            })
        })
        .collect();
    json!({ "cases": cases })
}

fn differential_main(args: &ConformanceArgs, profile: KernelProfile) -> i32 {
    let kvm = match crate::backends::open_kvm_raw() {
        Ok(h) => h,
        Err(e) if kvm_required() => {
            eprintln!("privmem: differential: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1");
            return 2;
        }
        Err(e) => {
            eprintln!("SKIP: differential: /dev/kvm unavailable ({e})");
            return 0;
        }
    };
    let cfg = DiffConfig {
        cases: args.cases,
        seed: args.seed.unwrap_or(differential::DEFAULT_SEED),
        max_steps: args.steps,
    };
    // The model as this host's KVM should look (MMU width, PVM quirks).
    let model = host_model(profile, kvm.quirks());
    let report = match differential::run(&model, &kvm, &cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("privmem: differential: {e}");
            return 1;
        }
    };
    let floor = args
        .min_coverage
        .unwrap_or_else(|| default_floor(&report.vm_types, model.guest_memfd()));
    let shortfall = report.coverage.check_floor(floor).err();
    if args.json {
        println!(
            "{}",
            diff_json(&report, profile, &model, floor, shortfall.as_deref())
        );
    } else {
        print_diff(&report, profile, &model);
        println!("{}", report.coverage.table());
        match &shortfall {
            None => println!("coverage floor {:.1}%: met", 100.0 * floor),
            Some(why) => println!("COVERAGE FLOOR NOT MET: {why}"),
        }
    }
    i32::from(!report.agreed() || shortfall.is_some())
}

/// The coverage as JSON: per operation kind, and the totals against the floor.
fn coverage_json(c: &Coverage, floor: f64, shortfall: Option<&str>) -> serde_json::Value {
    let kinds: serde_json::Map<String, serde_json::Value> = c
        .kinds
        .iter()
        .map(|(k, v)| {
            let constant = v
                .constant_errno()
                .map(|e| json!({ "errno": e.to_string(), "steps": v.constant() }));
            (
                (*k).to_string(),
                json!({
                    "steps": v.steps,
                    "compared": v.compared(),
                    "n/a": v.not_applicable,
                    "constant_errno": constant,
                    "emulated": v.emulated,
                }),
            )
        })
        .collect();
    let t = c.totals();
    json!({
        "kinds": kinds,
        "steps": t.steps,
        "compared": t.compared,
        "n/a": t.not_applicable,
        "constant_errno": t.constant,
        "emulated": t.emulated,
        "compared_share": t.compared_share(),
        "floor": floor,
        "floor_met": shortfall.is_none(),
        "shortfall": shortfall,
    })
}

fn diff_json(
    r: &DiffReport,
    profile: KernelProfile,
    model: &ModelHypervisor,
    floor: f64,
    shortfall: Option<&str>,
) -> serde_json::Value {
    let types: Vec<_> = r.vm_types.iter().map(|t| t.name()).collect();
    json!({ "differential": {
        "backends": [r.backends.0, r.backends.1],
        "profile": profile.name(),
        "max_gpa_bits": model.max_gpa_bits(),
        "smm": model.smm(),
        "guest_memfd": model.guest_memfd(),
        "memory_attributes": model.build().memory_attributes,
        "tdp": model.build().tdp,
        "quirks": { "pvm": model.quirks().pvm, "gmem_hva": model.quirks().gmem_hva },
        "vm_types": types,
        "sequences": r.sequences,
        "steps": r.steps,
        "seed": r.seed,
        "agreed": r.agreed(),
        "difference": r.difference,
        "coverage": coverage_json(&r.coverage, floor, shortfall),
        "results": r.results,
    }})
}

/// The model's host-dependent settings, for the report headers.
fn build_line(hv: &ModelHypervisor) -> String {
    format!(
        "max_gpa_bits {}, smm {}, guest_memfd {}, memory_attributes {}, tdp {}, quirks {}",
        hv.max_gpa_bits(),
        on_off(hv.smm()),
        on_off(hv.guest_memfd()),
        on_off(hv.build().memory_attributes),
        on_off(hv.build().tdp),
        quirk_names(hv.quirks())
    )
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn print_diff(r: &DiffReport, profile: KernelProfile, model: &ModelHypervisor) {
    let types: Vec<_> = r.vm_types.iter().map(|t| t.name()).collect();
    println!(
        "differential: {} (profile {}, {}) vs {}: {} sequences, {} steps in all, VM types {}, seed {:#x}",
        r.backends.0,
        profile.name(),
        build_line(model),
        r.backends.1,
        r.sequences,
        r.steps,
        types.join(", "),
        r.seed
    );
    match &r.difference {
        None => println!("no difference"),
        Some(d) => println!("DIFFERENCE (minimal sequence):\n{d}"),
    }
}
