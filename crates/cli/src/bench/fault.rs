//! `fault`: implicit conversions on the model, against the syscall they
//! cannot avoid.
//!
//! privmem: a `coco` guest whose memory is all private reads N pages with
//! shared intent. Every page faults (`KVM_EXIT_MEMORY_FAULT`, shared), the
//! runtime decides (`handle_exit`), the engine converts that page to shared
//! (attributes, then `PUNCH_HOLE` on the guest_memfd, then the map), and
//! the vCPU re-enters and reads the page. Baseline: the raw syscall work
//! alone, one `fallocate(PUNCH_HOLE|KEEP_SIZE)` of 4 KiB per page on a
//! memfd (the model's guest_memfd is a memfd), in the same state (never
//! written, as the guest_memfd here).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_core::handle::RunState;
use privmem_core::runtime::{run_vcpu_on, Machine};
use privmem_core::{Access, Gpa, GuestOp, VmType, PAGE_SIZE};
use privmem_kvm::bench::BareMemfd;
use privmem_model::{KernelProfile, ModelHypervisor};

use super::util::{slot, timed, workload};
use super::{Ctx, Row, RowSpec, Side, Target};

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let pages: u64 = if ctx.quick { 4096 } else { 32768 };
    let size = pages * PAGE_SIZE;
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V6_18));
    let ops = vec![
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: 0,
            access: Access::Shared,
        },
        GuestOp::Halt,
    ];
    let w = workload(VmType::Coco, true, vec![slot(0, size)], vec![ops]);
    let stop = AtomicBool::new(false);
    let rounds = ctx.rounds();
    let s = ctx.alternate("fault", rounds, |side| match side {
        Side::Baseline => {
            let memfd = BareMemfd::new(size)?;
            let (t, r) = timed(|| -> anyhow::Result<()> {
                for p in 0..pages {
                    memfd.punch(p * PAGE_SIZE, PAGE_SIZE)?;
                }
                Ok(())
            });
            r?;
            Ok(t * 1e6 / pages as f64)
        }
        Side::Privmem => {
            let m = Machine::new(hv.clone(), &w).context("model setup")?;
            let (engine, mut vcpus, policy) = m.into_parts();
            let mut vcpu = vcpus.pop().context("one vCPU")?;
            let (t, st) = timed(|| run_vcpu_on(&mut vcpu, &engine, &policy, &stop));
            let faults = st.exits.memory_fault;
            if st.state != RunState::Halted || faults != pages {
                bail!(
                    "guest ended {:?} after {faults} faults (expected {pages}): {:?}",
                    st.state,
                    st.error
                );
            }
            Ok(t * 1e6 / pages as f64)
        }
    })?;
    Ok(vec![RowSpec {
        name: "fault",
        unit: "us/fault",
        target: Target::RatioAtMost(1.5),
        baseline_is: "one fallocate(PUNCH_HOLE) of 4 KiB per page on a memfd",
        note: Some(format!(
            "model, coco VM: {pages} implicit conversions private->shared (fault, engine with discard, re-entry, 4 KiB read)"
        )),
    }
    .row(&s)])
}
