//! The case table: every case once, instantiated per backend.

mod conversions;
mod exits;
mod findings;
mod findings_k3;
mod gmem;
mod gmem73;
mod gmem_guest;
mod hwpoison;
mod invariants;
mod memslot;
mod memslot73;
mod prefault;

use privmem_core::Hypervisor;

use crate::ctx::{Check, Ctx};
use crate::CaseInfo;

/// A case body.
pub(crate) type CaseFn<H> = fn(&Ctx<'_, H>) -> Check;

/// A case: its id, name and body for backend `H`.
pub(crate) struct Case<H: Hypervisor> {
    pub(crate) info: CaseInfo,
    pub(crate) run: CaseFn<H>,
}

macro_rules! cases {
    ($($id:literal, $name:literal => $f:path;)*) => {
        vec![$(Case { info: CaseInfo { id: $id, name: $name }, run: $f }),*]
    };
}

/// Every case, in checklist order.
pub(crate) fn all<H: Hypervisor>() -> Vec<Case<H>> {
    cases! {
        "A1", "guest_memfd flags" => gmem::a1_flags::<H>;
        "A2", "multiple guest_memfds" => gmem::a2_multiple::<H>;
        "A3", "invalid guest_memfd sizes" => gmem::a3_invalid_sizes::<H>;
        "A4", "read/write/pread/pwrite fail" => gmem::a4_file_read_write::<H>;
        "A5", "mmap of an INIT_SHARED guest_memfd" => gmem::a5_mmap_supported::<H>;
        "A6", "host fault beyond the file size" => gmem::a6_fault_overflow::<H>;
        "A7", "host fault on private guest_memfd" => gmem::a7_fault_private::<H>;
        "A8", "MAP_PRIVATE mmap refused" => gmem::a8_mmap_cow::<H>;
        "A9", "mmap without GUEST_MEMFD_FLAG_MMAP" => gmem::a9_mmap_not_supported::<H>;
        "A10", "fstat size and block size" => gmem::a10_file_size::<H>;
        "A11", "fallocate" => gmem::a11_fallocate::<H>;
        "A12", "invalid punch hole" => gmem::a12_invalid_punch_hole::<H>;
        "A13", "guest_memfd as a default VM's only memory" => gmem_guest::a13_guest::<H>;
        "A14", "guest_memfd flags per VM type (7.3)" => gmem73::a14_flags_per_vm_type::<H>;
        "A15", "mmap: PROT_EXEC, MAP_PRIVATE, past the end (7.3)" => gmem73::a15_mmap_checks::<H>;
        "A16", "fault_overflow at the exact byte (7.3)" => gmem73::a16_fault_overflow::<H>;
        "A17", "fault_private at the exact byte (7.3)" => gmem73::a17_fault_private::<H>;
        "A18", "invalid_binding: offset ALIGN_DOWN(INT64_MAX) (7.3)" => gmem73::a18_invalid_binding::<H>;
        "A19", "collapse: MADV_COLLAPSE refused (7.3)" => gmem73::a19_collapse::<H>;
        "A20", "mbind: per-file NUMA policy (7.3)" => gmem73::a20_mbind::<H>;
        "B1", "invalid memslot flags" => memslot::b1_invalid_flags::<H>;
        "B2", "memslot limit" => memslot::b2_max_slots::<H>;
        "B3", "guest_memfd memslot fd and offset validation" => memslot::b3_private_region::<H>;
        "B4", "overlapping guest_memfd memslots" => memslot::b4_overlapping::<H>;
        "B5", "memslot address spaces" => memslot::b5_address_spaces::<H>;
        "B6", "guest_memfd file-offset overlap is EEXIST (7.3)" => memslot73::b6_file_offset_overlap::<H>;
        "C1", "explicit conversions without fallocate" => conversions::c1::<H>;
        "C2", "explicit conversions with fallocate" => conversions::c2::<H>;
        "C3", "punch hole, whole region faulted in" => conversions::c3::<H>;
        "C4", "punch hole, only the target faulted in" => conversions::c4::<H>;
        "C5", "guest_memfd outlives its VM" => conversions::c5::<H>;
        "D1", "private access after memslot deletion" => exits::d1_slot_deleted::<H>;
        "D2", "private access to a memslot without guest_memfd" => exits::d2_not_private::<H>;
        "P1", "pre-fault with the memslot deleted underneath (7.3)" => prefault::p1_pre_fault_churn::<H>;
        "V1", "VM types 0-63 (7.3)" => memslot73::v1_vm_types::<H>;
        "H1", "EHWPOISON from a poisoned gmem-only page (7.3)" => hwpoison::h1_gmem_only::<H>;
        "H2", "EHWPOISON from a poisoned private page" => hwpoison::h2_private::<H>;
        "F26", "closed guest_memfd kills its bindings" => invariants::f26_closed_gmem::<H>;
        "F27", "gmem-only memslot on a default VM" => invariants::f27_gmem_only::<H>;
        "F28", "punch hole zaps guest mappings" => invariants::f28_punch_zaps::<H>;
        "F29", "attributes: no-op sets and slotless GPAs" => invariants::f29_attributes::<H>;
        "F30", "hypercall ret preset and passed through" => invariants::f30_hypercall_ret::<H>;
        "F31", "hypercall errors without an exit" => invariants::f31_hypercall_errors::<H>;
        "K1", "stale MMIO SPTE keeps a private slotless gfn shared" => findings::k1_mmio_stale_spte::<H>;
        "K2", "overlapping guest_memfd binding is EEXIST" => findings::k2_gmem_bind_overlap::<H>;
        "K3", "pre-fault over a memslot being deleted" => findings_k3::k3_prefault_slot_delete::<H>;
        "K4", "shared attribute set reserves per gfn (6.12)" => findings::k4_attr_shared_reserve::<H>;
    }
}
