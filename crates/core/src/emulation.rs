//! Where a backend answered with privmem's own emulation instead of the
//! kernel's code: a result obtained that way tests privmem, not the kernel,
//! so reports must say so (conformance status `emulated`).
//!
//! A backend counts every use in an [`EmulationLog`] shared by everything it
//! creates, and reports the totals through
//! [`crate::Hypervisor::emulations`]; a caller takes the difference of two
//! snapshots around the work it wants to classify.

use std::sync::atomic::{AtomicU64, Ordering};

/// One of privmem's stand-ins for kernel behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Emulation {
    /// A guest's `KVM_HC_MAP_GPA_RANGE` reached the host over privmem's
    /// port-I/O transport (where `vmcall`/`vmmcall` never exit, as under
    /// PVM), and the backend's own copy of the kernel's hypercall checks
    /// answered it: its errors, its exit and the `ret` the guest got.
    PortIoHypercall,
    /// A memslot request's NULL `userspace_addr` was replaced by the
    /// backend's own mapping of the guest_memfd (PVM hosts serve guest
    /// faults only through `userspace_addr`): the kernel's gmem-only path
    /// was never reached.
    GmemHva,
}

impl Emulation {
    /// Every emulation, in report order.
    pub const ALL: [Emulation; 2] = [Emulation::PortIoHypercall, Emulation::GmemHva];

    /// A short name (`port-io hypercall`, `gmem hva`).
    pub const fn name(self) -> &'static str {
        match self {
            Emulation::PortIoHypercall => "port-io hypercall",
            Emulation::GmemHva => "gmem hva",
        }
    }

    /// Why a result that used it is not the kernel's.
    pub const fn reason(self) -> &'static str {
        match self {
            Emulation::PortIoHypercall => {
                "KVM_HC_MAP_GPA_RANGE went over privmem's port-I/O transport and was answered \
                 by the KVM backend's emulation of the kernel's hypercall handling"
            }
            Emulation::GmemHva => {
                "privmem's KVM backend replaced a NULL userspace_addr with its own mmap of the \
                 guest_memfd, so the kernel's gmem-only path was not reached"
            }
        }
    }

    const fn index(self) -> usize {
        match self {
            Emulation::PortIoHypercall => 0,
            Emulation::GmemHva => 1,
        }
    }
}

/// How often each emulation was used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulationCounts([u64; 2]);

impl EmulationCounts {
    /// Uses of `e`.
    pub fn get(self, e: Emulation) -> u64 {
        self.0[e.index()]
    }

    /// The uses since `earlier` (a snapshot of the same log).
    pub fn since(self, earlier: EmulationCounts) -> EmulationCounts {
        EmulationCounts([
            self.0[0].saturating_sub(earlier.0[0]),
            self.0[1].saturating_sub(earlier.0[1]),
        ])
    }

    /// True if nothing was emulated.
    pub fn is_empty(self) -> bool {
        self.0 == [0; 2]
    }

    /// The emulations used at least once, in report order.
    pub fn used(self) -> Vec<Emulation> {
        Emulation::ALL
            .into_iter()
            .filter(|&e| self.get(e) > 0)
            .collect()
    }

    /// The reasons of [`used`](Self::used), `"; "`-joined (empty if none).
    pub fn reasons(self) -> String {
        self.used()
            .iter()
            .map(|e| e.reason())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The counters a backend shares between its hypervisor, VMs and vCPUs.
#[derive(Debug, Default)]
pub struct EmulationLog([AtomicU64; 2]);

impl EmulationLog {
    /// Counts one use of `e`.
    pub fn record(&self, e: Emulation) {
        self.0[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> EmulationCounts {
        EmulationCounts([
            self.0[0].load(Ordering::Relaxed),
            self.0[1].load(Ordering::Relaxed),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_only_new_uses() {
        let log = EmulationLog::default();
        log.record(Emulation::GmemHva);
        let before = log.snapshot();
        assert!(log.snapshot().since(before).is_empty());
        log.record(Emulation::PortIoHypercall);
        let d = log.snapshot().since(before);
        assert_eq!(d.used(), [Emulation::PortIoHypercall]);
        assert_eq!(d.reasons(), Emulation::PortIoHypercall.reason());
        assert_eq!(log.snapshot().get(Emulation::GmemHva), 1);
    }
}
