//! `convert`: explicit conversions through the engine, against the same
//! `fallocate` calls issued directly.
//!
//! privmem: `Engine::convert` (origin explicit, discard on) over a model
//! `sw-protected` VM: the guest first writes its private memory (guest_memfd
//! pages hold data); every request of the size under test then converts
//! private→shared (attributes, `PUNCH_HOLE` on the guest_memfd, map); the
//! host then writes the shared memory (the shared memfd holds data); every
//! request converts shared→private (attributes, `PUNCH_HOLE` on the shared
//! memfd, map). Only the two conversion passes are timed. Baseline: exactly
//! those `fallocate(PUNCH_HOLE|KEEP_SIZE)` calls on two memfds of the same
//! size, each written the same way before its pass.
//!
//! The `context` figures repeat the measurement on never-written memory,
//! where each punch frees nothing and costs ~1 µs whatever its size.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_baseline::BareMemfd;
use privmem_core::engine::{ConvertTo, Origin, Outcome};
use privmem_core::{Access, Gpa, GuestOp, HostMemory, Vcpu, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{run_vcpu_on, HvEngine, Machine, VcpuOf};

use super::util::{size_name, slot, timed, workload, GIB, MIB};
use super::{median, Ctx, Row, RowSpec, Samples, Side, Target};

type Model = ModelHypervisor;

/// The model machine both passes run on.
struct Rig {
    engine: Arc<HvEngine<Model>>,
    vcpu: VcpuOf<Model>,
    size: u64,
}

impl Rig {
    fn new(size: u64) -> anyhow::Result<Rig> {
        let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
        let w = workload(VmType::SwProtected, true, vec![slot(0, size)], vec![vec![]]);
        let (engine, mut vcpus) = Machine::new(hv, &w).context("model setup")?.into_parts();
        let vcpu = vcpus.pop().context("one vCPU")?;
        Ok(Rig { engine, vcpu, size })
    }

    /// The guest writes all its (private) memory.
    fn guest_writes_private(&mut self) -> anyhow::Result<()> {
        let ops = [
            GuestOp::Write {
                gpa: Gpa(0),
                len: self.size,
                byte: 0x5a,
                access: Access::Private,
            },
            GuestOp::Halt,
        ];
        self.vcpu.load_program(&ops)?;
        let st = run_vcpu_on(&mut self.vcpu, &self.engine, &AtomicBool::new(false));
        if st.state != RunState::Halted || st.exits.memory_fault != 0 {
            bail!("private write ended {:?}: {:?}", st.state, st.error);
        }
        Ok(())
    }

    /// The host writes all the shared memory.
    fn host_writes_shared(&self) -> anyhow::Result<()> {
        let slots = self.engine.slots();
        let shared = slots[0].shared.as_ref().context("shared backing")?;
        shared
            .mem
            .fill(0, self.size, 0xa5)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// One pass of conversions in `req`-byte requests; seconds.
    fn pass(&self, req: u64, to: ConvertTo) -> anyhow::Result<f64> {
        let (t, r) = timed(|| -> anyhow::Result<u64> {
            let mut pages = 0;
            for off in (0..self.size).step_by(req as usize) {
                match self.engine.convert(Gpa(off), req, to, Origin::Explicit)? {
                    Outcome::Converted { pages: p } => pages += p,
                    Outcome::NoOp => bail!("conversion at {off:#x} was a no-op"),
                }
            }
            Ok(pages)
        });
        if r? != self.size / 4096 {
            bail!("a pass converted the wrong number of pages");
        }
        Ok(t)
    }

    /// private→shared then shared→private; seconds (conversions only).
    fn round_trip(&mut self, req: u64, written: bool) -> anyhow::Result<f64> {
        if written {
            self.guest_writes_private()?;
        }
        let t1 = self.pass(req, ConvertTo::Shared)?;
        if written {
            self.host_writes_shared()?;
        }
        let t2 = self.pass(req, ConvertTo::Private)?;
        Ok(t1 + t2)
    }
}

/// The same punches on two memfds; seconds (punches only).
fn bare(gmem: &BareMemfd, shared: &BareMemfd, req: u64, written: bool) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for m in [gmem, shared] {
        if written {
            m.fill(0, m.size(), 0x5a)?;
        }
        let (t, r) = timed(|| -> anyhow::Result<()> {
            for off in (0..m.size()).step_by(req as usize) {
                m.punch(off, req)?;
            }
            Ok(())
        });
        r?;
        total += t;
    }
    Ok(total)
}

fn measure(
    ctx: &mut Ctx,
    label: &str,
    rig: &mut Rig,
    req: u64,
    written: bool,
    rounds: usize,
) -> anyhow::Result<Samples> {
    let gmem = BareMemfd::new(rig.size)?;
    let shared = BareMemfd::new(rig.size)?;
    let gib_converted = 2.0 * rig.size as f64 / GIB as f64;
    ctx.alternate(label, rounds, |side| {
        let t = match side {
            Side::Baseline => bare(&gmem, &shared, req, written)?,
            Side::Privmem => rig.round_trip(req, written)?,
        };
        Ok(t / gib_converted)
    })
}

/// Runs the benchmark: 2 MiB requests, then 4 KiB requests.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let size = if ctx.quick { 64 * MIB } else { GIB };
    // Five rounds in --quick too: a quick 2 MiB pass is ~32 punches (a few
    // ms), one round of three can land at 2x on a noisy host, and the
    // regression guard reads the median.
    let rounds = 5;
    let mut rig = Rig::new(size)?;
    let mut rows = Vec::new();
    for (req, target) in [(2 * MIB, 1.2), (4096, 1.5)] {
        let label = format!("convert/{}", size_name(req));
        let s = measure(ctx, &label, &mut rig, req, true, rounds)?;
        let sparse_label = format!("{label} (never-written memory)");
        let sparse = measure(ctx, &sparse_label, &mut rig, req, false, rounds)?;
        let mut row = RowSpec {
            name: &label,
            unit: "s/GiB",
            target: Target::RatioAtMost(target),
            baseline_is: "the same fallocate(PUNCH_HOLE) calls on two written memfds",
            note: Some(format!(
                "model, sw-protected VM: {} of written memory private->shared->private in {} requests ({} conversions, discard on); context: the same on never-written memory",
                size_name(size),
                size_name(req),
                2 * size / req
            )),
        }
        .row(&s);
        row.context = BTreeMap::from([
            (
                "unwritten_baseline_s_per_gib".to_string(),
                median(&sparse.base),
            ),
            (
                "unwritten_privmem_s_per_gib".to_string(),
                median(&sparse.privmem),
            ),
            ("unwritten_ratio".to_string(), sparse.ratio()),
        ]);
        rows.push(row);
    }
    Ok(rows)
}
