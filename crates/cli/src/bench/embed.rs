//! `embed`: what adopting privmem costs a VMM. The example VMM
//! (`privmem_tinyvmm`, `crates/tinyvmm/examples/vmm.rs`) runs its exit loop
//! with privmem's per-exit calls (`Engine::handle_hypercall` /
//! `handle_memory_fault`, repeat guard, attribute map, discard on, no
//! pre-fault), against the same VMM with a hand-written minimal handler
//! (`KVM_SET_MEMORY_ATTRIBUTES` + `fallocate(PUNCH_HOLE)`: no map, no
//! guard). Same VM, same vCPU, same guest, the two alternating.
//!
//! The guest is the example's conversions as a loop that ends where it
//! began (`guest::round_trips`): per round, the page at 0x8000 written,
//! converted to private, read, written, converted back to shared, read;
//! each read is a port exit whose byte the device model checks (0: both
//! handlers discarded). So each round is 2 hypercall exits and 2 port
//! exits, as a VMM sees them.
//!
//! Context: the handlers' time per call (`kvm::Split`), and
//! `engine_after_exit_us_per_call`, the same guest answered by the engine
//! over a backend whose calls do nothing (`kvm::alone::NullHandler`; the
//! reads go unchecked, since nothing is discarded): the engine's own work
//! right after each exit, without the kernel's.

use anyhow::{bail, Context};
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::EngineConfig;
use privmem_core::{Gpa, GpaRange};
use privmem_tinyvmm::guest::{self, ports};
use privmem_tinyvmm::{Conversions, Ended, Flow, TinyVcpu, TinyVmm, VmmConfig};

use super::kvm::alone::null_handler;
use super::kvm::{after_exit, Run, Split, Timed};
use super::util::{timed, MIB};
use super::{Ctx, Row, RowSpec, Side, Target};

/// What the device model accepts from the guest's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    /// Every byte read after a conversion is 0 (the handler discarded).
    Discarded,
    /// Any byte: for a handler whose kernel calls do nothing
    /// ([`NullHandler`]), so nothing is discarded.
    Unchecked,
}

/// Runs `rounds` guest rounds with `conv`; seconds.
fn once(
    vcpu: &mut TinyVcpu,
    vmm: &TinyVmm,
    code: &[u8],
    rounds: u32,
    conv: &mut impl Conversions,
    want: Reads,
) -> anyhow::Result<Run> {
    vcpu.start(vmm, code)?;
    let mut conv = Timed::new(conv);
    let mut reads = 0u32;
    let (t, ended) = timed(|| {
        vcpu.run(&mut conv, |port, d| match port {
            ports::READ if d[0] == 0 || want == Reads::Unchecked => {
                reads += 1;
                Ok(Flow::Continue)
            }
            ports::READ => Err(format!("the guest read {:#04x}: not discarded", d[0])),
            ports::RET => Err(format!("a conversion failed: {}", d[0] as i8)),
            other => Err(format!("unexpected port {other:#x}")),
        })
    });
    let ended = ended?;
    if ended != Ended::Halted || reads != 2 * rounds {
        bail!(
            "the guest ended {ended:?} after {reads} reads (expected a halt after {})",
            2 * rounds
        );
    }
    Ok(Run {
        secs: t,
        handler_secs: conv.spent.as_secs_f64(),
        calls: conv.calls,
    })
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let Some(kvm) = super::kvm::private_mem_or_skip(ctx, "embed")? else {
        return Ok(Vec::new());
    };
    let rounds: u32 = if ctx.quick { 500 } else { 2000 };
    let config = EngineConfig {
        discard: DiscardPolicy::Discard,
        ..EngineConfig::default()
    };
    let vmm = TinyVmm::new(
        &kvm,
        VmmConfig {
            mem: 2 * MIB,
            engine: config,
        },
    )
    .context("setting up the example VMM")?;
    let mut vcpu = vmm.create_vcpu()?;
    let mut privmem = vmm.privmem_handler(&vcpu)?;
    let mut bare = vmm.minimal_handler()?;
    let code = guest::round_trips(rounds)?;
    let all = GpaRange::new(Gpa(0), 2 * MIB)?;
    let (s, runs) = ctx.alternate_with("embed", ctx.rounds(), |side| {
        let run = match side {
            Side::Baseline => once(&mut vcpu, &vmm, &code, rounds, &mut bare, Reads::Discarded)?,
            Side::Privmem => {
                let r = once(
                    &mut vcpu,
                    &vmm,
                    &code,
                    rounds,
                    &mut privmem,
                    Reads::Discarded,
                )?;
                if vmm.engine().attr_map().runs(all).iter().any(|r| r.private) {
                    bail!("privmem's map is not all shared after the guest's round trips");
                }
                r
            }
        };
        Ok((run.secs * 1e6 / f64::from(rounds), run))
    })?;
    let mut split = Split::default();
    runs.iter().for_each(|(side, run)| split.push(*side, run));
    let mut row = RowSpec {
        name: "embed",
        unit: "us/round",
        target: Target::RatioAtMost(1.05),
        baseline_is: "the same VMM with a hand-written handler: KVM_SET_MEMORY_ATTRIBUTES + fallocate(PUNCH_HOLE), no map, no guard",
        note: Some(format!(
            "real KVM, sw-protected VM, the example VMM's exit loop: {rounds} rounds of write, to private, read, write, to shared, read (2 vmmcall + 2 port exits each), discard checked"
        )),
    }
    .row(&s);
    row.context = split.context();
    let mut null = null_handler(2 * MIB)?;
    let after = after_exit(ctx.rounds(), || {
        once(&mut vcpu, &vmm, &code, rounds, &mut null, Reads::Unchecked)
    })?;
    row.context
        .insert("engine_after_exit_us_per_call".to_string(), after);
    Ok(vec![row])
}
