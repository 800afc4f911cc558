//! `kvm/prefault` (context, no target): the guest's time to the first touch
//! of freshly converted private pages, with privmem's pre-fault off and on.
//!
//! A sw-protected guest (`guest::first_touch`, in real mode with a 4 GiB
//! `ds`) converts a range that starts shared to private with real `vmmcall`
//! exits (`KVM_HC_MAP_GPA_RANGE`, 2 MiB requests), writes one dword to each
//! of its 4 KiB pages once, in address order, and converts it back to
//! shared (discarding the private pages, so every run's touches are first
//! touches again). privmem's engine answers every exit on both sides; the
//! sides differ only in `EngineConfig::prefault`:
//!
//! - baseline: `PrefaultPolicy::Off` (the default). Each first write takes
//!   a nested page fault that KVM resolves in the kernel: it allocates and
//!   zeroes the guest_memfd page and maps it.
//! - privmem: `PrefaultPolicy::ToPrivate`. After each conversion to private
//!   the engine calls `KVM_PRE_FAULT_MEMORY` on the vCPU over the range, so
//!   that work happens inside the conversion and the writes find the pages
//!   mapped.
//!
//! Pre-faulting moves work from the touch into the conversion, so the
//! benchmark reports both, per page of the range, as three context rows
//! (no target; [`Target::Context`]): `touch`, `convert` and `total` (the
//! two added). The engine is the same code on both sides, so there is
//! nothing to hold privmem to: the rows say what the option trades.
//!
//! What is timed: host-side, at the guest's port-I/O marks on
//! `ports::MARK` (`guest::phase`). `convert` is from the `START` mark's exit
//! to the `CONVERTED` mark's exit (the re-entry, the conversion's hypercall
//! exits and the engine's work, its pre-faults included); `touch` is from
//! the `CONVERTED` mark's exit to the `TOUCHED` mark's exit (the re-entry,
//! the write loop with its faults, and one port exit). The conversion back
//! to shared is not timed.
//!
//! The two sides are two VMs of the same shape, each with its own vCPU,
//! alternating round by round. A host whose VM lacks
//! `KVM_CAP_PRE_FAULT_MEMORY` skips the benchmark visibly, naming it
//! (`PRIVMEM_BENCH_INJECT=no-prefault` fakes that).

use std::time::Instant;

use anyhow::{bail, Context};
use kvm_ioctls::Kvm;
use privmem_core::decide::DiscardPolicy;
use privmem_core::engine::{EngineConfig, PrefaultPolicy};
use privmem_core::{Gpa, GpaRange, PAGE_SIZE};
use privmem_tinyvmm::guest::{self, phase, ports};
use privmem_tinyvmm::{Ended, Flow, PrivmemHandler, TinyVcpu, TinyVmm, VmmConfig};

use super::super::util::{size_name, MIB};
use super::super::{injected, median, Ctx, Row, RowSpec, Samples, Side, Target};

/// Where the converted range starts (above the guest's code page).
const BASE: u64 = 2 * MIB;
/// The size of each `MAP_GPA_RANGE` request.
const REQ: u64 = 2 * MIB;
/// The benchmark's name.
const NAME: &str = "kvm/prefault";

/// The two phases of one run, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Phases {
    /// Converting the range to private (pre-faults included, if any).
    convert: f64,
    /// Writing each page of it once.
    touch: f64,
}

/// When the host saw each of the guest's marks (`guest::phase`), which
/// must come in order, each once.
#[derive(Debug, Default)]
struct Marks(Vec<Instant>);

impl Marks {
    /// Records mark `phase` seen at `at`.
    ///
    /// # Errors
    /// A mark out of order, repeated or unknown.
    fn record(&mut self, phase: u8, at: Instant) -> Result<(), String> {
        let due = [phase::START, phase::CONVERTED, phase::TOUCHED];
        match due.get(self.0.len()) {
            Some(&want) if want == phase => {
                self.0.push(at);
                Ok(())
            }
            Some(want) => Err(format!("mark {phase} where mark {want} was due")),
            None => Err(format!("mark {phase} after the last one")),
        }
    }

    /// The phases, once all three marks came.
    fn phases(&self) -> Option<Phases> {
        match self.0[..] {
            [start, converted, touched] => Some(Phases {
                convert: converted.duration_since(start).as_secs_f64(),
                touch: touched.duration_since(converted).as_secs_f64(),
            }),
            _ => None,
        }
    }
}

/// One run: its phases and the engine's pre-faults during it.
#[derive(Clone, Copy, Debug)]
struct RunFigures {
    phases: Phases,
    /// `KVM_PRE_FAULT_MEMORY` calls the engine made.
    prefault_calls: u64,
    /// Of which failed (the engine ignores them).
    prefault_errors: u64,
}

/// One side: a sw-protected VM whose engine pre-faults per `policy`, its
/// vCPU and privmem's handler for it.
struct Vm {
    vmm: TinyVmm,
    vcpu: TinyVcpu,
    handler: PrivmemHandler,
    range: GpaRange,
}

impl Vm {
    /// A VM with `size` bytes above [`BASE`], all shared, discarding.
    fn new(kvm: &Kvm, size: u64, policy: PrefaultPolicy) -> anyhow::Result<Vm> {
        let engine = EngineConfig {
            discard: DiscardPolicy::Discard,
            prefault: policy,
            ..EngineConfig::default()
        };
        let mem = BASE + size;
        let vmm = TinyVmm::new(kvm, VmmConfig { mem, engine })
            .with_context(|| format!("setting up the sw-protected VM ({policy:?})"))?;
        let vcpu = vmm.create_vcpu()?;
        let handler = vmm.privmem_handler(&vcpu)?;
        let range = GpaRange::new(Gpa(BASE), size)?;
        Ok(Vm {
            vmm,
            vcpu,
            handler,
            range,
        })
    }

    /// Whether this VM's engine can pre-fault (`KVM_CAP_PRE_FAULT_MEMORY`).
    fn can_prefault(&self) -> bool {
        self.vmm.engine().support().pre_fault_memory
    }

    /// The engine's (pre-fault calls, failed ones) so far.
    fn prefault_stats(&self) -> (u64, u64) {
        let s = self.vmm.engine().stats();
        (s.prefault_calls, s.prefault_errors)
    }

    /// Runs `code` (`guest::first_touch`) once; checks that it halted after
    /// its three marks and left the range shared.
    fn run(&mut self, code: &[u8]) -> anyhow::Result<RunFigures> {
        let (calls, errors) = self.prefault_stats();
        self.vcpu.start_flat(&self.vmm, code)?;
        let mut marks = Marks::default();
        let ended = self.vcpu.run(&mut self.handler, |port, d| match port {
            ports::MARK => marks.record(d[0], Instant::now()).map(|()| Flow::Continue),
            ports::RET => Err(format!("a conversion failed: {}", d[0] as i8)),
            other => Err(format!("unexpected port {other:#x}")),
        })?;
        let Some(phases) = marks.phases().filter(|_| ended == Ended::Halted) else {
            bail!(
                "the guest ended {ended:?} after {} of 3 marks (expected a halt after 3)",
                marks.0.len()
            );
        };
        let map = self.vmm.engine().attr_map().runs(self.range);
        if map.iter().any(|r| r.private) {
            bail!("privmem's map is not all shared after the guest's conversion back");
        }
        let (calls_now, errors_now) = self.prefault_stats();
        Ok(RunFigures {
            phases,
            prefault_calls: calls_now - calls,
            prefault_errors: errors_now - errors,
        })
    }
}

/// The figures measured beside the one `Ctx::alternate_with` collects
/// (the touch): each side's conversion and total per page, and the
/// pre-faults.
#[derive(Debug, Default)]
struct Beside {
    convert: Samples,
    total: Samples,
    prefault_calls: Vec<f64>,
    prefault_errors: Vec<f64>,
}

impl Beside {
    /// Records `side`'s measured run over `pages` pages.
    fn push(&mut self, side: Side, run: &RunFigures, pages: f64) {
        let us = |secs: f64| secs * 1e6 / pages;
        let p = run.phases;
        for (s, v) in [
            (&mut self.convert, us(p.convert)),
            (&mut self.total, us(p.convert + p.touch)),
        ] {
            match side {
                Side::Baseline => s.base.push(v),
                Side::Privmem => s.privmem.push(v),
            }
        }
        if side == Side::Privmem {
            self.prefault_calls.push(run.prefault_calls as f64);
            self.prefault_errors.push(run.prefault_errors as f64);
        }
    }
}

/// Checks that only the privmem side pre-faulted.
fn check_prefaults(side: Side, run: &RunFigures) -> anyhow::Result<()> {
    match side {
        Side::Baseline if run.prefault_calls != 0 => bail!(
            "the baseline (PrefaultPolicy::Off) made {} KVM_PRE_FAULT_MEMORY calls",
            run.prefault_calls
        ),
        Side::Privmem if run.prefault_calls == 0 => {
            bail!("the engine (PrefaultPolicy::ToPrivate) made no KVM_PRE_FAULT_MEMORY call")
        }
        _ => Ok(()),
    }
}

/// Why this host cannot run the benchmark on `vm`, if it cannot.
fn no_prefault(vm: &Vm) -> Option<String> {
    if injected("no-prefault") {
        Some("no pre-fault: hidden by PRIVMEM_BENCH_INJECT=no-prefault".to_string())
    } else if !vm.can_prefault() {
        Some("KVM_CAP_PRE_FAULT_MEMORY is 0 on the sw-protected VM: the engine cannot pre-fault, so there is nothing to compare".to_string())
    } else {
        None
    }
}

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let Some(kvm) = super::private_mem_or_skip(ctx, NAME)? else {
        return Ok(Vec::new());
    };
    let size = if ctx.quick { 16 * MIB } else { 64 * MIB };
    let mut on = Vm::new(&kvm, size, PrefaultPolicy::ToPrivate)?;
    if let Some(why) = no_prefault(&on) {
        ctx.skip(NAME, why);
        return Ok(Vec::new());
    }
    let mut off = Vm::new(&kvm, size, PrefaultPolicy::Off)?;
    let code = guest::first_touch(BASE, size, REQ)?;
    let pages = (size / PAGE_SIZE) as f64;
    let (touch, runs) = ctx.alternate_with(NAME, ctx.rounds(), |side| {
        let vm = match side {
            Side::Baseline => &mut off,
            Side::Privmem => &mut on,
        };
        let run = vm.run(&code)?;
        check_prefaults(side, &run)?;
        Ok((run.phases.touch * 1e6 / pages, run))
    })?;
    let mut beside = Beside::default();
    runs.iter()
        .for_each(|(side, run)| beside.push(*side, run, pages));
    Ok(rows(ctx.quick, size, &touch, &beside))
}

/// The three context rows: touch, convert, total.
fn rows(quick: bool, size: u64, touch: &Samples, beside: &Beside) -> Vec<Row> {
    let pages = size / PAGE_SIZE;
    let setup = format!(
        "real KVM, sw-protected VM: the guest converts {} (shared) to private in {} MAP_GPA_RANGE requests ({} vmmcall exits), then writes one dword to each of its {pages} pages once; privmem = the same engine with PrefaultPolicy::ToPrivate (KVM_PRE_FAULT_MEMORY on the vCPU after each conversion to private); per page of the range, timed host-side between the guest's port-I/O marks{}",
        size_name(size),
        size_name(REQ),
        size / REQ,
        if quick { "; --quick: 16 MiB instead of 64 MiB" } else { "" }
    );
    let what = [
        (touch, "touch", "the write loop: from the mark before it to the mark after it (one port exit and re-entry included)"),
        (&beside.convert, "convert", "the conversion to private: from the mark before the first request to the mark after the last (the exits, the engine, its pre-faults)"),
        (&beside.total, "total", "convert + touch: the time from the first request until every page was written once"),
    ];
    let mut out = Vec::new();
    for (s, variant, timed) in what {
        let name = format!("{NAME}/{variant}");
        // The setup once, on the first row; the others point at it.
        let note = if out.is_empty() {
            format!("{timed}; {setup}")
        } else {
            format!("{timed}; setup as {NAME}/touch")
        };
        let mut row = RowSpec {
            name: &name,
            unit: "us/page",
            target: Target::Context,
            baseline_is: "privmem's engine with PrefaultPolicy::Off (the default): each first write faults its page in (NPF, guest_memfd allocation, zeroing, mapping)",
            note: Some(note),
        }
        .row(s);
        row.context.insert("pages_per_run".into(), pages as f64);
        row.context.insert(
            "prefault_calls_per_run".into(),
            median(&beside.prefault_calls),
        );
        row.context.insert(
            "prefault_errors_per_run".into(),
            median(&beside.prefault_errors),
        );
        out.push(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn marks_give_the_phases_only_in_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut m = Marks::default();
        m.record(phase::START, at(0)).unwrap();
        assert_eq!(m.phases(), None);
        m.record(phase::CONVERTED, at(30)).unwrap();
        m.record(phase::TOUCHED, at(100)).unwrap();
        let p = m.phases().unwrap();
        assert!((p.convert - 0.030).abs() < 1e-9 && (p.touch - 0.070).abs() < 1e-9);
        assert!(m.record(phase::TOUCHED, at(101)).is_err());
        let mut m = Marks::default();
        assert!(m.record(phase::CONVERTED, at(0)).is_err());
        m.record(phase::START, at(0)).unwrap();
        assert!(m.record(phase::TOUCHED, at(1)).is_err());
    }

    fn run(convert: f64, touch: f64, prefault_calls: u64) -> RunFigures {
        RunFigures {
            phases: Phases { convert, touch },
            prefault_calls,
            prefault_errors: 0,
        }
    }

    #[test]
    fn beside_keeps_rounds_paired() {
        let mut b = Beside::default();
        // Ctx::alternate_with's measured order: round 1 B, P; round 2 P, B.
        b.push(Side::Baseline, &run(1.0, 4.0, 0), 1e6);
        b.push(Side::Privmem, &run(3.0, 1.0, 32), 1e6);
        b.push(Side::Privmem, &run(3.5, 1.0, 32), 1e6);
        b.push(Side::Baseline, &run(1.0, 5.0, 0), 1e6);
        assert_eq!(b.convert.base, [1.0, 1.0]);
        assert_eq!(b.convert.privmem, [3.0, 3.5]);
        assert_eq!(b.total.base, [5.0, 6.0]);
        assert_eq!(b.total.privmem, [4.0, 4.5]);
        assert_eq!(b.prefault_calls, [32.0, 32.0]);
    }

    #[test]
    fn only_the_privmem_side_may_prefault_and_it_must() {
        assert!(check_prefaults(Side::Baseline, &run(1.0, 1.0, 0)).is_ok());
        assert!(check_prefaults(Side::Baseline, &run(1.0, 1.0, 1)).is_err());
        assert!(check_prefaults(Side::Privmem, &run(1.0, 1.0, 32)).is_ok());
        assert!(check_prefaults(Side::Privmem, &run(1.0, 1.0, 0)).is_err());
    }

    #[test]
    fn the_rows_are_context_rows_per_page() {
        let s = Samples {
            base: vec![10.0, 12.0],
            privmem: vec![1.0, 1.2],
        };
        let b = Beside {
            convert: s.clone(),
            total: s.clone(),
            prefault_calls: vec![8.0],
            prefault_errors: vec![0.0],
        };
        let rows = rows(true, 16 * MIB, &s, &b);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kvm/prefault/touch",
                "kvm/prefault/convert",
                "kvm/prefault/total"
            ]
        );
        for r in &rows {
            assert_eq!((r.met, r.worse_than_baseline), (None, None));
            assert_eq!(r.unit, "us/page");
            assert_eq!(r.context["pages_per_run"], 4096.0);
            assert_eq!(r.context["prefault_calls_per_run"], 8.0);
        }
        assert!(rows[0].note.as_deref().unwrap().contains("--quick"));
        assert!(rows[2].note.as_deref().unwrap().contains("setup as"));
    }
}
