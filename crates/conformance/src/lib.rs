//! privmem's conformance suite: the KVM selftest checklist of
//! `docs/selftests.md` (A1–A20, B1–B6, C1–C5, D1–D2, H1–H2, K1–K4, P1, V1) and the F
//! invariants (F26–F31), each case written once, generic over
//! [`privmem_core::Hypervisor`], and run on every backend (the model and
//! `/dev/kvm`).
//!
//! A case returns an [`Outcome`]: pass, fail with a reason, skip with a
//! reason that names the missing capability or VM type (for example
//! `KVM_CAP_VM_TYPES=0x1 lacks KVM_X86_SW_PROTECTED_VM`), partial when it
//! ran only some of its checks (naming the ones it skipped and why), or
//! emulated when its checks held but the backend answered some of them with
//! privmem's own emulation instead of the kernel ([`privmem_core::Emulation`]):
//! neither of the last two is a pass. A backend error is a failure with the
//! error in the reason, never a panic; a panic inside a case is caught and
//! reported as a failure too. Where kernels differ, a case expects the
//! behaviour of the backend's kernel ([`Kernel`]).
//!
//! [`differential`] holds the model-vs-KVM differential test: proptest
//! operation sequences run on both backends must give identical results.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cases;
mod ctx;
pub mod differential;
pub mod findings;
mod guest;
mod kernels;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use privmem_core::{EmulationCounts, Hypervisor};

pub use ctx::SysCaps;
pub use kernels::Kernel;

/// The result of one case on one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A check failed; the reason says which and how.
    Fail(String),
    /// The backend lacks what the case needs; the reason names the missing
    /// capability or VM type.
    Skip(String),
    /// Every check that ran held, but some were skipped: the reason names
    /// them and what is missing.
    Partial(String),
    /// Every check held, but the backend produced some of the results with
    /// privmem's own emulation, not the kernel: the reason says which.
    Emulated(String),
}

impl Outcome {
    /// `pass`, `fail`, `skip`, `partial` or `emulated` (the JSON `status`).
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skip(_) => "skip",
            Outcome::Partial(_) => "partial",
            Outcome::Emulated(_) => "emulated",
        }
    }

    /// The reason of anything but a pass (the JSON `reason`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(r) | Outcome::Skip(r) | Outcome::Partial(r) | Outcome::Emulated(r) => {
                Some(r)
            }
        }
    }

    /// The outcome once `used` (the emulations the case's backend used
    /// while it ran) is taken into account: a pass or partial that relied on
    /// an emulation is `Emulated`, a failure says so; skips stay.
    pub fn with_emulations(self, used: EmulationCounts) -> Outcome {
        if used.is_empty() {
            return self;
        }
        let why = format!("privmem emulation, not the kernel: {}", used.reasons());
        match self {
            Outcome::Pass => Outcome::Emulated(why),
            Outcome::Partial(r) => Outcome::Emulated(format!("{why}; and partial: {r}")),
            Outcome::Fail(r) => Outcome::Fail(format!("{r} ({why})")),
            o @ (Outcome::Skip(_) | Outcome::Emulated(_)) => o,
        }
    }
}

/// A case's id and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseInfo {
    /// The checklist id (`A1`, `C3`, `F28`, ...).
    pub id: &'static str,
    /// A short description.
    pub name: &'static str,
}

/// One case run on one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// The case.
    pub case: CaseInfo,
    /// The backend's name ("model" or "kvm").
    pub backend: &'static str,
    /// What happened.
    pub outcome: Outcome,
    /// Wall time the case took.
    pub elapsed: Duration,
}

/// Every case, in suite order.
pub fn case_list() -> Vec<CaseInfo> {
    cases::all::<privmem_model::ModelHypervisor>()
        .iter()
        .map(|c| c.info)
        .collect()
}

/// Runs every case whose id `filter` accepts on `hv`, calling `on_result`
/// as each one finishes, and returns all results.
pub fn run_suite<H: Hypervisor>(
    hv: &H,
    filter: &dyn Fn(&str) -> bool,
    mut on_result: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let cx = ctx::Ctx::new(hv);
    let mut results = Vec::new();
    for case in cases::all::<H>() {
        if !filter(case.info.id) {
            continue;
        }
        let start = Instant::now();
        let before = hv.emulations();
        let outcome = run_case(&cx, case.run).with_emulations(hv.emulations().since(before));
        let r = CaseResult {
            case: case.info,
            backend: hv.name(),
            outcome,
            elapsed: start.elapsed(),
        };
        on_result(&r);
        results.push(r);
    }
    results
}

/// Runs one case, turning a panic into a failure.
fn run_case<H: Hypervisor>(cx: &ctx::Ctx<'_, H>, run: cases::CaseFn<H>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run(cx))) {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(ctx::Stop::Fail(r))) => Outcome::Fail(r),
        Ok(Err(ctx::Stop::Skip(r))) => Outcome::Skip(r),
        Ok(Err(ctx::Stop::Partial(r))) => Outcome::Partial(r),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("non-string panic payload");
            Outcome::Fail(format!("panicked: {msg}"))
        }
    }
}

/// The kernel whose behaviour the suite expects of `hv` (for reports).
pub fn kernel_of<H: Hypervisor>(hv: &H) -> Kernel {
    Kernel::from_release(&hv.kernel_release())
}

/// The system-scope capabilities the suite probes on `hv` (for reports).
pub fn probe<H: Hypervisor>(hv: &H) -> SysCaps {
    SysCaps::probe(hv)
}

/// The model as this host's KVM backend should look: `profile`, the host's
/// `kvm_mmu_max_gfn()` width, whether its KVM has SMM (a second memslot
/// address space) and guest_memfd at all, and `quirks`: the KVM backend's
/// (`KvmHypervisor::quirks`, as its options set them: PVM and the opt-in
/// `gmem_hva` emulation). What the differential compares against KVM, and
/// what `--profile auto` runs.
pub fn host_model(
    profile: privmem_model::KernelProfile,
    quirks: privmem_core::Quirks,
) -> privmem_model::ModelHypervisor {
    privmem_model::ModelHypervisor::new(profile)
        .with_max_gpa_bits(privmem_model::host_max_gpa_bits())
        .with_quirks(quirks)
        .with_smm(privmem_kvm::caps::host_smm())
        .with_guest_memfd(privmem_kvm::caps::host_guest_memfd())
        .with_memory_attributes(privmem_kvm::caps::host_memory_attributes())
        .with_tdp(privmem_kvm::caps::host_pre_fault_memory())
}
