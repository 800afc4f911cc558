//! `privmem conformance`: the kernel-selftest checklist (A1–A20, B1–B6,
//! C1–C5, D1–D2, P1, V1, H1–H2, K1–K4, F26–F31) on every available backend, and with
//! `--differential` the model-vs-KVM differential test; `--findings` lists
//! the kernel findings and runs their pinned cases (K1–K4).
//!
//! The model runs the newest upstream profile verified against a real
//! kernel unless `--profile` says otherwise ([`profile`]); the report is a
//! summary line per backend, then what did not pass, grouped ([`report`]).

mod findings;
mod profile;
mod report;

use clap::ValueEnum;
use privmem_conformance::differential::{self, DiffConfig, DiffReport};
use privmem_conformance::differential::{default_floor, Coverage};
use privmem_conformance::{host_model, kernel_of, run_suite, CaseResult};
use privmem_core::Hypervisor;
use privmem_model::{KernelProfile, ModelHypervisor};
use profile::{ModelProfile, ProfileDefault};
use report::BackendRun;
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
    /// What the model behaves as: 7.3 or 6.12 (upstream Linux), or host
    /// (this host's KVM: the running kernel's profile with the host's
    /// capabilities and quirks; `auto` is an alias). Default: 7.3, the
    /// newest profile verified against a real kernel; for --differential,
    /// host.
    #[arg(long, value_name = "7.3|6.12|host")]
    profile: Option<String>,
    /// Print every case as it finishes, and the model's settings.
    #[arg(long, short)]
    verbose: bool,
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
    /// Differential: RNG seed, decimal or 0x-prefixed hex as the report
    /// prints it (default: a fixed seed, so runs repeat).
    #[arg(long, value_parser = parse_seed)]
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

/// A seed in decimal or, as the differential's report prints it, in
/// 0x-prefixed hex.
fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("`{s}` is not a seed (decimal, or hex with 0x): {e}"))
}

/// True when `REQUIRE_KVM=1`: a missing /dev/kvm is an error, not a skip.
fn kvm_required() -> bool {
    std::env::var("REQUIRE_KVM").as_deref() == Ok("1")
}

/// Runs the command; the process exit code.
pub fn main(args: &ConformanceArgs) -> i32 {
    let default = if args.differential {
        ProfileDefault::Host
    } else {
        ProfileDefault::NewestVerified
    };
    let profile = match ModelProfile::parse(args.profile.as_deref(), default) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("privmem: {e}");
            return 2;
        }
    };
    if args.differential {
        return differential_main(args, profile.kernel());
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
    let verbose = args.verbose && !args.json;
    let per_backend = privmem_conformance::case_list()
        .iter()
        .filter(|c| filter(c.id))
        .count();
    let backends = usize::from(model) + usize::from(kvm.is_some());
    let total = u64::try_from(per_backend * backends).unwrap_or(u64::MAX);
    let bar = crate::progress::bar(total, "conformance", "cases");
    let print = |r: &CaseResult| {
        bar.inc(1);
        if verbose {
            bar.suspend(|| println!("{}", report::case_line(r)));
        }
    };
    let mut runs = Vec::new();
    if model {
        let hv = profile.build();
        if verbose {
            bar.suspend(|| eprintln!("model: {}, {}", profile.describe(), build_line(&hv)));
        }
        runs.push(BackendRun {
            backend: hv.name(),
            context: profile.describe(),
            results: run_suite(&hv, &filter, print),
        });
    }
    if let Some(kvm) = &kvm {
        let context = format!("/dev/kvm, kernel {}", kvm.kernel_release());
        if verbose {
            bar.suspend(|| {
                eprintln!(
                    "kvm: {context} (expectations of {}), hypercall transport {}",
                    kernel_of(kvm).name(),
                    kvm.transport()
                );
            });
        }
        runs.push(BackendRun {
            backend: kvm.name(),
            context,
            results: run_suite(kvm, &filter, print),
        });
    }
    bar.finish_and_clear();
    let failed = runs
        .iter()
        .flat_map(|r| &r.results)
        .any(|r| r.outcome.status() == "fail");
    if args.json {
        println!("{}", to_json(&runs, model.then_some(profile)));
    } else if verbose {
        for line in report::summary(&runs) {
            println!("{line}");
        }
    } else {
        for line in report::human(&runs) {
            println!("{line}");
        }
        println!();
        println!("{}", hint(model.then_some(profile), kvm.is_some()));
    }
    i32::from(failed)
}

/// The closing line: what the model ran as, and how to see more.
fn hint(profile: Option<ModelProfile>, kvm: bool) -> String {
    let model = match profile {
        Some(ModelProfile::Upstream(p)) if kvm => format!(
            "The model ran upstream Linux {}; `--profile host` models this host's KVM instead. ",
            p.name()
        ),
        Some(ModelProfile::Host(_)) => {
            "The model ran as this host's KVM; without `--profile` it runs the newest upstream \
             profile. "
                .to_string()
        }
        _ => String::new(),
    };
    format!("{model}`--verbose` lists every case, `--json` gives them to scripts.")
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

/// Every case's result, and the model's profile (`null` when the model did
/// not run).
fn to_json(runs: &[BackendRun], profile: Option<ModelProfile>) -> serde_json::Value {
    let cases: Vec<_> = runs
        .iter()
        .flat_map(|run| &run.results)
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
    json!({
        "profile": profile.map(ModelProfile::name),
        "profile_kernel": profile.map(|p| p.kernel().name()),
        "cases": cases,
    })
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
    let bar = crate::progress::bar(u64::from(cfg.cases), "differential", "sequences");
    let report = differential::run_with_progress(&model, &kvm, &cfg, &|p| {
        if p.shrinking {
            bar.set_message(format!(
                "sequences; a difference: shrinking it ({} runs)",
                p.sequences
            ));
        } else {
            bar.set_position(p.sequences.min(p.total));
        }
    });
    bar.finish_and_clear();
    let report = match report {
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

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn a_seed_is_decimal_or_the_reports_hex() {
        assert_eq!(parse_seed("7"), Ok(7));
        assert_eq!(parse_seed("0x5eedc0de00000001"), Ok(0x5eed_c0de_0000_0001));
        assert_eq!(parse_seed("0X1f"), Ok(31));
        assert!(parse_seed("0x5eedg").unwrap_err().contains("not a seed"));
        assert!(parse_seed("").is_err());
        assert!(parse_seed("-1").is_err());
    }
}
