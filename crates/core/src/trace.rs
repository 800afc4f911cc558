//! Trace events: what a run did, in order, for a person or a script to
//! look at afterwards (`privmem run --trace`).
//!
//! The conversion engine and the vCPU loop report to an optional
//! [`TraceSink`] registered once on the engine
//! ([`Engine::set_trace_sink`](crate::engine::Engine::set_trace_sink)).
//! Without one, the only cost is one atomic load per conversion and one
//! branch per exit. The sink stamps the time; events carry only what
//! happened. A sink must be cheap: it is called on the vCPU threads, inside
//! a conversion (with its range locked, so conversions of overlapping
//! ranges reach the sink in the order they were committed).

use std::cell::Cell;

use crate::engine::Origin;
use crate::exit::FaultErrno;

/// Receives trace events, on whichever thread they happen.
pub trait TraceSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: TraceEvent);
}

/// What caused a conversion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cause {
    /// The guest's `KVM_HC_MAP_GPA_RANGE`.
    Hypercall,
    /// A `KVM_EXIT_MEMORY_FAULT` the policy converts.
    MemoryFault,
}

impl Cause {
    /// `hypercall` or `memory_fault`.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::Hypercall => "hypercall",
            Cause::MemoryFault => "memory_fault",
        }
    }
}

impl From<Origin> for Cause {
    fn from(o: Origin) -> Cause {
        match o {
            Origin::Explicit => Cause::Hypercall,
            Origin::Implicit => Cause::MemoryFault,
        }
    }
}

/// One thing that happened during a run. GPAs and lengths are bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TraceEvent {
    /// A vCPU exited with `KVM_HC_MAP_GPA_RANGE` (explicit conversion request).
    MapRequest {
        /// The vCPU.
        vcpu: u32,
        /// First byte (`args[0]` pages, in bytes).
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// The range is to become private (attribute bit 4).
        to_private: bool,
        /// Why the arguments are invalid (the guest gets -22 without any
        /// conversion), if they are.
        invalid: Option<String>,
    },
    /// A vCPU exited with `KVM_EXIT_MEMORY_FAULT`.
    MemoryFault {
        /// The vCPU.
        vcpu: u32,
        /// The faulting GPA.
        gpa: u64,
        /// The faulting size.
        size: u64,
        /// The access was private.
        private: bool,
        /// `EFAULT` or `EHWPOISON`.
        errno: FaultErrno,
    },
    /// A conversion was committed (kernel attributes set, discard done,
    /// attribute map updated). `pages == 0`: every page already had the
    /// attribute (a no-op).
    Converted {
        /// The vCPU whose exit asked for it, if it came from a vCPU loop.
        vcpu: Option<u32>,
        /// Which exit asked for it.
        cause: Cause,
        /// First byte.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// The range is now private (else shared).
        to_private: bool,
        /// Pages whose attribute changed.
        pages: u64,
        /// The side no longer in use was discarded.
        discard: bool,
    },
    /// A conversion was refused or failed; nothing was committed.
    ConvertFailed {
        /// The vCPU whose exit asked for it, if it came from a vCPU loop.
        vcpu: Option<u32>,
        /// Which exit asked for it.
        cause: Cause,
        /// First byte.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// The range was to become private (else shared).
        to_private: bool,
        /// The engine's error, with its sources.
        error: String,
    },
    /// A vCPU's loop ended (halted, failed or stopped; the report says how).
    VcpuDone {
        /// The vCPU.
        vcpu: u32,
    },
}

impl TraceEvent {
    /// The event's name in snake case (`map_request`, `memory_fault`,
    /// `converted`, `convert_failed`, `vcpu_done`).
    pub const fn name(&self) -> &'static str {
        match self {
            TraceEvent::MapRequest { .. } => "map_request",
            TraceEvent::MemoryFault { .. } => "memory_fault",
            TraceEvent::Converted { .. } => "converted",
            TraceEvent::ConvertFailed { .. } => "convert_failed",
            TraceEvent::VcpuDone { .. } => "vcpu_done",
        }
    }
}

thread_local! {
    static CURRENT_VCPU: Cell<Option<u32>> = const { Cell::new(None) };
}

/// While alive, conversions on this thread are attributed to one vCPU.
/// The vCPU loop enters one when tracing is on, so the engine's events name
/// the vCPU without the engine's API carrying it.
#[derive(Debug)]
pub struct VcpuScope {
    prev: Option<u32>,
}

impl VcpuScope {
    /// Attributes this thread's conversions to `vcpu` until dropped.
    pub fn enter(vcpu: u32) -> VcpuScope {
        VcpuScope {
            prev: CURRENT_VCPU.with(|c| c.replace(Some(vcpu))),
        }
    }
}

impl Drop for VcpuScope {
    fn drop(&mut self) {
        CURRENT_VCPU.with(|c| c.set(self.prev));
    }
}

/// The vCPU this thread's conversions are attributed to, if any.
pub fn current_vcpu() -> Option<u32> {
    CURRENT_VCPU.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_scope_nests_and_restores() {
        assert_eq!(current_vcpu(), None);
        {
            let _a = VcpuScope::enter(1);
            assert_eq!(current_vcpu(), Some(1));
            {
                let _b = VcpuScope::enter(2);
                assert_eq!(current_vcpu(), Some(2));
            }
            assert_eq!(current_vcpu(), Some(1));
        }
        assert_eq!(current_vcpu(), None);
    }
}
