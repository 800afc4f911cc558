//! `access`: guest write+check throughput of the model backend, against
//! `memset` + compare over host memory of the same kind.
//!
//! privmem: a model `default` VM with one guest_memfd slot (a memfd, as the
//! model stores every page); the guest writes the whole slot with one byte,
//! then reads it back checking every byte (`run_vcpu`: two exits). The
//! byte changes every run. Baseline: `memset` of a mapped memfd of the same
//! size, then a compare of every byte against the same value. Both sides'
//! pages are already allocated (one unmeasured warm-up run each).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_core::handle::RunState;
use privmem_core::runtime::{run_vcpu_on, Machine};
use privmem_core::{Access, Gpa, GuestOp, Vcpu, VmType};
use privmem_kvm::bench::BareMemfd;
use privmem_model::{KernelProfile, ModelHypervisor};

use super::util::{size_name, slot, timed, workload, GIB, MIB};
use super::{Ctx, Row, RowSpec, Side, Target};

fn program(size: u64, byte: u8) -> Vec<GuestOp> {
    vec![
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte,
            access: Access::Shared,
        },
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: byte,
            access: Access::Shared,
        },
        GuestOp::Halt,
    ]
}

/// True if every byte of `buf` is `byte` (word-wise, vectorisable).
fn all_equal(buf: &[u8], byte: u8) -> bool {
    let pat = u64::from_ne_bytes([byte; 8]);
    let mut chunks = buf.chunks_exact(64);
    for c in chunks.by_ref() {
        let mut diff = 0u64;
        for w in c.chunks_exact(8) {
            diff |= u64::from_ne_bytes(w.try_into().expect("8 bytes")) ^ pat;
        }
        if diff != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == byte)
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let size = if ctx.quick { 64 * MIB } else { 256 * MIB };
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V6_18));
    let w = workload(
        VmType::Default,
        false,
        vec![slot(0, size)],
        vec![program(size, 1)],
    );
    let m = Machine::new(hv, &w).context("model setup")?;
    let (engine, mut vcpus, policy) = m.into_parts();
    let mut vcpu = vcpus.pop().context("one vCPU")?;
    let stop = AtomicBool::new(false);
    let memfd = BareMemfd::new(size)?;
    let mut map = memfd.map()?;
    let mut byte = 0u8;
    let gib = size as f64 / GIB as f64;
    let rounds = ctx.rounds();
    let s = ctx.alternate("access", rounds, |side| {
        byte = byte.wrapping_add(1).max(1);
        match side {
            Side::Baseline => {
                let buf = map.as_mut_slice();
                let (t, ok) = timed(|| {
                    buf.fill(byte);
                    all_equal(std::hint::black_box(&*buf), byte)
                });
                if !ok {
                    bail!("memset/compare mismatch");
                }
                Ok(t / gib)
            }
            Side::Privmem => {
                vcpu.load_program(&program(size, byte))?;
                let (t, st) = timed(|| run_vcpu_on(&mut vcpu, &engine, &policy, &stop));
                if st.state != RunState::Halted || st.checks.passed != 1 {
                    bail!("guest ended {:?}: {:?}", st.state, st.error);
                }
                Ok(t / gib)
            }
        }
    })?;
    Ok(vec![RowSpec {
        name: "access",
        unit: "s/GiB",
        target: Target::RatioAtMost(1.25),
        baseline_is: "memset + compare of a mapped memfd of the same size",
        note: Some(format!(
            "model, default VM: guest writes then checks {} (both sides warm)",
            size_name(size)
        )),
    }
    .row(&s)])
}
