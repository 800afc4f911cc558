//! `fault`: implicit conversions on the model, against the syscall they
//! cannot avoid.
//!
//! privmem: a `coco` guest whose memory is private and written (its
//! guest_memfd pages hold data, as a confidential guest's memory does) reads
//! N pages with shared intent. Every page faults (`KVM_EXIT_MEMORY_FAULT`,
//! shared), the runtime decides (`handle_exit`), the engine converts that
//! page to shared (attributes, then `PUNCH_HOLE` on the guest_memfd page,
//! then the map), and the vCPU re-enters and reads the page. Only the read
//! phase is timed. Baseline: the raw syscall work alone, one
//! `fallocate(PUNCH_HOLE|KEEP_SIZE)` of 4 KiB per page on a memfd (the
//! model's guest_memfd is a memfd) written the same way beforehand.
//!
//! The `context` figures repeat the measurement on never-written memory,
//! where the punch frees nothing and costs ~1 µs.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_baseline::BareMemfd;
use privmem_core::{Access, Gpa, GuestOp, Vcpu, VmType, PAGE_SIZE};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{run_vcpu_on, Machine};

use super::util::{slot, timed, workload};
use super::{median, Ctx, Row, RowSpec, Samples, Side, Target};

/// One measurement of both sides, with or without data in the pages.
fn measure(
    ctx: &mut Ctx,
    label: &str,
    pages: u64,
    populated: bool,
    rounds: usize,
) -> anyhow::Result<Samples> {
    let size = pages * PAGE_SIZE;
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let write = GuestOp::Write {
        gpa: Gpa(0),
        len: size,
        byte: 0xa5,
        access: Access::Private,
    };
    let touch = [
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: 0,
            access: Access::Shared,
        },
        GuestOp::Halt,
    ];
    let w = workload(VmType::Coco, true, vec![slot(0, size)], vec![vec![]]);
    let stop = AtomicBool::new(false);
    ctx.alternate(label, rounds, |side| match side {
        Side::Baseline => {
            let memfd = BareMemfd::new(size)?;
            if populated {
                memfd.fill(0, size, 0xa5)?;
            }
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
            let (engine, mut vcpus) = m.into_parts();
            let mut vcpu = vcpus.pop().context("one vCPU")?;
            if populated {
                vcpu.load_program(&[write, GuestOp::Halt])?;
                let st = run_vcpu_on(&mut vcpu, &engine, &stop);
                if st.state != RunState::Halted || st.exits.memory_fault != 0 {
                    bail!("private write phase ended {:?}: {:?}", st.state, st.error);
                }
            }
            vcpu.load_program(&touch)?;
            let (t, st) = timed(|| run_vcpu_on(&mut vcpu, &engine, &stop));
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
    })
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let pages: u64 = if ctx.quick { 4096 } else { 32768 };
    let rounds = ctx.rounds();
    let s = measure(ctx, "fault", pages, true, rounds)?;
    let sparse = measure(ctx, "fault (never-written pages)", pages, false, rounds)?;
    let mut row = RowSpec {
        name: "fault",
        unit: "us/fault",
        target: Target::RatioAtMost(1.5),
        baseline_is: "one fallocate(PUNCH_HOLE) of 4 KiB per written page of a memfd",
        note: Some(format!(
            "model, coco VM: {pages} implicit conversions private->shared of written pages (fault, engine with discard, re-entry, 4 KiB read); context: the same on never-written pages"
        )),
    }
    .row(&s);
    row.context = BTreeMap::from([
        ("unwritten_baseline_us".to_string(), median(&sparse.base)),
        ("unwritten_privmem_us".to_string(), median(&sparse.privmem)),
        ("unwritten_ratio".to_string(), sparse.ratio()),
    ]);
    Ok(vec![row])
}
