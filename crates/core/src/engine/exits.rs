//! The per-exit calls a VMM's own vCPU loop makes: one for
//! `KVM_EXIT_HYPERCALL` (the value for `hypercall.ret`), one for
//! `KVM_EXIT_MEMORY_FAULT` (resume, stop and why, or a poisoned page).
//! Each takes the vCPU's [`RepeatGuard`] (one per vCPU, from
//! [`Engine::repeat_guard`]); everything else is the engine's.

use std::fmt;

use super::{ConvertError, ConvertTo, Engine, Origin, Outcome, PrefaultPolicy, Stat};
use crate::abi::{EFAULT, EHWPOISON};
use crate::contract::{ConversionBackend, PreFault};
use crate::decide::RepeatGuard;
use crate::decide::{decide_fault, decide_hypercall, FaultAction, FaultStop, HypercallAction};
use crate::exit::{hc_ret, DecodeError, FaultErrno, Hypercall, MapGpaRange, MemoryFault};
use crate::types::{Gpa, GpaRange, PAGE_SIZE};

/// The raw fields of a `KVM_EXIT_HYPERCALL` (`kvm_run.hypercall`), as
/// kvm-ioctls' `VcpuExit::Hypercall` gives them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HypercallExit {
    /// `hypercall.nr`.
    pub nr: u64,
    /// `hypercall.args`.
    pub args: [u64; 6],
}

/// The raw fields of a `KVM_EXIT_MEMORY_FAULT` (`kvm_run.memory_fault`),
/// as kvm-ioctls' `VcpuExit::MemoryFault` gives them. The errno of the
/// `KVM_RUN` that returned them goes beside it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemoryFaultExit {
    /// `memory_fault.flags` (`KVM_MEMORY_EXIT_FLAG_PRIVATE` or 0).
    pub flags: u64,
    /// `memory_fault.gpa`.
    pub gpa: u64,
    /// `memory_fault.size`.
    pub size: u64,
}

/// What a vCPU loop does after a memory-fault exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuAction {
    /// Re-enter the guest: the fault was resolved (converted).
    Resume,
    /// Stop the vCPU.
    Stop(StopReason),
    /// The guest touched a hardware-poisoned page (`EHWPOISON`): never
    /// converted. A VMM injects a machine check for `gpa`, or stops.
    Poisoned {
        /// The poisoned page's address as KVM reported it.
        gpa: Gpa,
        /// The whole fault.
        fault: MemoryFault,
    },
}

/// Why a memory-fault exit stops its vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `KVM_RUN` failed with an errno other than `EFAULT`/`EHWPOISON`: the
    /// `memory_fault` fields are stale, not a fault (api.rst).
    NotAMemoryFault {
        /// The errno.
        errno: i32,
    },
    /// The fault's fields are invalid (flags KVM does not define).
    BadExit(DecodeError),
    /// The same fault came `count` times in a row: converting did not
    /// resolve it (the repeat guard).
    Loop {
        /// The fault.
        fault: MemoryFault,
        /// How many times in a row.
        count: u32,
    },
    /// [`ImplicitPolicy::Deny`](crate::decide::ImplicitPolicy::Deny) refused
    /// the implicit conversion.
    Denied(MemoryFault),
    /// No conversion can resolve the fault: the page has no guest_memfd, is
    /// in no memslot, the VM has no private memory, or the range is invalid.
    Unresolvable {
        /// The fault.
        fault: MemoryFault,
        /// The engine's refusal.
        error: ConvertError,
    },
    /// The conversion failed in the kernel (or was rolled back); the map
    /// still equals the kernel's view.
    ConversionFailed {
        /// The fault.
        fault: MemoryFault,
        /// The engine's error.
        error: ConvertError,
    },
}

impl StopReason {
    /// The fault, for the reasons that have one.
    pub fn fault(&self) -> Option<&MemoryFault> {
        match self {
            StopReason::Loop { fault, .. }
            | StopReason::Denied(fault)
            | StopReason::Unresolvable { fault, .. }
            | StopReason::ConversionFailed { fault, .. } => Some(fault),
            StopReason::NotAMemoryFault { .. } | StopReason::BadExit(_) => None,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::NotAMemoryFault { errno } => write!(
                out,
                "KVM_RUN failed with errno {errno}: not a memory-fault exit"
            ),
            StopReason::BadExit(e) => write!(out, "invalid memory-fault exit: {e}"),
            StopReason::Loop { fault, count } => FaultStop::Loop {
                fault: *fault,
                count: *count,
            }
            .fmt(out),
            StopReason::Denied(f) => FaultStop::Denied(*f).fmt(out),
            StopReason::Unresolvable { fault, error } => write!(
                out,
                "fault at {} ({}) cannot be resolved: {error}",
                fault.gpa,
                if fault.private { "private" } else { "shared" }
            ),
            StopReason::ConversionFailed { fault, error } => {
                write!(out, "converting {} failed: {error}", fault.gpa)?;
                let mut cur = std::error::Error::source(error);
                while let Some(s) = cur {
                    write!(out, ": {s}")?;
                    cur = s.source();
                }
                Ok(())
            }
        }
    }
}

impl<B: ConversionBackend> Engine<B> {
    /// `KVM_EXIT_HYPERCALL` from its raw fields: answers the value to write
    /// to `hypercall.ret` before re-entering the guest. A valid
    /// `KVM_HC_MAP_GPA_RANGE` is converted (0, or -22 if refused or
    /// failed); a malformed one gets -22 (`-KVM_EINVAL`); any other
    /// hypercall number -1000 (`-KVM_ENOSYS`). `vcpu` is the vCPU that made
    /// the call, used to pre-fault per [`PrefaultPolicy`] (`None`: never).
    /// Resets the vCPU's repeat guard.
    pub fn handle_hypercall(
        &self,
        guard: &mut RepeatGuard,
        exit: HypercallExit,
        vcpu: Option<&mut dyn PreFault>,
    ) -> i64 {
        self.handle_decoded_hypercall(guard, &Hypercall::decode(exit.nr, exit.args), vcpu)
    }

    /// [`handle_hypercall`](Self::handle_hypercall) for an exit already
    /// decoded with [`Hypercall::decode`] (or `abi::decode_exit`).
    pub fn handle_decoded_hypercall(
        &self,
        guard: &mut RepeatGuard,
        h: &Hypercall,
        vcpu: Option<&mut dyn PreFault>,
    ) -> i64 {
        guard.reset();
        match decide_hypercall(h) {
            HypercallAction::Complete(ret) => ret,
            HypercallAction::Convert(m) => match self.map_gpa_range(&m, vcpu) {
                Ok(_) => hc_ret::OK,
                Err(_) => hc_ret::EINVAL,
            },
        }
    }

    /// Converts a `MAP_GPA_RANGE` request, then pre-faults the range on
    /// `vcpu` per the policy, still under the range lock (so no slot
    /// deletion in the range can run under the pre-fault).
    fn map_gpa_range(
        &self,
        m: &MapGpaRange,
        vcpu: Option<&mut dyn PreFault>,
    ) -> Result<Outcome, ConvertError> {
        let len = m.pages.saturating_mul(PAGE_SIZE);
        let to = ConvertTo::from_private(m.to_private);
        let result = self.map_and_prefault(m.gpa, len, to, vcpu);
        self.trace_outcome(m.gpa, len, to, Origin::Explicit, &result);
        result
    }

    /// [`map_gpa_range`](Self::map_gpa_range)'s transaction and pre-fault.
    fn map_and_prefault(
        &self,
        gpa: Gpa,
        len: u64,
        to: ConvertTo,
        vcpu: Option<&mut dyn PreFault>,
    ) -> Result<Outcome, ConvertError> {
        let range = super::validate(gpa, len, self.config.gpa_limit)?;
        let _guard = self.attrs.lock(range);
        let outcome = self.convert_locked(range, to, Origin::Explicit)?;
        let wanted = match self.config.prefault {
            PrefaultPolicy::Off => false,
            PrefaultPolicy::ToPrivate => to.is_private(),
            PrefaultPolicy::Every => true,
        };
        if let Some(v) = vcpu.filter(|_| wanted && self.support.pre_fault_memory) {
            self.prefault(v, range);
        }
        Ok(outcome)
    }

    /// QEMU's loop: call again while the kernel made progress and bytes
    /// are left; stop at the first error, which is ignored (the guest's own
    /// access faults the page in and reports it).
    fn prefault(&self, vcpu: &mut dyn PreFault, range: GpaRange) {
        let (mut gpa, mut size) = (range.start(), range.len());
        while size > 0 {
            let before = size;
            self.stats.add(Stat::PrefaultCalls, 1);
            if vcpu.pre_fault(&mut gpa, &mut size).is_err() {
                self.stats.add(Stat::PrefaultErrors, 1);
                return;
            }
            if size >= before {
                return;
            }
        }
    }

    /// `KVM_EXIT_MEMORY_FAULT` from its raw fields and the errno of the
    /// `KVM_RUN` that returned it (`EFAULT` or `EHWPOISON`; anything else
    /// is not a memory fault). Decodes strictly, then
    /// [`handle_fault`](Self::handle_fault).
    pub fn handle_memory_fault(
        &self,
        guard: &mut RepeatGuard,
        exit: MemoryFaultExit,
        errno: i32,
    ) -> VcpuAction {
        let errno = match errno {
            EFAULT => FaultErrno::Efault,
            EHWPOISON => FaultErrno::Ehwpoison,
            errno => return VcpuAction::Stop(StopReason::NotAMemoryFault { errno }),
        };
        match MemoryFault::decode(exit.flags, exit.gpa, exit.size, errno) {
            Ok(f) => self.handle_fault(guard, &f),
            Err(e) => VcpuAction::Stop(StopReason::BadExit(e)),
        }
    }

    /// A decoded memory fault: `EHWPOISON` is [`VcpuAction::Poisoned`]
    /// (never converted, never counted); then the repeat guard; then the
    /// configured [`FaultPolicy`](crate::decide::FaultPolicy): convert the
    /// faulting page(s) to the access's attribute and resume, or stop.
    pub fn handle_fault(&self, guard: &mut RepeatGuard, f: &MemoryFault) -> VcpuAction {
        match decide_fault(&self.config.faults, guard, f) {
            FaultAction::Stop(FaultStop::Hwpoison(f)) => VcpuAction::Poisoned {
                gpa: f.gpa,
                fault: f,
            },
            FaultAction::Stop(FaultStop::Loop { fault, count }) => {
                VcpuAction::Stop(StopReason::Loop { fault, count })
            }
            FaultAction::Stop(FaultStop::Denied(f)) => VcpuAction::Stop(StopReason::Denied(f)),
            FaultAction::Convert(f) => self.implicit(&f),
        }
    }

    fn implicit(&self, f: &MemoryFault) -> VcpuAction {
        let to = ConvertTo::from_private(f.private);
        match self.convert(
            f.gpa.page_base(),
            f.size.max(PAGE_SIZE),
            to,
            Origin::Implicit,
        ) {
            Ok(_) => VcpuAction::Resume,
            Err(error @ (ConvertError::Refused { .. } | ConvertError::Invalid { .. })) => {
                VcpuAction::Stop(StopReason::Unresolvable { fault: *f, error })
            }
            Err(error) => VcpuAction::Stop(StopReason::ConversionFailed { fault: *f, error }),
        }
    }
}
