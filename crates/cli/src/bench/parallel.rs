//! `parallel`: two vCPUs converting disjoint ranges concurrently, against
//! one vCPU doing the same total work.
//!
//! A model `sw-protected` VM with two guest_memfd slots (each its own
//! guest_memfd and shared memfd, as a VMM gives each RAM region its own),
//! initially private, discard on. The work per slot: every page converted
//! private→shared, then every page back, one 4 KiB `MAP_GPA_RANGE` per
//! page (an exit, the engine with both discards, a re-entry). privmem: vCPU
//! 0 works on slot 0 while vCPU 1 works on slot 1, each on its own thread
//! (`Machine::run`). Baseline: one vCPU does slot 0 then slot 1. The figure
//! is throughput.
//!
//! A speedup needs two idle cores, which a shared machine rarely gives for
//! a whole run. So in each round the machine's own two-way scaling is
//! measured too ([`super::scaling`]: the same single-vCPU work as two
//! independent processes), and the ratio is privmem's speedup divided by
//! it: 1.0 means privmem's two vCPUs scale as well as two processes that
//! share nothing. The `context` keeps the raw speedup, the machine's
//! scaling, and per side the process CPU time over wall time of the runs
//! (2.0 = both cores worked the whole run).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_baseline::process_cpu_time;
use privmem_core::exit::MAP_GPA_RANGE_ENCRYPTED;
use privmem_core::{GuestOp, VmType, PAGE_SIZE};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{Machine, RunOptions};

use super::scaling::ScalingProbe;
use super::util::{size_name, slot, timed, workload, MIB};
use super::{median, Ctx, Row, RowSpec, Samples, Side, Target};

/// Every page of `[base, base+size)` to shared, then every page back, one
/// 4 KiB `MAP_GPA_RANGE` each.
pub(super) fn program(base: u64, size: u64) -> Vec<GuestOp> {
    let mut ops = Vec::new();
    for attrs in [0, MAP_GPA_RANGE_ENCRYPTED] {
        for gpa in (base..base + size).step_by(PAGE_SIZE as usize) {
            ops.push(GuestOp::Map {
                gpa,
                pages: 1,
                attrs,
                expect_ret: Some(0),
            });
        }
    }
    ops
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    // Long enough per run (~0.1 s or more) that scheduling noise is small
    // next to it.
    let size = if ctx.quick { 64 * MIB } else { 256 * MIB };
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let slots = vec![slot(0, size), slot(size, size)];
    let (a, b) = (program(0, size), program(size, size));
    let halt = [GuestOp::Halt];
    let two = workload(
        VmType::SwProtected,
        true,
        slots.clone(),
        vec![
            [a.as_slice(), &halt].concat(),
            [b.as_slice(), &halt].concat(),
        ],
    );
    let one = workload(
        VmType::SwProtected,
        true,
        slots,
        vec![[a.as_slice(), &b, &halt].concat()],
    );
    let conversions = (a.len() + b.len()) as f64;
    // Cheap rounds; more of them make the median robust to the rounds where
    // another process held a core.
    let rounds = ctx.rounds() * 3 / 2;
    let mut probe = ScalingProbe::spawn(size)?;
    // Beside each run: its cores busy, and next to each two-vCPU run (the
    // one that load disturbs) the machine's own scaling.
    let (s, beside) = ctx.alternate_with("parallel", rounds, |side| {
        let machine = match side {
            Side::Privmem => Some(probe.measure()?.speedup()),
            Side::Baseline => None,
        };
        let w = match side {
            Side::Baseline => &one,
            Side::Privmem => &two,
        };
        let m = Machine::new(hv.clone(), w).context("model setup")?;
        let cpu0 = process_cpu_time();
        let (t, states) = timed(|| m.run(RunOptions::default()));
        let busy = (process_cpu_time() - cpu0).as_secs_f64() / t;
        let exits: u64 = states.iter().map(|s| s.exits.hypercall).sum();
        if states.iter().any(|s| s.state != RunState::Halted) || exits as f64 != conversions {
            bail!("a vCPU did not finish its conversions: {states:?}");
        }
        Ok((conversions / t / 1e3, (busy, machine)))
    })?;
    drop(probe);
    let machine: Vec<f64> = beside.iter().filter_map(|(_, (_, m))| *m).collect();
    let busy = |want: Side| -> Vec<f64> {
        beside
            .iter()
            .filter(|(side, _)| *side == want)
            .map(|(_, (b, _))| *b)
            .collect()
    };
    let mut row = RowSpec {
        name: "parallel",
        unit: "kconv/s",
        target: Target::RatioAtLeast(0.9),
        baseline_is: "one vCPU doing both slots' conversions",
        note: Some(format!(
            "model, sw-protected VM, 2 slots of {}: {} 4 KiB conversions in total; \
             ratio = privmem's speedup / the machine's own (two processes)",
            size_name(size),
            conversions
        )),
    }
    .row_guarded_by(&s, normalized(&s, &machine), s.ratio());
    row.context = BTreeMap::from([
        ("raw_speedup".to_string(), s.ratio()),
        ("machine_scaling".to_string(), median(&machine)),
        (
            "baseline_cores_busy".to_string(),
            median(&busy(Side::Baseline)),
        ),
        (
            "privmem_cores_busy".to_string(),
            median(&busy(Side::Privmem)),
        ),
    ]);
    Ok(vec![row])
}

/// The median over rounds of privmem's speedup / the machine's scaling
/// measured in the same round.
fn normalized(s: &Samples, machine: &[f64]) -> f64 {
    let per_round: Vec<f64> = s
        .base
        .iter()
        .zip(&s.privmem)
        .zip(machine)
        .map(|((&b, &p), &m)| p / b / m)
        .collect();
    median(&per_round)
}
