//! The `kvm/*` benchmarks: privmem on real private memory (a
//! `KVM_X86_SW_PROTECTED_VM` with guest_memfd, memory attributes and
//! `vmmcall` exits), each against the bare ioctls in the same run. They run
//! inside the rig (`rig/run -- privmem bench --json kvm/convert ...`); a
//! host without that VM type skips them visibly, naming what it lacks
//! ([`private_mem_or_skip`]).
//!
//! | bench | module |
//! |---|---|
//! | `kvm/convert` | [`convert`] |
//! | `kvm/setup` | [`setup`] |
//! | `kvm/prefault` (context, no target) | [`prefault`] |
//! | `kvm/exit` | `super::exit` ([`super::exit::run_private`]) on a sw-protected VM |

pub mod alone;
pub mod convert;
pub mod prefault;
pub mod setup;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use privmem_core::engine::{HypercallExit, MemoryFaultExit};
use privmem_tinyvmm::{Conversions, Verdict};

use super::{injected, median, Ctx, Side};

/// `/dev/kvm` with everything a sw-protected VM with private memory needs
/// (`privmem_tinyvmm::missing`), or `None` after recording a visible skip
/// for `what` naming what is missing. A missing /dev/kvm under
/// `REQUIRE_KVM=1`, and any miss under `REQUIRE_PRIVATE_MEM=1` (the rig),
/// are errors instead. `PRIVMEM_BENCH_INJECT=no-private-mem` hides the
/// capabilities.
///
/// # Errors
/// As above.
pub fn private_mem_or_skip(ctx: &mut Ctx, what: &str) -> anyhow::Result<Option<Kvm>> {
    let reason = if injected("no-kvm") {
        "/dev/kvm unavailable: hidden by PRIVMEM_BENCH_INJECT=no-kvm".to_string()
    } else {
        match Kvm::new() {
            Err(e) if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") => {
                anyhow::bail!("{what} needs /dev/kvm: {e} (and REQUIRE_KVM=1)")
            }
            Err(e) => format!("/dev/kvm unavailable: {e}"),
            Ok(_) if injected("no-private-mem") => {
                "no private memory: hidden by PRIVMEM_BENCH_INJECT=no-private-mem".to_string()
            }
            Ok(kvm) => match privmem_tinyvmm::missing(&kvm) {
                None => return Ok(Some(kvm)),
                Some(why) => why,
            },
        }
    };
    if std::env::var("REQUIRE_PRIVATE_MEM").as_deref() == Ok("1") {
        anyhow::bail!("{what} needs private memory: {reason} (and REQUIRE_PRIVATE_MEM=1)");
    }
    ctx.skip(what, reason);
    Ok(None)
}

/// A [`Conversions`] handler that times itself: the wall time spent inside
/// the handler's calls (the rest of a run is the exits themselves and the
/// exit loop), for the `context` figures that show where a ratio comes
/// from.
pub struct Timed<'a, C> {
    /// The handler.
    pub inner: &'a mut C,
    /// Time inside `hypercall` and `memory_fault`.
    pub spent: Duration,
    /// Calls made.
    pub calls: u64,
}

impl<'a, C: Conversions> Timed<'a, C> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut C) -> Timed<'a, C> {
        Timed {
            inner,
            spent: Duration::ZERO,
            calls: 0,
        }
    }
}

impl<C: Conversions> Conversions for Timed<'_, C> {
    fn hypercall(&mut self, exit: HypercallExit) -> i64 {
        let t = Instant::now();
        let r = self.inner.hypercall(exit);
        self.spent += t.elapsed();
        self.calls += 1;
        r
    }

    fn memory_fault(&mut self, exit: MemoryFaultExit, errno: i32) -> Verdict {
        let t = Instant::now();
        let r = self.inner.memory_fault(exit, errno);
        self.spent += t.elapsed();
        self.calls += 1;
        r
    }

    fn other_exit(&mut self) {
        self.inner.other_exit();
    }
}

/// Median µs per handler call over `rounds` runs of `run` (after one
/// warm-up): with an [`alone::NullHandler`], the engine's own work right
/// after each real exit.
///
/// # Errors
/// The first run that failed.
pub fn after_exit(
    rounds: usize,
    mut run: impl FnMut() -> anyhow::Result<Run>,
) -> anyhow::Result<f64> {
    run()?;
    let per_call = (0..rounds)
        .map(|_| run().map(|r| r.handler_secs * 1e6 / r.calls.max(1) as f64))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(median(&per_call))
}

/// One run of a guest: its wall time and the part spent in the handler.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Wall time of the run, seconds.
    pub secs: f64,
    /// Of which inside the conversion handler, seconds.
    pub handler_secs: f64,
    /// Handler calls.
    pub calls: u64,
}

/// The handlers' time per call, per side, over the rounds.
#[derive(Debug, Default)]
pub struct Split {
    base: Vec<f64>,
    privmem: Vec<f64>,
    outside: [Vec<f64>; 2],
}

impl Split {
    /// Records `run` of `side`.
    pub fn push(&mut self, side: Side, run: &Run) {
        let calls = run.calls.max(1) as f64;
        let per_call = run.handler_secs * 1e6 / calls;
        let outside = (run.secs - run.handler_secs) * 1e6 / calls;
        match side {
            Side::Baseline => self.base.push(per_call),
            Side::Privmem => self.privmem.push(per_call),
        }
        self.outside[usize::from(side == Side::Privmem)].push(outside);
    }

    /// The `context` figures: median µs per handler call on each side,
    /// their difference, and the rest of the run (exits, guest, loop) per
    /// call on each side.
    pub fn context(&self) -> BTreeMap<String, f64> {
        let (b, p) = (median(&self.base), median(&self.privmem));
        BTreeMap::from([
            ("baseline_handler_us_per_call".to_string(), b),
            ("privmem_handler_us_per_call".to_string(), p),
            ("handler_overhead_us_per_call".to_string(), p - b),
            (
                "baseline_outside_handler_us_per_call".to_string(),
                median(&self.outside[0]),
            ),
            (
                "privmem_outside_handler_us_per_call".to_string(),
                median(&self.outside[1]),
            ),
        ])
    }
}
