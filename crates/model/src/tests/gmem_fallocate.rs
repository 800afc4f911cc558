//! guest_memfd `fallocate` (docs/semantics/guest-memfd.md, selftests A11/A12).

use privmem_core::backend::{
    Hypervisor, FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH,
};
use privmem_core::{Errno, GmemFlags, VmType};

use super::*;

const P: i64 = PG as i64;

fn setup_4p() -> (ModelHypervisor, ModelVm, GuestMemfd) {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags(0));
    (hv, vm, g)
}

#[test]
fn fallocate_without_keep_size_returns_eopnotsupp() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, 0, 0, P)),
        Some(Errno::EOPNOTSUPP)
    );
}

#[test]
fn fallocate_punch_without_keep_size_returns_eopnotsupp() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, PUNCH, 0, P)),
        Some(Errno::EOPNOTSUPP)
    );
}

#[test]
fn fallocate_zero_range_returns_eopnotsupp() {
    let (hv, _vm, g) = setup_4p();
    let r = hv.gmem_fallocate(&g, 0x10 | KEEP, 0, P);
    assert_eq!(errno(r), Some(Errno::EOPNOTSUPP));
}

#[test]
fn fallocate_collapse_range_returns_eopnotsupp() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, 0x08, 0, P)),
        Some(Errno::EOPNOTSUPP)
    );
}

#[test]
fn fallocate_unknown_mode_bit_returns_eopnotsupp() {
    let (hv, _vm, g) = setup_4p();
    let r = hv.gmem_fallocate(&g, KEEP | 0x1000, 0, P);
    assert_eq!(errno(r), Some(Errno::EOPNOTSUPP));
}

#[test]
fn fallocate_zero_len_returns_einval() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 0, 0)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn fallocate_negative_offset_returns_einval() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, -P, P)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn fallocate_zero_len_with_bad_mode_returns_einval_first() {
    // vfs_fallocate checks offset/len before the mode.
    let (hv, _vm, g) = setup_4p();
    assert_eq!(errno(hv.gmem_fallocate(&g, 0, 0, 0)), Some(Errno::EINVAL));
}

#[test]
fn fallocate_overflowing_end_returns_efbig() {
    let (hv, _vm, g) = setup_4p();
    let r = hv.gmem_fallocate(&g, KEEP | PUNCH, i64::MAX - P + 1, 2 * P);
    assert_eq!(errno(r), Some(Errno(27)));
}

#[test]
fn fallocate_unaligned_offset_returns_einval() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 1, P)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn fallocate_invalid_punch_holes_return_einval() {
    // A12.
    let (hv, _vm, g) = setup_4p();
    let cases = [
        (0, 1),
        (0, P - 1),
        (0, P + 1),
        (1, 1),
        (1, P - 1),
        (1, P),
        (1, P + 1),
        (P, 1),
        (P, P - 1),
        (P, P + 1),
    ];
    for (off, len) in cases {
        let r = hv.gmem_fallocate(&g, PUNCH | KEEP, off, len);
        assert_eq!(errno(r), Some(Errno::EINVAL), "({off}, {len})");
    }
}

#[test]
fn fallocate_allocate_at_eof_returns_einval() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 4 * P, P)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn fallocate_allocate_straddling_eof_returns_einval() {
    let (hv, _vm, g) = setup_4p();
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 3 * P, 2 * P)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn fallocate_punch_beyond_eof_succeeds() {
    let (hv, _vm, g) = setup_4p();
    assert!(hv.gmem_fallocate(&g, PUNCH | KEEP, 5 * P, P).is_ok());
}

#[test]
fn fallocate_selftest_a11_sequence_matches() {
    let (hv, _vm, g) = setup_4p();
    let f = |mode, off, len| hv.gmem_fallocate(&g, mode, off, len).is_ok();
    assert!(f(KEEP, 0, 4 * P));
    assert!(!f(PUNCH | KEEP, P - 1, P));
    assert!(!f(KEEP, 4 * P, P));
    assert!(!f(KEEP, 5 * P, P));
    assert!(f(PUNCH | KEEP, 4 * P, P));
    assert!(f(PUNCH | KEEP, 5 * P, P));
    assert!(!f(PUNCH | KEEP, P, P - 1));
    assert!(f(PUNCH | KEEP, P, P));
    assert!(f(KEEP, P, P));
}

#[test]
fn fallocate_allocate_then_punch_frees_pages() {
    let (hv, _vm, g) = setup_4p();
    hv.gmem_fallocate(&g, KEEP, 0, 4 * P).unwrap();
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 4);
    hv.gmem_fallocate(&g, PUNCH | KEEP, P, 2 * P).unwrap();
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 2);
}

#[test]
fn fallocate_injected_enomem_fails_once_and_changes_nothing() {
    let (hv, _vm, g) = setup_4p();
    hv.inject_failure(crate::InjectOp::Fallocate, 1, Errno::ENOMEM);
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 0, P)),
        Some(Errno::ENOMEM)
    );
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
    assert!(hv.gmem_fallocate(&g, KEEP, 0, P).is_ok());
}

#[test]
fn fallocate_injected_failure_does_not_fire_on_invalid_call() {
    let (hv, _vm, g) = setup_4p();
    hv.inject_failure(crate::InjectOp::Fallocate, 1, Errno::EIO);
    assert_eq!(
        errno(hv.gmem_fallocate(&g, KEEP, 1, P)),
        Some(Errno::EINVAL)
    );
    assert_eq!(errno(hv.gmem_fallocate(&g, KEEP, 0, P)), Some(Errno::EIO));
}

#[test]
fn fallocate_punch_clears_poison() {
    let (hv, _vm, g) = setup_4p();
    hv.poison_gmem(&g, PG).unwrap();
    hv.gmem_fallocate(&g, PUNCH | KEEP, P, P).unwrap();
    let f = crate::gmem::file_of(&g).unwrap();
    assert_eq!(f.first_poisoned(0, 4), None);
}

#[test]
fn fallocate_allocating_more_than_memory_returns_enomem() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 1 << 62, GmemFlags(0));
    let r = hv.gmem_fallocate(&g, KEEP, 0, 1 << 62);
    assert_eq!(errno(r), Some(Errno::ENOMEM));
    assert_eq!(hv.gmem_allocated_pages(&g).unwrap(), 0);
}

#[test]
fn fallocate_punching_a_huge_sparse_file_succeeds() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 1 << 62, GmemFlags(0));
    assert!(hv.gmem_fallocate(&g, KEEP | PUNCH, 0, 1 << 62).is_ok());
}
