//! `privmem run FILE`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use privmem_core::Hypervisor;
use privmem_runner::report::Report;
use privmem_runner::runtime::{run_workload, RunOptions};
use privmem_runner::workload::{self, Workload};

use crate::backends::{choose, model_profile, Chosen};
use crate::picture;
use crate::BackendArg;

/// Arguments of `privmem run`.
pub struct RunArgs {
    pub file: PathBuf,
    pub backend: BackendArg,
    pub json: bool,
    pub timeout: Option<f64>,
    pub profile: String,
}

/// Runs a parsed workload on the chosen backend. `Err` is an exit-2 message.
pub fn execute(
    chosen: Chosen,
    reason: String,
    w: &Workload,
    opts: RunOptions,
) -> Result<Report, String> {
    let report = match chosen {
        Chosen::Kvm(hv) => run_on(hv, w, opts),
        Chosen::Model(hv) => run_on(hv, w, opts),
    }?;
    Ok(Report {
        backend_reason: reason,
        ..report
    })
}

fn run_on<H: Hypervisor>(hv: Arc<H>, w: &Workload, opts: RunOptions) -> Result<Report, String> {
    let name = hv.name();
    run_workload(hv, w, opts)
        .map_err(|e| format!("the {name} backend can't run this workload: {}", chain(&e)))
}

/// An error and its sources, joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn timeout(t: Option<f64>) -> Result<Option<Duration>, String> {
    match t {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(format!(
            "--timeout {s}: must be a positive number of seconds"
        )),
    }
}

pub fn main(a: &RunArgs) -> i32 {
    match prepare_and_run(a) {
        Ok(report) => {
            print_report(&report, a.json);
            report.exit_status()
        }
        Err(msg) => {
            eprintln!("privmem: {msg}");
            2
        }
    }
}

fn prepare_and_run(a: &RunArgs) -> Result<Report, String> {
    let w = workload::load(&a.file).map_err(|e| e.to_string())?;
    let opts = RunOptions {
        timeout: timeout(a.timeout)?,
    };
    let profile = model_profile(&a.profile)?;
    let (chosen, reason) = choose(a.backend, &w, profile)?;
    let backend = match chosen {
        Chosen::Kvm(_) => "kvm",
        Chosen::Model(_) => "model",
    };
    eprintln!("privmem: backend {backend}: {reason}");
    execute(chosen, reason, &w, opts)
}

/// The serde (snake_case) name of a unit enum value.
pub fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn print_report(r: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("privmem: cannot encode report: {e}"),
        }
        return;
    }
    println!(
        "{} on {} ({}; map via {}): {} in {:.1} ms",
        r.vm_type,
        r.backend,
        r.backend_reason,
        r.hypercall_transport,
        if r.ok { "ok" } else { "not ok" },
        r.elapsed_ms
    );
    for v in &r.vcpus {
        let e = &v.exits;
        println!(
            "  vcpu {}: {}; exits: {} memory_fault, {} hypercall, {} io, {} mmio; checks {}/{} passed; syncs {:?}",
            v.index,
            snake(&v.state),
            e.memory_fault,
            e.hypercall,
            e.io,
            e.mmio,
            v.checks.passed,
            v.checks.passed + v.checks.failed,
            v.syncs
        );
        if let Some(err) = &v.error {
            println!("    {}: {}", snake(&err.kind), err.message);
        }
    }
    let c = &r.conversions;
    println!(
        "  conversions: {} explicit, {} implicit; {} pages to private, {} to shared; discarded {} guest_memfd + {} shared pages",
        c.explicit, c.implicit, c.to_private_pages, c.to_shared_pages, r.discarded_pages.guest_memfd, r.discarded_pages.shared
    );
    println!("{}", picture::draw(&r.attributes, 64));
}
