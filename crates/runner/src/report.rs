//! The `privmem run --json` report.

use std::time::Duration;

use serde::Serialize;

use privmem_core::attrmap::Run;
use privmem_core::backend::{Hypervisor, Vm};
use privmem_core::contract::HvBackend;
use privmem_core::engine::Engine;

use crate::handle::{Checks, ExitCounts, RunState, VcpuError, VcpuState};
use crate::workload::Workload;

/// One vCPU in the report.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    /// Index.
    pub index: u32,
    /// halted, failed or stopped.
    pub state: RunState,
    /// Exit counters.
    pub exits: ExitCounts,
    /// Checks.
    pub checks: Checks,
    /// Sync tags.
    pub syncs: Vec<u64>,
    /// Why it stopped.
    pub error: Option<VcpuError>,
}

/// Conversion counters.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Conversions {
    /// Pages made private.
    pub to_private_pages: u64,
    /// Pages made shared.
    pub to_shared_pages: u64,
    /// Explicit conversions.
    pub explicit: u64,
    /// Implicit conversions.
    pub implicit: u64,
}

/// Discard counters.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Discarded {
    /// guest_memfd pages punched.
    pub guest_memfd: u64,
    /// Shared pages discarded.
    pub shared: u64,
}

/// One attribute range.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttrRange {
    /// Start, hex.
    pub gpa: String,
    /// Size, hex.
    pub size: String,
    /// Private?
    pub private: bool,
}

impl From<&Run> for AttrRange {
    fn from(r: &Run) -> Self {
        AttrRange {
            gpa: format!("{:#x}", r.range.start().raw()),
            size: format!("{:#x}", r.range.len()),
            private: r.private,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "kvm" or "model".
    pub backend: String,
    /// Why this backend (filled by the caller).
    pub backend_reason: String,
    /// VM type.
    pub vm_type: &'static str,
    /// How `map` reaches the host.
    pub hypercall_transport: &'static str,
    /// Every vCPU halted and every check passed.
    pub ok: bool,
    /// Per vCPU.
    pub vcpus: Vec<VcpuReport>,
    /// Conversions.
    pub conversions: Conversions,
    /// Discards.
    pub discarded_pages: Discarded,
    /// Final attribute map of guest_memfd-backed memory.
    pub attributes: Vec<AttrRange>,
    /// Wall time of the run.
    pub elapsed_ms: f64,
}

impl Report {
    /// Assembles the report from the engine and the final vCPU states.
    pub fn build<H: Hypervisor>(
        engine: &Engine<HvBackend<H>>,
        w: &Workload,
        states: Vec<VcpuState>,
        elapsed: Duration,
    ) -> Report {
        let s = engine.stats();
        let vcpus: Vec<VcpuReport> = states
            .into_iter()
            .map(|v| VcpuReport {
                index: v.index,
                state: v.state,
                exits: v.exits,
                checks: v.checks,
                syncs: v.syncs,
                error: v.error,
            })
            .collect();
        let ok = vcpus
            .iter()
            .all(|v| v.state == RunState::Halted && v.checks.failed == 0);
        Report {
            backend: engine.backend().hypervisor().name().to_string(),
            backend_reason: String::new(),
            vm_type: w.vm_type.name(),
            hypercall_transport: engine.backend().vm().hypercall_transport(),
            ok,
            vcpus,
            conversions: Conversions {
                to_private_pages: s.to_private_pages,
                to_shared_pages: s.to_shared_pages,
                explicit: s.explicit,
                implicit: s.implicit,
            },
            discarded_pages: Discarded {
                guest_memfd: s.discarded_gmem,
                shared: s.discarded_shared,
            },
            attributes: engine
                .gmem_attributes()
                .iter()
                .map(AttrRange::from)
                .collect(),
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
        }
    }

    /// Exit status per workload.md: 0 ok, 1 guest failed.
    pub fn exit_status(&self) -> i32 {
        if self.ok {
            0
        } else {
            1
        }
    }
}
