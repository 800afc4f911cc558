//! The kernel behaviours privmem found, as a table: each finding's id,
//! title, write-up (`docs/findings/`), reproducer (`rig/findings/`), the
//! result the rig measured on each kernel, and the conformance case
//! (K1–K4) that pins that result, so a kernel that changes it fails the
//! case.
//!
//! The cases pick their expectation by the kernel a backend behaves as
//! ([`kernel_release`], [`series_of`]).

use std::any::Any;

use privmem_core::Hypervisor;
use privmem_model::ModelHypervisor;

/// What the rig measured on one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// The kernel release (`6.12.118`, `7.3.4`).
    pub kernel: &'static str,
    /// The reproducer's verdict word on its `FINDING` line (`PRESENT`,
    /// `EEXIST`, `RETRY-UNTIL-SIGNAL`, ...).
    pub verdict: &'static str,
    /// What the kernel did, in one line.
    pub result: &'static str,
}

/// One finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    /// A short stable name (`mmio-stale-spte`); the write-up's file name.
    pub id: &'static str,
    /// The conformance case that pins it (`K1`).
    pub case: &'static str,
    /// One line.
    pub title: &'static str,
    /// The write-up, relative to the repository root.
    pub doc: &'static str,
    /// The standalone reproducer, relative to the repository root.
    pub reproducer: &'static str,
    /// The result on each rig kernel, oldest first.
    pub measured: &'static [Measured],
}

/// Every finding, in case order.
pub const FINDINGS: &[Finding] = &[
    Finding {
        id: "mmio-stale-spte",
        case: "K1",
        title: "a private gfn without a memslot, accessed once while shared, does not fault as \
                private (sw-protected VMs)",
        doc: "docs/findings/mmio-stale-spte.md",
        reproducer: "rig/findings/f1_mmio_stale_spte.c",
        measured: &[
            Measured {
                kernel: "6.12.118",
                verdict: "PRESENT",
                result: "never accessed: KVM_EXIT_MEMORY_FAULT flags=PRIVATE; accessed once: \
                         KVM_EXIT_MMIO while the MMIO SPTE is current, KVM_EXIT_MEMORY_FAULT \
                         flags=0 (shared) once a memslot changed",
            },
            Measured {
                kernel: "7.3.4",
                verdict: "PRESENT",
                result: "the same as 6.12.118",
            },
        ],
    },
    Finding {
        id: "gmem-bind-overlap",
        case: "K2",
        title: "a memslot over a guest_memfd range another memslot holds is EEXIST since \
                6.12.118 (EINVAL in 6.12.117)",
        doc: "docs/findings/gmem-bind-overlap.md",
        reproducer: "rig/findings/f2_gmem_bind_overlap.c",
        measured: &[
            Measured {
                kernel: "6.12.118",
                verdict: "EEXIST",
                result: "the same range EEXIST, half of it EEXIST; the refused slot does not \
                         exist (a disjoint range binds: 0)",
            },
            Measured {
                kernel: "7.3.4",
                verdict: "EEXIST",
                result: "the same as 6.12.118",
            },
        ],
    },
    Finding {
        id: "prefault-slot-delete",
        case: "K3",
        title: "KVM_PRE_FAULT_MEMORY over a memslot being deleted retries until a signal on \
                6.12 (EAGAIN or partial on 7.3)",
        doc: "docs/findings/prefault-slot-delete.md",
        reproducer: "rig/findings/f3_prefault_slot_delete.c",
        measured: &[
            Measured {
                kernel: "6.12.118",
                verdict: "RETRY-UNTIL-SIGNAL",
                result: "the pre-fault (256 MiB) spun until a signal 3.0 s after the deletion \
                         started, then returned 0 with 250101760 bytes left; the deletion \
                         waited 3.03 s for it",
            },
            Measured {
                kernel: "7.3.4",
                verdict: "PARTIAL",
                result: "the pre-fault returned 0 with 245317632 bytes left 0.001 s after the \
                         deletion started, no signal; the deletion took 0.008 s",
            },
        ],
    },
    Finding {
        id: "attr-shared-reserve",
        case: "K4",
        title: "a shared attribute set over a mostly shared range reserves memory for every \
                gfn on 6.12",
        doc: "docs/findings/attr-shared-reserve.md",
        reproducer: "rig/findings/f4_attr_shared_reserve.c",
        measured: &[
            Measured {
                kernel: "6.12.118",
                verdict: "PRESENT",
                result: "2^40 bytes with one private page: Slab +56244 KiB in 5.1 s and still \
                         reserving (~2.3 GiB in all: the OOM killer); 2^32 bytes: +9392 KiB, \
                         2.0 s",
            },
            Measured {
                kernel: "7.3.4",
                verdict: "ABSENT",
                result: "no reservation (Slab +16 KiB); the call still walks every gfn: 2^40 \
                         bytes took 40.3 s, with no signal check",
            },
        ],
    },
];

/// The release of the kernel `hv` behaves as: the model's profile name
/// (`6.12`), or the running kernel's `uname -r` for a backend that is the
/// kernel.
pub fn kernel_release<H: Hypervisor>(hv: &H) -> String {
    let any: &dyn Any = hv;
    if let Some(model) = any.downcast_ref::<ModelHypervisor>() {
        return model.profile().name().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// A kernel series the rig measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Debian's 6.12.118; releases up to 6.12 are held to it.
    V6_12,
    /// Debian's 7.3.4; releases from 7.3 on are held to it.
    V7_3,
}

impl Series {
    /// The release the rig measured.
    pub const fn measured(self) -> &'static str {
        match self {
            Series::V6_12 => "6.12.118",
            Series::V7_3 => "7.3.4",
        }
    }
}

/// The series whose measurement `release` is held to, or `None` for a
/// release between the two (6.18: never measured).
pub fn series_of(release: &str) -> Option<Series> {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) <= (6, 12) => Some(Series::V6_12),
        (Some(major), Some(minor)) if (major, minor) >= (7, 3) => Some(Series::V7_3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_the_measured_series() {
        assert_eq!(series_of("6.12.118"), Some(Series::V6_12));
        assert_eq!(series_of("6.12"), Some(Series::V6_12));
        assert_eq!(series_of("6.1.0-28-amd64"), Some(Series::V6_12));
        assert_eq!(series_of("7.3.4+bpo-amd64"), Some(Series::V7_3));
        assert_eq!(series_of("7.3"), Some(Series::V7_3));
        assert_eq!(series_of("8.0"), Some(Series::V7_3));
        assert_eq!(series_of("6.18.44-fc-v657"), None);
        assert_eq!(series_of("unknown"), None);
    }

    #[test]
    fn every_finding_has_its_case_its_write_up_and_both_kernels() {
        let cases = crate::case_list();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        for f in FINDINGS {
            assert!(
                cases.iter().any(|c| c.id == f.case),
                "{}: case {} is not in the suite",
                f.id,
                f.case
            );
            for path in [f.doc, f.reproducer] {
                assert!(
                    std::path::Path::new(root).join(path).is_file(),
                    "{}: {path} does not exist",
                    f.id
                );
            }
            let kernels: Vec<_> = f.measured.iter().map(|m| m.kernel).collect();
            assert_eq!(kernels, ["6.12.118", "7.3.4"], "{}", f.id);
        }
    }
}
