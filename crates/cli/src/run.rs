//! `privmem run FILE`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use privmem_core::trace::TraceSink;
use privmem_core::Hypervisor;
use privmem_runner::report::Report;
use privmem_runner::runtime::{run_workload, Machine, RunOptions};
use privmem_runner::workload::{self, Workload};

use crate::backends::{choose, model_profile, Chosen};
use crate::picture;
use crate::trace::{Recorder, Trace, TraceFormat};
use crate::BackendArg;

/// Arguments of `privmem run`.
pub struct RunArgs {
    pub file: PathBuf,
    pub backend: BackendArg,
    pub json: bool,
    pub timeout: Option<f64>,
    pub profile: String,
    /// Write a trace here (`.svg` or `.json`).
    pub trace: Option<PathBuf>,
}

/// Runs a parsed workload on the chosen backend, reporting to `recorder`
/// if given. `Err` is an exit-2 message.
pub fn execute(
    chosen: Chosen,
    reason: String,
    w: &Workload,
    opts: RunOptions,
    recorder: Option<&Arc<Recorder>>,
) -> Result<Report, String> {
    let report = match chosen {
        Chosen::Kvm(hv) => run_on(hv, w, opts, recorder),
        Chosen::Model(hv) => run_on(hv, w, opts, recorder),
    }?;
    Ok(Report {
        backend_reason: reason,
        ..report
    })
}

fn run_on<H: Hypervisor>(
    hv: Arc<H>,
    w: &Workload,
    opts: RunOptions,
    recorder: Option<&Arc<Recorder>>,
) -> Result<Report, String> {
    let name = hv.name();
    let cant = |e: &dyn std::error::Error| {
        format!("the {name} backend can't run this workload: {}", chain(e))
    };
    let Some(rec) = recorder else {
        return run_workload(hv, w, opts).map_err(|e| cant(&e));
    };
    // run_workload, with the recorder registered between setup and the run.
    let machine = Machine::new(hv, w).map_err(|e| cant(&e))?;
    let sink: Arc<dyn TraceSink> = rec.clone();
    if machine.engine.set_trace_sink(sink).is_err() {
        return Err("internal: the engine already has a trace sink".into());
    }
    let engine = machine.engine.clone();
    rec.set_slots(&engine.slots(), w);
    rec.start_clock();
    let start = Instant::now();
    let states = machine.run(opts);
    Ok(Report::build(&engine, w, states, start.elapsed()))
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
        Ok((report, trace)) => {
            print_report(&report, a.json);
            if let (Some(t), Some(path)) = (trace, &a.trace) {
                if let Err(msg) = t.write(path) {
                    eprintln!("privmem: {msg}");
                    return 2;
                }
                eprintln!("privmem: trace written to {}", path.display());
            }
            report.exit_status()
        }
        Err(msg) => {
            eprintln!("privmem: {msg}");
            2
        }
    }
}

fn prepare_and_run(a: &RunArgs) -> Result<(Report, Option<Trace>), String> {
    if let Some(path) = &a.trace {
        TraceFormat::for_path(path)?;
    }
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
    let recorder = a.trace.as_ref().map(|_| Arc::new(Recorder::new()));
    let report = execute(chosen, reason, &w, opts, recorder.as_ref())?;
    let trace = recorder.map(|rec| {
        let title = a.file.display().to_string();
        Trace::assemble(&title, &w, &report, &rec)
    });
    Ok((report, trace))
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
