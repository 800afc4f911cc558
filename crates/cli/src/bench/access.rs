//! `access`: guest write+check throughput of the model backend, against
//! `memset` + compare over host memory of the same kind.
//!
//! privmem: a model `default` VM with one guest_memfd slot (a memfd, as the
//! model stores every page); the guest writes the whole slot with one byte,
//! then reads it back checking every byte (`run_vcpu`: two exits). The
//! byte changes every run. Baseline: `memset` of a mapped memfd of the same
//! size, then a compare of every byte against the same value. Both sides'
//! pages are already allocated (one unmeasured warm-up run each), so the
//! model moves them through its mapping of the memfd (resident pages).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use privmem_baseline::BareMemfd;
use privmem_core::{Access, Gpa, GuestOp, Vcpu, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{run_vcpu_on, Machine};

use super::util::{size_name, slot, timed, workload, GIB, MIB};
use super::{median, Ctx, Row, RowSpec, Side, Target};

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

/// A 64-byte aligned slice of `len` bytes inside `v` (kernel copies are 2x
/// slower to or from some page offsets on this host's CPUs).
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + 64, 0);
    let pad = v.as_ptr().align_offset(64).min(64);
    &mut v[pad..pad + len]
}

/// The syscall floor of a pread/pwrite data path: `pwrite` of the whole
/// file from a 1 MiB buffer, then `pread` of 64 KiB chunks each compared
/// with `==`. Seconds.
fn syscall_floor(file: &std::fs::File, size: u64, byte: u8) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let (mut wv, mut rv, mut pv) = (Vec::new(), Vec::new(), Vec::new());
    let wbuf = aligned(&mut wv, 1 << 20);
    wbuf.fill(byte);
    let rbuf = aligned(&mut rv, 64 << 10);
    let pattern = aligned(&mut pv, 64 << 10);
    pattern.fill(byte);
    let (t, r) = timed(|| -> anyhow::Result<bool> {
        for off in (0..size).step_by(wbuf.len()) {
            file.write_all_at(wbuf, off)?;
        }
        let mut ok = true;
        for off in (0..size).step_by(rbuf.len()) {
            file.read_exact_at(rbuf, off)?;
            ok &= *rbuf == *pattern;
        }
        Ok(ok)
    });
    if !r? {
        bail!("pwrite/pread floor read back other bytes");
    }
    Ok(t)
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let size = if ctx.quick { 64 * MIB } else { 256 * MIB };
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let w = workload(
        VmType::Default,
        false,
        vec![slot(0, size)],
        vec![program(size, 1)],
    );
    let m = Machine::new(hv, &w).context("model setup")?;
    let (engine, mut vcpus) = m.into_parts();
    let mut vcpu = vcpus.pop().context("one vCPU")?;
    let stop = AtomicBool::new(false);
    let map = BareMemfd::new(size)?.map()?;
    let floor_memfd = BareMemfd::new(size)?;
    let floor_file = floor_memfd.file()?;
    let mut floor = Vec::new();
    let mut byte = 0u8;
    let gib = size as f64 / GIB as f64;
    let rounds = ctx.rounds();
    let s = ctx.alternate("access", rounds, |side| {
        byte = byte.wrapping_add(1).max(1);
        match side {
            Side::Baseline => {
                let (t, ok) = timed(|| -> anyhow::Result<bool> {
                    map.memset(byte)?;
                    Ok(map.all_equal(std::hint::black_box(byte))?)
                });
                if !ok? {
                    bail!("memset/compare mismatch");
                }
                // Measured next to the baseline, every round.
                floor.push(syscall_floor(&floor_file, size, byte)? / gib);
                Ok(t / gib)
            }
            Side::Privmem => {
                vcpu.load_program(&program(size, byte))?;
                let (t, st) = timed(|| run_vcpu_on(&mut vcpu, &engine, &stop));
                if st.state != RunState::Halted || st.checks.passed != 1 {
                    bail!("guest ended {:?}: {:?}", st.state, st.error);
                }
                Ok(t / gib)
            }
        }
    })?;
    // The first floor sample is the warm-up's.
    let floor = &floor[1..];
    let floor_ratio = median(
        &floor
            .iter()
            .zip(&s.base)
            .map(|(f, b)| f / b)
            .collect::<Vec<f64>>(),
    );
    let mut row = RowSpec {
        name: "access",
        unit: "s/GiB",
        target: Target::RatioAtMost(1.25),
        baseline_is: "memset + compare of a mapped memfd of the same size",
        note: Some(format!(
            "model, default VM: guest writes then checks {} (both sides warm); context: the bare pwrite + pread/compare syscalls, the model's path before it mapped resident pages",
            size_name(size)
        )),
    }
    .row(&s);
    row.context = BTreeMap::from([
        ("syscall_floor_s_per_gib".to_string(), median(floor)),
        ("syscall_floor_ratio".to_string(), floor_ratio),
        (
            "privmem_vs_floor".to_string(),
            median(&s.privmem) / median(floor),
        ),
    ]);
    Ok(vec![row])
}
