//! `scale`: setup time and RSS of 1 GiB, 64 GiB and 1 TiB guests (sparse
//! guest_memfd).
//!
//! - Model: `Machine::new` of a `sw-protected` VM (one guest_memfd slot,
//!   initially private, its shared memfd, one vCPU). Baseline: the same
//!   setup at 1 GiB, measured in the same rounds; target: 64 GiB and 1 TiB
//!   within 2x of it, in time and in memory. The memory figure is the
//!   growth of `RssAnon` + `RssShmem` around one setup in a fresh privmem
//!   process ([`rss_probe_main`]), not this process's RSS, which holds
//!   whatever earlier benchmarks left.
//! - KVM: privmem's setup of a `default` VM with one `MMAP|INIT_SHARED`
//!   guest_memfd slot of that size (`Machine::new`: capability checks,
//!   `KVM_CREATE_VM`, `KVM_ENABLE_CAP`, `KVM_CREATE_GUEST_MEMFD`, the
//!   memslot, the engine; no vCPU) against the kernel's own ioctls for the
//!   same setup timed alone (`KVM_CREATE_VM`, `KVM_CREATE_GUEST_MEMFD`, and
//!   `KVM_SET_USER_MEMORY_REGION2`, plus the same gmem mmap privmem passes
//!   as `userspace_addr` on hosts that need it). Binding a slot is linear in
//!   its size in the kernel, so the figure at 1 TiB is mostly the kernel's.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use privmem_baseline::{bare_gmem_vm, bare_memfd_vm, thread_heap_bytes, DevKvm};
use privmem_core::{GuestOp, Hypervisor, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::runtime::Machine;

use super::util::{own_rss_kib, rss_kib, size_name, slot, timed, workload, GIB, TIB};
use super::{median, Ctx, Row, RowSpec, Samples, Side, Target};

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = model(ctx)?;
    rows.extend(kvm(ctx)?);
    Ok(rows)
}

struct SetupFigure {
    ms: f64,
}

/// Model setups per sample: one takes ~10 µs, too short to time alone.
const MODEL_REPS: usize = 32;

fn model_workload(size: u64) -> privmem_runner::workload::Workload {
    workload(
        VmType::SwProtected,
        true,
        vec![slot(0, size)],
        vec![vec![GuestOp::Halt]],
    )
}

fn model_setup(hv: &Arc<ModelHypervisor>, size: u64) -> anyhow::Result<SetupFigure> {
    let w = model_workload(size);
    let mut total = 0.0;
    for _ in 0..MODEL_REPS {
        let (t, m) = timed(|| Machine::new(hv.clone(), &w));
        let m = m.with_context(|| format!("model setup of {}", size_name(size)))?;
        total += t;
        drop(m);
    }
    Ok(SetupFigure {
        ms: total * 1e3 / MODEL_REPS as f64,
    })
}

/// Model setups an RSS probe keeps alive at once: the figures are per
/// setup, and one setup alone now fits in heap pages the process already
/// has (its growth read 0 KiB on both sides once a striped map shrank to
/// 6 KiB, and 0 / 0 is no ratio).
const PROBE_SETUPS: u32 = 16;

/// What one model setup of a given size added to a fresh process (the
/// mean of [`PROBE_SETUPS`] kept alive together).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct RssProbe {
    /// Growth of `RssAnon` + `RssShmem` around the setup, in KiB.
    pub rss_growth_kib: f64,
    /// Heap bytes the setup left allocated.
    pub heap_bytes: f64,
}

/// `privmem bench --rss-probe BYTES`: [`PROBE_SETUPS`] model setups of
/// `size` bytes in this fresh process, kept alive together; prints their
/// [`RssProbe`] (per setup) as JSON. Exit status 1 if a setup fails.
pub fn rss_probe_main(size: u64) -> i32 {
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let w = model_workload(size);
    let (rss0, heap0) = (own_rss_kib(), thread_heap_bytes());
    let mut machines = Vec::with_capacity(PROBE_SETUPS as usize);
    for _ in 0..PROBE_SETUPS {
        match Machine::new(hv.clone(), &w) {
            Ok(m) => machines.push(m),
            Err(e) => {
                eprintln!(
                    "privmem bench --rss-probe: model setup of {}: {e}",
                    size_name(size)
                );
                return 1;
            }
        }
    }
    let n = f64::from(PROBE_SETUPS);
    let probe = RssProbe {
        rss_growth_kib: own_rss_kib().saturating_sub(rss0) as f64 / n,
        heap_bytes: (thread_heap_bytes() - heap0) as f64 / n,
    };
    drop(machines);
    match serde_json::to_string(&probe) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("privmem bench --rss-probe: {e}");
            1
        }
    }
}

/// Runs the probe in a fresh copy of this program: the figure is the
/// setup's own memory, not what earlier benchmarks left in this process.
fn rss_probe(size: u64) -> anyhow::Result<RssProbe> {
    let exe = std::env::current_exe().context("finding privmem's own executable")?;
    let out = std::process::Command::new(&exe)
        .args(["bench", "--rss-probe", &size.to_string()])
        .output()
        .with_context(|| format!("running {} bench --rss-probe", exe.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "rss probe of {} failed ({}): {}",
            size_name(size),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the rss probe's output")
}

fn model(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let sizes = [GIB, 64 * GIB, TIB];
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let rounds = ctx.rounds();
    let mut figs: [Vec<SetupFigure>; 3] = Default::default();
    let mut probes: [Vec<RssProbe>; 3] = Default::default();
    ctx.status("scale/model: warm-up");
    for &s in &sizes {
        model_setup(&hv, s)?;
    }
    for r in 0..rounds {
        ctx.status(&format!("scale/model: round {}/{rounds}", r + 1));
        for i in 0..3 {
            let k = (r + i) % 3;
            figs[k].push(model_setup(&hv, sizes[k])?);
            probes[k].push(rss_probe(sizes[k])?);
        }
    }
    let col = |k: usize| figs[k].iter().map(|f| f.ms).collect::<Vec<f64>>();
    let rss = |k: usize| {
        probes[k]
            .iter()
            .map(|p| p.rss_growth_kib)
            .collect::<Vec<f64>>()
    };
    let heap = |k: usize| median(&probes[k].iter().map(|p| p.heap_bytes).collect::<Vec<f64>>());
    let mut rows = Vec::new();
    for (k, &size) in sizes.iter().enumerate().skip(1) {
        let name = size_name(size);
        let t = Samples {
            base: col(0),
            privmem: col(k),
        };
        rows.push(
            RowSpec {
                name: &format!("scale/model-setup/{name}"),
                unit: "ms",
                target: Target::RatioAtMost(2.0),
                baseline_is: "the same model setup at 1 GiB",
                note: Some(
                    "model sw-protected VM: guest_memfd + shared memfd + slot + initial private + 1 vCPU"
                        .into(),
                ),
            }
            .row(&t),
        );
        let s = Samples {
            base: rss(0),
            privmem: rss(k),
        };
        let mut row = RowSpec {
            name: &format!("scale/model-rss/{name}"),
            unit: "KiB",
            target: Target::RatioAtMost(2.0),
            baseline_is: "the same setup at 1 GiB, measured the same way",
            note: Some(
                "RssAnon + RssShmem growth per model setup, 16 kept alive in a fresh privmem \
                 process (bench --rss-probe), so earlier benchmarks' memory does not count"
                    .into(),
            ),
        }
        .row(&s);
        row.context = BTreeMap::from([
            ("baseline_heap_bytes".to_string(), heap(0)),
            ("privmem_heap_bytes".to_string(), heap(k)),
        ]);
        rows.push(row);
    }
    Ok(rows)
}

fn kvm_setup_note(name: &str, gmem: bool, map_hva: bool) -> String {
    match (gmem, map_hva) {
        (true, false) => format!("default VM, one MMAP|INIT_SHARED guest_memfd slot of {name}, no vCPU"),
        (true, true) => format!(
            "default VM, one MMAP|INIT_SHARED guest_memfd slot of {name}, no vCPU; both sides mmap the gmem for userspace_addr (PVM)"
        ),
        (false, _) => format!(
            "default VM, one memfd-backed slot of {name}, no vCPU (host KVM has no guest_memfd: KVM_CAP_GUEST_MEMFD=0)"
        ),
    }
}

fn kvm(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let sizes: &[u64] = if ctx.quick {
        &[GIB, 64 * GIB]
    } else {
        &[GIB, 64 * GIB, TIB]
    };
    let Some(hv) = ctx.kvm_or_skip("scale/kvm-setup")? else {
        return Ok(Vec::new());
    };
    let hv = Arc::new(hv);
    let dev = DevKvm::open()?;
    let map_hva = hv.quirks().gmem_hva;
    // Without guest_memfd on the host privmem backs the slot with a memfd
    // (runtime::build_slot); the baseline then makes the same calls.
    let gmem = hv.has_shared_gmem();
    let mut rows = Vec::new();
    for &size in sizes {
        let name = size_name(size);
        let label = format!("scale/kvm-setup/{name}");
        let w = workload(VmType::Default, false, vec![slot(0, size)], Vec::new());
        // Twice the usual rounds in full runs: both sides' samples have
        // heavy tails here (the kernel zeroes and frees the memslot's
        // metadata, 2 GiB at 1 TiB with shadow paging), so the median of the
        // per-round ratios needs more of them to settle.
        let rounds = if size >= TIB && ctx.quick {
            3
        } else if ctx.quick {
            ctx.rounds()
        } else {
            2 * ctx.rounds() + 1
        };
        // Setups per sample, so that a sample lasts at least ~10 ms.
        let reps = (GIB * 16 / size).max(1) as usize;
        let mut growth = Vec::new();
        let s = ctx.alternate(&label, rounds, |side| {
            let mut total = 0.0;
            for _ in 0..reps {
                total += match side {
                    Side::Baseline => {
                        let (t, vm) = timed(|| {
                            if gmem {
                                bare_gmem_vm(&dev, size, map_hva)
                            } else {
                                bare_memfd_vm(&dev, size)
                            }
                        });
                        drop(vm?);
                        t
                    }
                    Side::Privmem => {
                        let before = rss_kib();
                        let (t, m) = timed(|| Machine::new(hv.clone(), &w));
                        let m = m.context("KVM setup")?;
                        growth.push(rss_kib().saturating_sub(before) as f64);
                        drop(m);
                        t
                    }
                };
            }
            Ok(total * 1e3 / reps as f64)
        })?;
        let mut row = RowSpec {
            name: &label,
            unit: "ms",
            target: Target::RatioAtMost(1.1),
            baseline_is: if gmem {
                "KVM_CREATE_VM + KVM_CREATE_GUEST_MEMFD + KVM_SET_USER_MEMORY_REGION2 alone"
            } else {
                "KVM_CREATE_VM + memfd_create + ftruncate + mmap + KVM_SET_USER_MEMORY_REGION2 alone"
            },
            note: Some(kvm_setup_note(&name, gmem, map_hva)),
        }
        .row(&s);
        row.context = BTreeMap::from([("privmem_rss_growth_kib".to_string(), median(&growth))]);
        rows.push(row);
    }
    Ok(rows)
}
