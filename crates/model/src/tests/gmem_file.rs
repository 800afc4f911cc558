//! guest_memfd file operations, fstat and host mappings (docs/semantics/guest-memfd.md, A2, A4–A10).

use privmem_core::backend::{
    FileIo, HostFault, HostMemory, Hypervisor, FALLOC_FL_KEEP_SIZE as KEEP,
    FALLOC_FL_PUNCH_HOLE as PUNCH,
};
use privmem_core::{Errno, GmemFlags, VmType};

use super::*;

fn shared_flags() -> GmemFlags {
    GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
}

#[test]
fn gmem_read_returns_einval() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags(0));
    assert_eq!(
        errno(hv.gmem_file_io(&g, FileIo::Read)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn gmem_write_returns_einval() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags(0));
    assert_eq!(
        errno(hv.gmem_file_io(&g, FileIo::Write)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn gmem_pread_pwrite_lseek_return_espipe() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags(0));
    for io in [FileIo::Pread, FileIo::Pwrite, FileIo::Lseek] {
        assert_eq!(
            errno(hv.gmem_file_io(&g, io)),
            Some(Errno::ESPIPE),
            "{io:?}"
        );
    }
}

#[test]
fn gmem_ftruncate_returns_einval() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, GmemFlags(0));
    assert_eq!(errno(hv.gmem_truncate(&g, 2 * PG)), Some(Errno::EINVAL));
}

#[test]
fn gmem_fstat_reports_size_mode_blksize() {
    // A10.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags(0));
    let st = hv.gmem_stat(&g).unwrap();
    assert_eq!(st.size, 4 * PG);
    assert_eq!(st.mode, 0o100600);
    assert_eq!(st.blksize, PG);
}

#[test]
fn gmem_fstat_inodes_are_unique_and_sizes_independent() {
    // A2.
    let (hv, vm) = setup_vm(VmType::Default);
    let a = gmem(&vm, PG, GmemFlags(0));
    let b = gmem(&vm, 2 * PG, GmemFlags(0));
    let (sa, sb) = (hv.gmem_stat(&a).unwrap(), hv.gmem_stat(&b).unwrap());
    assert_eq!((sa.size, sb.size), (PG, 2 * PG));
    assert_ne!(sa.ino, sb.ino);
}

#[test]
fn gmem_mmap_without_mmap_flag_returns_enodev() {
    // A9.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags(0));
    assert_eq!(errno(hv.gmem_mmap(&g, PG, true)), Some(Errno::ENODEV));
    assert_eq!(errno(hv.gmem_mmap(&g, 4 * PG, true)), Some(Errno::ENODEV));
}

#[test]
fn gmem_mmap_private_returns_einval() {
    // A8.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags::MMAP);
    assert_eq!(errno(hv.gmem_mmap(&g, 4 * PG, false)), Some(Errno::EINVAL));
}

#[test]
fn gmem_mmap_zero_len_returns_einval() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags::MMAP);
    assert_eq!(errno(hv.gmem_mmap(&g, 0, true)), Some(Errno::EINVAL));
}

#[test]
fn gmem_mmap_longer_than_file_succeeds() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, shared_flags());
    let m = hv.gmem_mmap(&g, 16 * PG, true).unwrap();
    assert_eq!(m.len(), 16 * PG);
}

#[test]
fn gmem_mapping_write_read_and_punch_zeroes_page() {
    // A5.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, shared_flags());
    let m = hv.gmem_mmap(&g, 4 * PG, true).unwrap();
    m.fill(0, 4 * PG, 0xaa).unwrap();
    hv.gmem_fallocate(&g, PUNCH | KEEP, 0, PG as i64).unwrap();
    let mut buf = vec![0u8; (4 * PG) as usize];
    m.read(0, &mut buf).unwrap();
    assert!(buf[..PG as usize].iter().all(|&b| b == 0));
    assert!(buf[PG as usize..].iter().all(|&b| b == 0xaa));
}

#[test]
fn gmem_mapping_access_beyond_file_faults_after_prefix_lands() {
    // A6.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, shared_flags());
    let m = hv.gmem_mmap(&g, 16 * PG, true).unwrap();
    assert_eq!(m.fill(0, 16 * PG, 0xaa), Err(HostFault::bus(4 * PG)));
    let mut one = [0u8; 1];
    assert_eq!(m.read(4 * PG, &mut one), Err(HostFault::bus(4 * PG)));
    // Past the mapping there is no VMA: SIGSEGV, not SIGBUS.
    assert_eq!(m.read(16 * PG, &mut one), Err(HostFault::segv(16 * PG)));
    let mut buf = vec![0u8; (4 * PG) as usize];
    m.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa));
}

#[test]
fn gmem_mapping_without_init_shared_faults_at_byte_zero() {
    // A7.
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, GmemFlags::MMAP);
    let m = hv.gmem_mmap(&g, 4 * PG, true).unwrap();
    assert_eq!(m.fill(0, 4 * PG, 0xaa), Err(HostFault::bus(0)));
    let mut one = [0u8; 1];
    assert_eq!(m.read(0, &mut one), Err(HostFault::bus(0)));
}

#[test]
fn gmem_mapping_poisoned_page_faults() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, 4 * PG, shared_flags());
    let m = hv.gmem_mmap(&g, 4 * PG, true).unwrap();
    hv.poison_gmem(&g, 2 * PG).unwrap();
    assert_eq!(m.fill(0, 4 * PG, 1), Err(HostFault::bus(2 * PG)));
}

#[test]
fn gmem_mapping_keeps_file_alive_after_fd_close() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, shared_flags());
    let m = hv.gmem_mmap(&g, PG, true).unwrap();
    m.fill(0, PG, 0x5c).unwrap();
    drop(g);
    let mut buf = [0u8; 16];
    m.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0x5c; 16]);
}

#[test]
fn gmem_injected_mmap_failure_returns_errno() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, shared_flags());
    hv.inject_failure(crate::InjectOp::Mmap, 1, Errno::ENOMEM);
    assert_eq!(errno(hv.gmem_mmap(&g, PG, true)), Some(Errno::ENOMEM));
}

#[test]
fn gmem_foreign_handle_is_invalid_not_errno() {
    let hv = setup_hv();
    let fd = std::fs::File::open("/dev/null").unwrap();
    let g = GuestMemfd::new(fd.into(), PG, GmemFlags(0));
    let r = hv.gmem_stat(&g);
    assert!(matches!(r, Err(privmem_core::BackendError::Invalid { .. })));
}

#[test]
fn gmem_dup_shares_the_file() {
    let (hv, vm) = setup_vm(VmType::Default);
    let g = gmem(&vm, PG, shared_flags());
    let g2 = g.try_clone().unwrap();
    assert_eq!(
        hv.gmem_stat(&g).unwrap().ino,
        hv.gmem_stat(&g2).unwrap().ino
    );
}
