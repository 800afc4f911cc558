//! `exit`: the round trip of a port-I/O exit through privmem's full vCPU
//! loop on real KVM, against a bare `KVM_RUN` loop.
//!
//! Both sides run the **same guest code on the same vCPU**: a program of N
//! `sync` ops (each one `out` to privmem's sync port) and a `hlt`, loaded
//! afresh before every run. The baseline is a bare loop of `KVM_RUN` ioctls
//! that reads `exit_reason` and counts; privmem is `run_vcpu` (reset of
//! `exit_reason`, kick bookkeeping, snapshot, `decode_exit`, protocol
//! decoding, `handle_exit`, exit statistics and the sync log).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_baseline::raw_run_until_hlt;
use privmem_core::{GuestOp, Vcpu, VmType};
use privmem_kvm::KvmHypervisor;
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{run_vcpu_on, Machine};

use super::util::{slot, timed, workload, MIB};
use super::{Ctx, Row, RowSpec, Side, Target};

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let Some(hv) = ctx.kvm_or_skip("exit")? else {
        return Ok(Vec::new());
    };
    let n: u64 = if ctx.quick { 5_000 } else { 50_000 };
    measure(ctx, "exit", hv, VmType::Default, n)
}

/// `kvm/exit`: the same on a sw-protected VM (the rig's nested KVM, where
/// an exit costs ~100x what it costs on hardware, so fewer of them).
pub fn run_private(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    if super::kvm::private_mem_or_skip(ctx, "kvm/exit")?.is_none() {
        return Ok(Vec::new());
    }
    let Some(hv) = ctx.kvm_or_skip("kvm/exit")? else {
        return Ok(Vec::new());
    };
    let n: u64 = if ctx.quick { 1_000 } else { 5_000 };
    measure(ctx, "kvm/exit", hv, VmType::SwProtected, n)
}

/// `n` exits per run on a VM of `vm_type`, as row `name`.
fn measure(
    ctx: &mut Ctx,
    name: &str,
    hv: KvmHypervisor,
    vm_type: VmType,
    n: u64,
) -> anyhow::Result<Vec<Row>> {
    let hv = Arc::new(hv);
    let ops: Vec<GuestOp> = (0..n)
        .map(|tag| GuestOp::Sync { tag })
        .chain([GuestOp::Halt])
        .collect();
    let w = workload(vm_type, false, vec![slot(0, 2 * MIB)], vec![ops.clone()]);
    let machine = Machine::new(hv, &w).context("setting up the KVM VM")?;
    let (engine, mut vcpus) = machine.into_parts();
    let mut vcpu = vcpus.pop().context("one vCPU")?;
    let stop = AtomicBool::new(false);
    let exits = n + 1;
    // Rounds are short (~0.3 s); more of them steady the median.
    let rounds = ctx.rounds() * 2;
    let s = ctx.alternate(name, rounds, |side| {
        vcpu.load_program(&ops)?;
        match side {
            Side::Baseline => {
                let (t, io) = timed(|| raw_run_until_hlt(&vcpu, n + 1));
                let io = io?;
                if io != n {
                    bail!("bare loop saw {io} I/O exits, expected {n}");
                }
                Ok(t * 1e6 / exits as f64)
            }
            Side::Privmem => {
                let (t, st) = timed(|| run_vcpu_on(&mut vcpu, &engine, &stop));
                if st.state != RunState::Halted || st.syncs.len() as u64 != n {
                    bail!(
                        "vCPU ended {:?} with {} syncs (error {:?})",
                        st.state,
                        st.syncs.len(),
                        st.error
                    );
                }
                Ok(t * 1e6 / exits as f64)
            }
        }
    })?;
    Ok(vec![RowSpec {
        name,
        unit: "us/exit",
        target: Target::RatioAtMost(1.05),
        baseline_is: "bare KVM_RUN loop on the same vCPU and guest code",
        note: Some(format!(
            "{n} port-I/O exits (sync ops) + hlt per run, real KVM, {} VM",
            vm_type.name()
        )),
    }
    .row(&s)])
}
