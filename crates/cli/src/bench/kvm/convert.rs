//! `kvm/convert`: a sw-protected guest converts a range with real `vmmcall`
//! exits (`KVM_HC_MAP_GPA_RANGE`), to private then back to shared, in 2 MiB
//! requests and page by page; privmem's engine answers the exits
//! (`Engine::handle_hypercall`: validation, range lock, attributes, punch,
//! attribute map, listeners, trace), against a bare handler that only calls
//! `KVM_SET_MEMORY_ATTRIBUTES` and `fallocate(PUNCH_HOLE)`, as QEMU's
//! `kvm_convert_memory` does. Same VM, same vCPU, same guest code, the two
//! handlers alternating (`privmem_tinyvmm`).
//!
//! The guest converts memory it never wrote (real mode reaches only the
//! first MiB): the punches free nothing, so the figure is the exits, the
//! attribute changes and the handlers' own work.
//!
//! Context: the handlers' time per call (`Split`), the engine alone
//! (`engine_alone_us_per_call`: the same requests in a loop, no exits), and
//! the engine over a do-nothing backend answering the same real exits
//! (`engine_after_exit_us_per_call`): its own work right after each exit,
//! without the kernel's.

use anyhow::{bail, Context};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::EngineConfig;
use privmem_core::{Gpa, GpaRange};
use privmem_tinyvmm::guest::{self, ports};
use privmem_tinyvmm::{Conversions, Ended, Flow, TinyVcpu, TinyVmm, VmmConfig};

use super::super::util::{size_name, timed, GIB, MIB};
use super::super::{Ctx, Row, RowSpec, Side, Target};
use super::{Run, Split, Timed};

/// Where the converted range starts (above the guest's code page).
const BASE: u64 = 2 * MIB;

/// Runs the guest once with `conv`; seconds.
fn once(
    vcpu: &mut TinyVcpu,
    vmm: &TinyVmm,
    code: &[u8],
    conv: &mut impl Conversions,
) -> anyhow::Result<Run> {
    vcpu.start(vmm, code)?;
    let mut conv = Timed::new(conv);
    let mut marks = 0;
    let (t, ended) = timed(|| {
        vcpu.run(&mut conv, |port, d| match port {
            ports::MARK => {
                marks += 1;
                Ok(Flow::Continue)
            }
            ports::RET => Err(format!("a conversion failed: {}", d[0] as i8)),
            other => Err(format!("unexpected port {other:#x}")),
        })
    });
    let ended = ended?;
    if ended != Ended::Halted || marks != 1 {
        bail!("the guest ended {ended:?} after {marks} marks (expected a halt after 1)");
    }
    Ok(Run {
        secs: t,
        handler_secs: conv.spent.as_secs_f64(),
        calls: conv.calls,
    })
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let Some(kvm) = super::private_mem_or_skip(ctx, "kvm/convert")? else {
        return Ok(Vec::new());
    };
    let size = if ctx.quick { 16 * MIB } else { 64 * MIB };
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        ..EngineConfig::default()
    };
    let vmm = TinyVmm::new(
        &kvm,
        VmmConfig {
            mem: BASE + size,
            engine: config,
        },
    )
    .context("setting up the sw-protected VM")?;
    let mut vcpu = vmm.create_vcpu()?;
    let mut privmem = vmm.privmem_handler(&vcpu)?;
    let mut bare = vmm.minimal_handler()?;
    let mut null = super::alone::null_handler(BASE + size)?;
    let range = GpaRange::new(Gpa(BASE), size)?;
    let mut rows = Vec::new();
    for req in [2 * MIB, 4096] {
        let code = guest::convert(BASE, size, req)?;
        let label = format!("kvm/convert/{}", size_name(req));
        let conversions = 2 * size / req;
        let (s, runs) = ctx.alternate_with(&label, ctx.rounds(), |side| {
            let run = match side {
                Side::Baseline => once(&mut vcpu, &vmm, &code, &mut bare)?,
                Side::Privmem => {
                    let r = once(&mut vcpu, &vmm, &code, &mut privmem)?;
                    if vmm
                        .engine()
                        .attr_map()
                        .runs(range)
                        .iter()
                        .any(|r| r.private)
                    {
                        bail!("privmem's map is not all shared after the round trip");
                    }
                    r
                }
            };
            Ok((run.secs / (2.0 * size as f64 / GIB as f64), run))
        })?;
        let mut split = Split::default();
        runs.iter().for_each(|(side, run)| split.push(*side, run));
        let mut row = RowSpec {
                name: &label,
                unit: "s/GiB",
                target: Target::RatioAtMost(1.05),
                baseline_is: "a bare handler: KVM_SET_MEMORY_ATTRIBUTES + fallocate(PUNCH_HOLE), as QEMU's kvm_convert_memory",
                note: Some(format!(
                    "real KVM, sw-protected VM: the guest converts {} to private and back in {} requests ({conversions} vmmcall exits per run), never-written memory{}",
                    size_name(size),
                    size_name(req),
                    if ctx.quick { "; --quick: 16 MiB instead of 64 MiB" } else { "" }
                )),
            }
            .row(&s);
        row.context = split.context();
        let alone = super::alone::us_per_request(BASE, size, req, 3)?;
        row.context
            .insert("engine_alone_us_per_call".to_string(), alone);
        let after = super::after_exit(ctx.rounds(), || once(&mut vcpu, &vmm, &code, &mut null))?;
        row.context
            .insert("engine_after_exit_us_per_call".to_string(), after);
        rows.push(row);
    }
    Ok(rows)
}
