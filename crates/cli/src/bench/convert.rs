//! `convert`: explicit conversions through the engine, against the same
//! `fallocate` calls issued directly.
//!
//! privmem: `Engine::convert` (origin explicit, discard on) over a model
//! `sw-protected` VM whose memory starts private: every request of the
//! size under test converts private→shared (attributes, `PUNCH_HOLE` on the
//! guest_memfd, map), then every request shared→private (attributes,
//! `PUNCH_HOLE` on the shared memfd, map). Baseline: exactly those
//! `fallocate(PUNCH_HOLE|KEEP_SIZE)` calls on two memfds of the same size,
//! in the same order. Both sides' memfds are never written (sparse).

use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_core::engine::{Engine, Origin, Outcome};
use privmem_core::runtime::Machine;
use privmem_core::{Gpa, VmType};
use privmem_kvm::bench::BareMemfd;
use privmem_model::{KernelProfile, ModelHypervisor};

use super::util::{size_name, slot, timed, workload, GIB, MIB};
use super::{Ctx, Row, RowSpec, Side, Target};

/// Runs the benchmark: 2 MiB requests, then 4 KiB requests.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let size = if ctx.quick { 64 * MIB } else { GIB };
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V6_18));
    let w = workload(VmType::SwProtected, true, vec![slot(0, size)], Vec::new());
    let m = Machine::new(hv, &w).context("model setup")?;
    let (engine, _, _) = m.into_parts();
    let gmem = BareMemfd::new(size)?;
    let shared = BareMemfd::new(size)?;
    let mut rows = Vec::new();
    for (req, target) in [(2 * MIB, 1.2), (4096, 1.5)] {
        let label = format!("convert/{}", size_name(req));
        let rounds = ctx.rounds();
        let s = ctx.alternate(&label, rounds, |side| {
            let t = match side {
                Side::Baseline => bare(&gmem, &shared, size, req)?,
                Side::Privmem => engine_round_trip(&engine, size, req)?,
            };
            // Seconds per GiB converted (each direction converts `size`).
            Ok(t / (2.0 * size as f64 / GIB as f64))
        })?;
        rows.push(
            RowSpec {
                name: &label,
                unit: "s/GiB",
                target: Target::RatioAtMost(target),
                baseline_is: "the same fallocate(PUNCH_HOLE) calls on two memfds",
                note: Some(format!(
                    "model, sw-protected VM: {} private->shared->private in {} requests ({} conversions)",
                    size_name(size),
                    size_name(req),
                    2 * size / req
                )),
            }
            .row(&s),
        );
    }
    Ok(rows)
}

fn bare(gmem: &BareMemfd, shared: &BareMemfd, size: u64, req: u64) -> anyhow::Result<f64> {
    let (t, r) = timed(|| -> anyhow::Result<()> {
        for off in (0..size).step_by(req as usize) {
            gmem.punch(off, req)?;
        }
        for off in (0..size).step_by(req as usize) {
            shared.punch(off, req)?;
        }
        Ok(())
    });
    r?;
    Ok(t)
}

fn engine_round_trip(engine: &Engine<ModelHypervisor>, size: u64, req: u64) -> anyhow::Result<f64> {
    let (t, r) = timed(|| -> anyhow::Result<u64> {
        let mut pages = 0;
        for to_private in [false, true] {
            for off in (0..size).step_by(req as usize) {
                match engine.convert(Gpa(off), req, to_private, Origin::Explicit)? {
                    Outcome::Converted { pages: p } => pages += p,
                    Outcome::NoOp => bail!("conversion at {off:#x} was a no-op"),
                }
            }
        }
        Ok(pages)
    });
    let pages = r?;
    if pages != 2 * size / 4096 {
        bail!("converted {pages} pages, expected {}", 2 * size / 4096);
    }
    Ok(t)
}
