//! `privmem`: the command line (docs/workload.md).
#![forbid(unsafe_code)]

mod backends;
mod bench;
mod caps;
mod conformance;
mod demo;
mod picture;
mod progress;
mod run;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// KVM guest private memory: guest_memfd, attributes and memory-fault exits.
#[derive(Parser, Debug)]
#[command(name = "privmem", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// KVM when the host supports the workload's VM type, else the model.
    Auto,
    /// The real /dev/kvm.
    Kvm,
    /// The deterministic model of KVM.
    Model,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// What the host's KVM supports, and which VM types each backend can run.
    Caps {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a workload file.
    Run {
        /// The workload (TOML).
        file: PathBuf,
        /// Backend.
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Stop every vCPU after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Kernel profile for the model: 7.3 or 6.12 (the rig's kernels), or auto.
        #[arg(long, default_value = "auto")]
        profile: String,
        /// Write what happened, in order: a picture (FILE.svg) or JSON
        /// lines (FILE.json).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// The kernel-selftest conformance suite on every backend (or, with
    /// --differential, the model-vs-KVM differential test).
    Conformance(conformance::ConformanceArgs),
    /// Benchmarks, each against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// The built-in showcase on the best backend.
    Demo {
        /// Backend (default: the best available for each scenario).
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// Write one picture per scenario into DIR (DIR/<scenario>.svg).
        #[arg(long, value_name = "DIR")]
        trace: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Caps { json } => caps::main(json),
        Cmd::Run {
            file,
            backend,
            json,
            timeout,
            profile,
            trace,
        } => run::main(&run::RunArgs {
            file,
            backend,
            json,
            timeout,
            profile,
            trace,
        }),
        Cmd::Demo { backend, trace } => demo::main(backend, trace.as_deref()),
        Cmd::Conformance(args) => conformance::main(&args),
        Cmd::Bench(args) => bench::main(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
