//! `privmem demo`: the built-in showcase. Each scenario is one of the
//! examples, run on the best backend for its VM type, with its designed
//! outcome checked and a readable summary printed.

use std::path::Path;
use std::sync::Arc;

use privmem_runner::handle::ErrorKind;
use privmem_runner::report::Report;
use privmem_runner::runtime::RunOptions;
use privmem_runner::workload;

use crate::backends::{choose, model_profile};
use crate::picture::human;
use crate::run::{execute, print_report};
use crate::trace::{Recorder, Trace};
use crate::BackendArg;

/// One showcase scenario.
struct Scenario {
    title: &'static str,
    file: &'static str,
    text: &'static str,
    /// The designed outcome: each vCPU's error kind (None = halted cleanly).
    expect: &'static [Option<ErrorKind>],
    explain: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        title: "explicit conversions (KVM_HC_MAP_GPA_RANGE), 2 vCPUs, discard on",
        file: "examples/conversions-discard.toml",
        text: include_str!("../../../examples/conversions-discard.toml"),
        expect: &[None, None],
        explain: "each vCPU converts the five selftest ranges private and back; with discard the \
                  shared view reads zeros where private data was, never the private bytes",
    },
    Scenario {
        title: "implicit conversions (KVM_EXIT_MEMORY_FAULT), coco guest",
        file: "examples/implicit-convert.toml",
        text: include_str!("../../../examples/implicit-convert.toml"),
        expect: &[None],
        explain: "the guest touches pages in the wrong state; each fault converts one page and re-enters",
    },
    Scenario {
        title: "policy deny",
        file: "examples/deny.toml",
        text: include_str!("../../../examples/deny.toml"),
        expect: &[Some(ErrorKind::FaultDenied)],
        explain: "with implicit = \"deny\" the same fault stops the vCPU instead of converting",
    },
    Scenario {
        title: "unresolvable fault: private access without guest_memfd",
        file: "examples/unresolvable.toml",
        text: include_str!("../../../examples/unresolvable.toml"),
        expect: &[Some(ErrorKind::Unresolvable)],
        explain: "no conversion can help, so the vCPU stops on the first fault instead of looping",
    },
    Scenario {
        title: "a hardware-poisoned page (EHWPOISON)",
        file: "examples/poison.toml",
        text: include_str!("../../../examples/poison.toml"),
        expect: &[Some(ErrorKind::Hwpoison), None],
        explain: "EHWPOISON is never converted: the vCPU stops and the GPA is reported; the other vCPU halts",
    },
    Scenario {
        title: "the repeat guard catches a fault loop",
        file: "examples/fault-loop.toml",
        text: include_str!("../../../examples/fault-loop.toml"),
        expect: &[Some(ErrorKind::FaultLoop)],
        explain: "the same fault keeps coming back after conversion; after max_repeats in a row \
                  the vCPU stops with a diagnosis instead of spinning forever",
    },
];

fn kinds(r: &Report) -> Vec<Option<ErrorKind>> {
    r.vcpus
        .iter()
        .map(|v| v.error.as_ref().map(|e| e.kind))
        .collect()
}

/// Runs one scenario; with `trace_dir`, also writes its picture there
/// and says where.
fn run_scenario(
    s: &Scenario,
    backend: BackendArg,
    trace_dir: Option<&Path>,
) -> Result<Report, String> {
    let w = workload::parse(s.file, s.text).map_err(|e| e.to_string())?;
    let profile = model_profile("auto")?;
    let (chosen, reason) = choose(backend, &w, profile)?;
    let recorder = trace_dir.map(|_| Arc::new(Recorder::new()));
    let opts = RunOptions {
        timeout: Some(std::time::Duration::from_secs(60)),
    };
    let report = execute(chosen, reason, &w, opts, recorder.as_ref())?;
    if let (Some(dir), Some(rec)) = (trace_dir, recorder) {
        let stem = Path::new(s.file)
            .file_stem()
            .map_or_else(|| "scenario".into(), |n| n.to_string_lossy());
        let path = dir.join(format!("{stem}.svg"));
        Trace::assemble(s.file, &w, &report, &rec).write(&path)?;
        println!("  trace: {}", path.display());
    }
    Ok(report)
}

fn summarize(r: &Report) {
    let faults: u64 = r.vcpus.iter().map(|v| v.exits.memory_fault).sum();
    let hcalls: u64 = r.vcpus.iter().map(|v| v.exits.hypercall).sum();
    let d = &r.discarded_pages;
    println!(
        "  {} memory-fault exits, {} hypercall exits; discard freed {} of guest_memfd and {} of shared memory",
        faults,
        hcalls,
        human(d.guest_memfd * 4096),
        human(d.shared * 4096)
    );
}

pub fn main(backend: BackendArg, trace_dir: Option<&Path>) -> i32 {
    if let Some(dir) = trace_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("privmem: --trace {}: cannot create: {e}", dir.display());
            return 2;
        }
    }
    let mut failures = 0;
    for (i, s) in SCENARIOS.iter().enumerate() {
        println!("\n[{}/{}] {} ({})", i + 1, SCENARIOS.len(), s.title, s.file);
        println!("  {}", s.explain);
        match run_scenario(s, backend, trace_dir) {
            Ok(r) => {
                print_report(&r, false);
                summarize(&r);
                let as_designed = kinds(&r) == s.expect;
                println!(
                    "  => {}",
                    if as_designed {
                        "as designed"
                    } else {
                        "NOT as designed"
                    }
                );
                failures += usize::from(!as_designed);
            }
            Err(e) => {
                println!("  => could not run: {e}");
                failures += 1;
            }
        }
    }
    println!(
        "\ndemo: {} of {} scenarios went as designed",
        SCENARIOS.len() - failures,
        SCENARIOS.len()
    );
    i32::from(failures != 0)
}
