//! Host access to guest_memfd mappings never raises SIGBUS: faults come back
//! as `HostFault` with the bytes before the fault landed (selftests A5-A9).

mod common;

use common::*;
use privmem_core::backend::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use privmem_core::{Errno, GmemFlags, HostFault, HostMemory, Hypervisor, Vm, VmType};

const PG: u64 = 4096;

fn shared_flags() -> GmemFlags {
    GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
}

#[test]
fn hostmem_init_shared_mapping_roundtrips_across_mappings() {
    let Some(hv) = shared_gmem_or_skip("hostmem_init_shared_mapping_roundtrips_across_mappings")
    else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(4 * PG, shared_flags()).unwrap();
    let a = hv.gmem_mmap(&gmem, 4 * PG, true).unwrap();
    let b = hv.gmem_mmap(&gmem, 4 * PG, true).unwrap();

    a.fill(0, 4 * PG, 0xaa).unwrap();

    let mut buf = vec![0u8; (4 * PG) as usize];
    b.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|x| *x == 0xaa));
}

#[test]
fn hostmem_punch_hole_reads_zero_rest_kept() {
    let Some(hv) = shared_gmem_or_skip("hostmem_punch_hole_reads_zero_rest_kept") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(4 * PG, shared_flags()).unwrap();
    let m = hv.gmem_mmap(&gmem, 4 * PG, true).unwrap();
    m.fill(0, 4 * PG, 0xaa).unwrap();

    hv.gmem_fallocate(
        &gmem,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        0,
        PG as i64,
    )
    .unwrap();

    let mut buf = vec![0u8; (4 * PG) as usize];
    m.read(0, &mut buf).unwrap();
    assert!(buf[..PG as usize].iter().all(|x| *x == 0));
    assert!(buf[PG as usize..].iter().all(|x| *x == 0xaa));
}

#[test]
fn hostmem_write_beyond_i_size_faults_after_landing_prefix() {
    let Some(hv) = shared_gmem_or_skip("hostmem_write_beyond_i_size_faults_after_landing_prefix")
    else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(4 * PG, shared_flags()).unwrap();
    // Selftest A6: a 16-page mapping over a 4-page file.
    let m = hv.gmem_mmap(&gmem, 16 * PG, true).unwrap();

    let err = m.fill(0, 16 * PG, 0xaa);

    assert_eq!(err, Err(HostFault::bus(4 * PG)));
    let mut byte = [0u8; 1];
    assert_eq!(m.read(4 * PG, &mut byte), Err(HostFault::bus(4 * PG)));
    // Past the mapping there is no VMA: SIGSEGV, not SIGBUS.
    assert_eq!(m.read(16 * PG, &mut byte), Err(HostFault::segv(16 * PG)));
    let mut buf = vec![0u8; (4 * PG) as usize];
    m.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|x| *x == 0xaa));
}

#[test]
fn hostmem_read_straddling_i_size_reports_first_bad_byte() {
    let Some(hv) = shared_gmem_or_skip("hostmem_read_straddling_i_size_reports_first_bad_byte")
    else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(PG, shared_flags()).unwrap();
    let m = hv.gmem_mmap(&gmem, 2 * PG, true).unwrap();
    m.write(PG - 3, &[1, 2, 3]).unwrap();

    let mut buf = [0u8; 8];
    let err = m.read(PG - 3, &mut buf);

    assert_eq!(err, Err(HostFault::bus(PG)));
    assert_eq!(&buf[..3], &[1, 2, 3]);
}

#[test]
fn hostmem_gmem_without_init_shared_faults_at_first_byte() {
    let Some(hv) = shared_gmem_or_skip("hostmem_gmem_without_init_shared_faults_at_first_byte")
    else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    // Selftest A7: MMAP without INIT_SHARED is "private": every host fault fails.
    let gmem = vm.create_guest_memfd(4 * PG, GmemFlags::MMAP).unwrap();
    let m = hv.gmem_mmap(&gmem, 4 * PG, true).unwrap();

    assert_eq!(m.fill(0, 4 * PG, 0xaa), Err(HostFault::bus(0)));
    let mut byte = [0u8; 1];
    assert_eq!(m.read(0, &mut byte), Err(HostFault::bus(0)));
}

#[test]
fn hostmem_private_mmap_is_einval() {
    let Some(hv) = shared_gmem_or_skip("hostmem_private_mmap_is_einval") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(PG, shared_flags()).unwrap();

    let err = hv.gmem_mmap(&gmem, PG, false).unwrap_err();

    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

#[test]
fn hostmem_mmap_without_mmap_flag_is_enodev() {
    let Some(hv) = shared_gmem_or_skip("hostmem_mmap_without_mmap_flag_is_enodev") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(PG, GmemFlags(0)).unwrap();

    let err = hv.gmem_mmap(&gmem, PG, true).unwrap_err();

    assert_eq!(err.errno(), Some(Errno::ENODEV));
}

#[test]
fn hostmem_mapping_outlives_fd() {
    let Some(hv) = shared_gmem_or_skip("hostmem_mapping_outlives_fd") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let gmem = vm.create_guest_memfd(PG, shared_flags()).unwrap();
    let m = hv.gmem_mmap(&gmem, PG, true).unwrap();
    m.fill(0, PG, 0x3c).unwrap();

    drop(gmem);

    let mut b = [0u8; 1];
    m.read(PG - 1, &mut b).unwrap();
    assert_eq!(b, [0x3c]);
}
