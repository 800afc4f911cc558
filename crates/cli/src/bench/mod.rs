//! `privmem bench [NAME...] [--json] [--quick]`: every figure is a ratio
//! against a baseline measured in the same run.
//!
//! These machines are shared and noisy, so each benchmark runs its baseline
//! and privmem **alternately** (baseline first in even rounds, privmem first
//! in odd ones), for several rounds, and reports the median of each side, the
//! spread ((max - min) / median) and the ratio. The ratio is the median of the
//! per-round ratios: both sides of a round ran back to back under the same
//! load, so the paired ratio is steadier than a ratio of medians.
//!
//! | bench | module |
//! |---|---|
//! | `exit` | [`exit`] |
//! | `fault` | [`fault`] |
//! | `convert` | [`convert`] |
//! | `attrmap` | [`attrmap`] |
//! | `access` | [`access`] |
//! | `scale` | [`scale`] |
//! | `parallel` | [`parallel`] |
//! | `embed` | [`embed`] |
//! | `kvm/convert`, `kvm/exit`, `kvm/setup`, `kvm/prefault` | [`kvm`] |
//!
//! Exit status: 0 when every benchmark ran (or skipped visibly because the
//! host lacks what it needs: /dev/kvm; a skip is an error under
//! `REQUIRE_KVM=1`), 1 when any benchmark failed, 2 for an unknown name.
//! The JSON lists failures in `errors` and skips in `skipped`.
//!
//! The regression guard: a row where privmem does more than
//! [`GUARD_FACTOR`] times worse than its own same-run baseline (slower,
//! bigger, or that many times fewer per second) is a failure named after
//! the row, whatever its target. Targets are goals a run may miss on a
//! noisy machine; the guard checks only the sign of the comparison, with
//! room for noise, so `bench --quick` in CI catches an engine that broke.
//! A context row ([`Target::Context`], e.g. `kvm/prefault`'s, whose two
//! sides are two settings of privmem) has no target: it is never met nor
//! missed (`met` null, `-` in the table) and the guard only checks that it
//! has a figure (`worse_than_baseline` null). A trip fails the run only
//! if the benchmark, run once more, trips again ([`guard`]).
//!
//! Fault injection for tests of that contract, `PRIVMEM_BENCH_INJECT`:
//! `error:NAME` makes benchmark NAME fail on entry; `no-kvm` makes every
//! benchmark that needs /dev/kvm find none; `regress:ROW` makes row ROW's
//! privmem figure 1000 times worse.

mod access;
mod attrmap;
mod convert;
mod embed;
mod exit;
mod fault;
mod guard;
mod kvm;
mod parallel;
mod row;
mod scale;
mod scaling;
mod util;

use std::time::Instant;

use privmem_kvm::KvmHypervisor;
use serde::Serialize;

pub use row::{median, Row, RowSpec, Samples, Side, Target, GUARD_FACTOR};

/// Counts heap bytes per thread (for the `attrmap` memory figure); plain
/// `System` allocation otherwise.
#[global_allocator]
static ALLOC: privmem_baseline::CountingAlloc = privmem_baseline::CountingAlloc;

/// The benchmarks, in run order.
pub const ALL: [&str; 12] = [
    "exit",
    "fault",
    "convert",
    "attrmap",
    "access",
    "scale",
    "parallel",
    "embed",
    "kvm/convert",
    "kvm/exit",
    "kvm/setup",
    "kvm/prefault",
];

/// `privmem bench` arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Benchmarks to run (default: all): exit, fault, convert, attrmap,
    /// access, scale, parallel, embed, kvm/convert, kvm/exit, kvm/setup,
    /// kvm/prefault (the last five need a sw-protected VM with guest_memfd,
    /// i.e. the rig; elsewhere they skip).
    pub names: Vec<String>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Small sizes and few rounds: all seven in under a minute (CI smoke).
    #[arg(long)]
    pub quick: bool,
    /// Internal (`scale/model-rss`): one model setup of BYTES in this
    /// fresh process; prints its memory growth as JSON.
    #[arg(long, hide = true, value_name = "BYTES")]
    pub rss_probe: Option<u64>,
    /// Internal (`parallel`): a child of the machine-scaling probe over a
    /// slot of BYTES (see `bench::scaling`).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub scaling_probe: Option<u64>,
}

/// Run-wide settings and the progress line.
pub struct Ctx {
    /// `--quick`.
    pub quick: bool,
    progress: Progress,
    /// Parts that could not run on this host, with why.
    skipped: Vec<BenchSkip>,
}

impl Ctx {
    /// `/dev/kvm` for the benchmark part `what`, or `None` after recording
    /// a visible skip naming why; under `REQUIRE_KVM=1` a missing /dev/kvm
    /// is an error instead.
    ///
    /// # Errors
    /// /dev/kvm cannot be opened and `REQUIRE_KVM=1`.
    pub fn kvm_or_skip(&mut self, what: &str) -> anyhow::Result<Option<KvmHypervisor>> {
        let opened = if injected("no-kvm") {
            Err("/dev/kvm hidden by PRIVMEM_BENCH_INJECT=no-kvm".to_string())
        } else {
            KvmHypervisor::open(crate::backends::kvm_options()).map_err(|e| e.to_string())
        };
        match opened {
            Ok(h) => Ok(Some(h)),
            Err(e) if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") => {
                anyhow::bail!("{what} needs /dev/kvm: {e} (and REQUIRE_KVM=1)")
            }
            Err(e) => {
                self.skip(what, format!("/dev/kvm unavailable: {e}"));
                Ok(None)
            }
        }
    }

    /// Records that the benchmark (or part) `what` could not run on this
    /// host, and why: a line on stderr and an entry in `skipped`.
    pub fn skip(&mut self, what: &str, reason: String) {
        eprintln!("bench {what}: SKIPPED: {reason}");
        self.skipped.push(BenchSkip {
            name: what.to_string(),
            reason,
        });
    }

    /// Rounds per benchmark: 7 normally, 5 with `--quick` (its sizes are
    /// small, so rounds are short and noisy; the regression guard reads
    /// the median, which one wild round of five cannot move).
    pub fn rounds(&self) -> usize {
        if self.quick {
            5
        } else {
            7
        }
    }

    /// Shows what is being measured now.
    pub fn status(&mut self, what: &str) {
        self.progress.status(what);
    }

    /// Runs `f(side)` for `rounds` rounds, alternating which side goes
    /// first, after one unmeasured warm-up of each side. `f` returns the
    /// figure for that side and round.
    pub fn alternate(
        &mut self,
        label: &str,
        rounds: usize,
        mut f: impl FnMut(Side) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Samples> {
        let (s, _) = self.alternate_with(label, rounds, |side| Ok((f(side)?, ())))?;
        Ok(s)
    }

    /// [`Ctx::alternate`] where each run also gives figures measured
    /// beside the main one (`T`): returned with their side, in run order,
    /// for the measured rounds only, so they come from the same runs as
    /// the samples and never from the warm-up.
    pub fn alternate_with<T>(
        &mut self,
        label: &str,
        rounds: usize,
        mut f: impl FnMut(Side) -> anyhow::Result<(f64, T)>,
    ) -> anyhow::Result<(Samples, Vec<(Side, T)>)> {
        self.status(&format!("{label}: warm-up"));
        f(Side::Baseline)?;
        f(Side::Privmem)?;
        let mut s = Samples::default();
        let mut beside = Vec::with_capacity(2 * rounds);
        for r in 0..rounds {
            self.status(&format!("{label}: round {}/{rounds}", r + 1));
            let order = if r % 2 == 0 {
                [Side::Baseline, Side::Privmem]
            } else {
                [Side::Privmem, Side::Baseline]
            };
            for side in order {
                let (v, extra) = f(side)?;
                match side {
                    Side::Baseline => s.base.push(v),
                    Side::Privmem => s.privmem.push(v),
                }
                beside.push((side, extra));
            }
        }
        Ok((s, beside))
    }
}

/// The progress indicator on stderr: an indicatif bar (benchmarks done of
/// all, the current one and what it measures now) on a terminal, one line
/// per benchmark otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    index: usize,
    total: usize,
    name: String,
    bench_start: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            bar: crate::progress::bar(u64::try_from(total).unwrap_or(u64::MAX), "bench", ""),
            index: 0,
            total,
            name: String::new(),
            bench_start: Instant::now(),
        }
    }

    fn begin(&mut self, index: usize, name: &str) {
        self.index = index;
        self.name = name.to_string();
        self.bench_start = Instant::now();
        if self.bar.is_hidden() {
            eprintln!("bench [{}/{}] {name} ...", index + 1, self.total);
        }
        self.status("starting");
    }

    fn status(&mut self, what: &str) {
        self.bar.set_message(format!("{} | {what}", self.name));
    }

    fn end(&mut self, outcome: &str) {
        let secs = self.bench_start.elapsed().as_secs_f64();
        self.bar.inc(1);
        self.bar
            .suspend(|| eprintln!("bench {}: {outcome} in {secs:.1} s", self.name));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// One line describing the machine: CPUs, CPU model, kernel, KVM flavour.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    let kvm = if privmem_kvm::caps::pvm_host() {
        ", /dev/kvm: PVM (software virtualization)"
    } else {
        ""
    };
    format!("{cpus} CPUs ({model}), Linux {kernel}{kvm}")
}

#[derive(Serialize)]
struct Doc<'a> {
    machine: String,
    quick: bool,
    benches: &'a [Row],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<BenchError>,
    #[serde(skip_serializing_if = "<[BenchSkip]>::is_empty")]
    skipped: &'a [BenchSkip],
}

#[derive(Serialize)]
struct BenchError {
    name: String,
    error: String,
}

/// A benchmark (or part) that could not run on this host.
#[derive(Serialize)]
struct BenchSkip {
    name: String,
    reason: String,
}

/// True if `PRIVMEM_BENCH_INJECT` asks for `what` (see the module docs).
fn injected(what: &str) -> bool {
    std::env::var("PRIVMEM_BENCH_INJECT").is_ok_and(|v| v.split(',').any(|x| x == what))
}

/// "N/M targets met" over the rows that have a target, and how many are
/// context only.
fn targets_met(rows: &[Row]) -> String {
    let targeted = rows.iter().filter(|r| r.met.is_some()).count();
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    let context = rows.len() - targeted;
    match (targeted, context) {
        (_, 0) => format!("{met}/{targeted} targets met"),
        (0, c) => format!("{c} context (no target)"),
        (t, c) => format!("{met}/{t} targets met, {c} context (no target)"),
    }
}

/// The exit status for a run with these outcomes: 1 if anything failed.
fn exit_status(errors: &[BenchError]) -> i32 {
    i32::from(!errors.is_empty())
}

/// CPU time used by everything on the machine (`/proc/stat`, all CPUs) and
/// by this process, at one instant.
struct LoadMark {
    wall: Instant,
    system_busy_s: f64,
    own_s: f64,
}

impl LoadMark {
    fn now() -> LoadMark {
        // /proc/stat counts in USER_HZ (100 on Linux) ticks.
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_string();
                let v: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                Some(v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0.0);
        LoadMark {
            wall: Instant::now(),
            system_busy_s: busy / 100.0,
            own_s: privmem_baseline::process_cpu_time().as_secs_f64(),
        }
    }

    /// Share of all CPUs that *other* processes kept busy since `self`
    /// (0 = the machine was ours alone, 0.5 = one of two cores was taken).
    fn others_since(&self) -> f64 {
        let now = LoadMark::now();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = now.wall.duration_since(self.wall).as_secs_f64();
        let others = (now.system_busy_s - self.system_busy_s) - (now.own_s - self.own_s);
        if wall <= 0.0 {
            return 0.0;
        }
        (others / (wall * cpus)).clamp(0.0, 1.0)
    }
}

/// Runs one benchmark by name.
fn run_one(name: &str, ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    if injected(&format!("error:{name}")) {
        anyhow::bail!("injected failure (PRIVMEM_BENCH_INJECT=error:{name})");
    }
    match name {
        "exit" => exit::run(ctx),
        "fault" => fault::run(ctx),
        "convert" => convert::run(ctx),
        "attrmap" => attrmap::run(ctx),
        "access" => access::run(ctx),
        "scale" => scale::run(ctx),
        "parallel" => parallel::run(ctx),
        "embed" => embed::run(ctx),
        "kvm/convert" => kvm::convert::run(ctx),
        "kvm/exit" => exit::run_private(ctx),
        "kvm/setup" => kvm::setup::run(ctx),
        "kvm/prefault" => kvm::prefault::run(ctx),
        other => anyhow::bail!("unknown benchmark `{other}`"),
    }
}

/// The `bench` command: the exit status of the module docs.
pub fn main(args: &BenchArgs) -> i32 {
    if let Some(bytes) = args.rss_probe {
        return scale::rss_probe_main(bytes);
    }
    if let Some(bytes) = args.scaling_probe {
        return scaling::probe_main(bytes);
    }
    let names: Vec<&str> = if args.names.is_empty() {
        ALL.to_vec()
    } else {
        args.names.iter().map(String::as_str).collect()
    };
    if let Some(bad) = names.iter().find(|n| !ALL.contains(n)) {
        eprintln!(
            "privmem bench: unknown benchmark `{bad}` (expected one of: {})",
            ALL.join(", ")
        );
        return 2;
    }
    let mut ctx = Ctx {
        quick: args.quick,
        progress: Progress::new(names.len()),
        skipped: Vec::new(),
    };
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, name) in names.iter().enumerate() {
        ctx.progress.begin(i, name);
        let mark = LoadMark::now();
        match run_one(name, &mut ctx) {
            Ok(mut r) => {
                if r.is_empty() && ctx.skipped.iter().any(|s| s.name == *name) {
                    ctx.progress.end("skipped");
                    continue;
                }
                // How much of the machine others used meanwhile: figures
                // taken under load are noisier (docs/performance.md).
                let load = mark.others_since();
                for row in &mut r {
                    row.context.insert("machine_load_others".into(), load);
                }
                errors.extend(guard::confirmed(&mut r, || run_one(name, &mut ctx)));
                ctx.progress.end(&targets_met(&r));
                rows.extend(r);
            }
            Err(e) => {
                ctx.progress.end(&format!("failed: {e:#}"));
                errors.push(BenchError {
                    name: name.to_string(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    ctx.progress.finish();
    let machine = machine();
    if args.json {
        let status = exit_status(&errors);
        let doc = Doc {
            machine,
            quick: args.quick,
            benches: &rows,
            errors,
            skipped: &ctx.skipped,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("privmem bench: {e}");
                return 1;
            }
        }
        status
    } else {
        print_table(&machine, &rows, &errors, &ctx.skipped);
        exit_status(&errors)
    }
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

fn print_table(machine: &str, rows: &[Row], errors: &[BenchError], skipped: &[BenchSkip]) {
    println!("machine: {machine}");
    println!(
        "{:<26} {:>9} {:>11} {:>11} {:>7} {:>13} {:>14} {:>4}",
        "name", "unit", "baseline", "privmem", "ratio", "spread b/p", "target", "met"
    );
    for r in rows {
        println!(
            "{:<26} {:>9} {:>11} {:>11} {:>7.3} {:>13} {:>14} {:>4}",
            r.name,
            r.unit,
            fmt_num(r.baseline),
            fmt_num(r.privmem),
            r.ratio,
            format!(
                "{:.0}%/{:.0}%",
                r.baseline_spread * 100.0,
                r.privmem_spread * 100.0
            ),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
    println!();
    for r in rows {
        let mut line = format!("{}: baseline = {}", r.name, r.baseline_is);
        for (k, v) in &r.context {
            line.push_str(&format!("; {k} = {}", fmt_num(*v)));
        }
        if let Some(n) = &r.note {
            line.push_str(&format!("; {n}"));
        }
        println!("  {line}");
    }
    for s in skipped {
        println!("{}: SKIPPED: {}", s.name, s.reason);
    }
    for e in errors {
        println!("{}: FAILED: {}", e.name, e.error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures measured beside the main one come from the measured
    /// rounds only (never each side's warm-up), paired with their side.
    #[test]
    fn alternate_with_leaves_the_warm_up_out_of_both_lists() {
        let mut ctx = Ctx {
            quick: true,
            progress: Progress::new(1),
            skipped: Vec::new(),
        };
        let mut n = 0.0;
        let (s, beside) = ctx
            .alternate_with("t", 2, |side| {
                n += 1.0;
                Ok((n, (side, n * 10.0)))
            })
            .unwrap();
        // Runs 1 and 2 are the warm-up (B, P); round 1 is B, P; round 2 P, B.
        assert_eq!(s.base, [3.0, 6.0]);
        assert_eq!(s.privmem, [4.0, 5.0]);
        let got: Vec<_> = beside.iter().map(|(side, extra)| (*side, *extra)).collect();
        assert_eq!(
            got,
            [
                (Side::Baseline, (Side::Baseline, 30.0)),
                (Side::Privmem, (Side::Privmem, 40.0)),
                (Side::Privmem, (Side::Privmem, 50.0)),
                (Side::Baseline, (Side::Baseline, 60.0)),
            ]
        );
    }

    #[test]
    fn any_error_fails_the_run() {
        assert_eq!(exit_status(&[]), 0);
        let e = BenchError {
            name: "exit".into(),
            error: "boom".into(),
        };
        assert_eq!(exit_status(&[e]), 1);
    }

    pub(super) fn row(target: Target, base: f64, privmem: f64) -> Row {
        let s = Samples {
            base: vec![base],
            privmem: vec![privmem],
        };
        RowSpec {
            name: "t",
            unit: "u",
            target,
            baseline_is: "b",
            note: None,
        }
        .row(&s)
    }

    #[test]
    fn the_progress_line_counts_only_rows_with_a_target() {
        let (hit, miss) = (
            row(Target::RatioAtMost(2.0), 1.0, 1.0),
            row(Target::RatioAtMost(2.0), 1.0, 3.0),
        );
        let ctx = row(Target::Context, 1.0, 3.0);
        assert_eq!(targets_met(&[hit.clone(), miss]), "1/2 targets met");
        assert_eq!(
            targets_met(&[ctx.clone(), ctx.clone()]),
            "2 context (no target)"
        );
        assert_eq!(
            targets_met(&[hit, ctx]),
            "1/1 targets met, 1 context (no target)"
        );
    }
}
