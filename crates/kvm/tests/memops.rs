//! `KVM_PRE_FAULT_MEMORY` and the mapping syscalls (`crates/kvm/src/memops.rs`)
//! on the host's KVM. The mapping calls are checked on a shared mapping of
//! a plain file (every host has one; the guest_memfd answers are the
//! conformance suite's, A15–A20), which checks their plumbing: the
//! arguments reach the kernel and its answers come back.

mod common;

use std::os::fd::OwnedFd;

use common::{kvm_or_skip, skip};
use privmem_core::memops::{MPOL_BIND, MPOL_DEFAULT};
use privmem_core::{
    Advice, BackendError, Cap, Errno, GmemFlags, GuestMemfd, HostMemory, Hypervisor, MemPolicy,
    MmapOptions, PreFaultRange, Vcpu, Vm, VmType,
};
use privmem_kvm::KvmHypervisor;

const PG: u64 = 4096;

/// A 4-page regular file wrapped as a `GuestMemfd` (only its fd is used).
fn plain_file(test: &str) -> GuestMemfd {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("memops-{test}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("temp file");
    f.set_len(4 * PG).expect("set_len");
    let _ = std::fs::remove_file(&path);
    GuestMemfd::new(OwnedFd::from(f), 4 * PG, GmemFlags(0))
}

fn errno<T>(r: Result<T, BackendError>) -> Option<Errno> {
    r.err().and_then(|e| e.errno())
}

/// A default VM's vCPU 0.
fn vcpu(hv: &KvmHypervisor) -> (privmem_kvm::KvmVm, privmem_kvm::KvmVcpu) {
    let vm = hv.create_vm(VmType::Default).expect("KVM_CREATE_VM");
    let v = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    (vm, v)
}

#[test]
fn pre_fault_with_flags_is_einval_and_leaves_the_range() {
    let Some(hv) = kvm_or_skip("pre_fault_with_flags_is_einval_and_leaves_the_range") else {
        return;
    };
    let (_vm, mut v) = vcpu(&hv);
    let mut range = PreFaultRange::new(1 << 32, PG);
    range.flags = 1;
    let r = v.pre_fault_memory(&mut range);
    if errno(r.clone()) == Some(Errno(25)) {
        skip("pre_fault_with_flags_is_einval_and_leaves_the_range: KVM_PRE_FAULT_MEMORY is ENOTTY (a kernel before 6.10)");
        return;
    }
    assert_eq!(errno(r), Some(Errno::EINVAL));
    assert_eq!((range.gpa, range.size), (1 << 32, PG));
}

#[test]
fn pre_fault_without_a_slot_follows_the_cap() {
    let Some(hv) = kvm_or_skip("pre_fault_without_a_slot_follows_the_cap") else {
        return;
    };
    let cap = hv.check_extension(Cap::PreFaultMemory).unwrap_or(0);
    let (_vm, mut v) = vcpu(&hv);
    let mut range = PreFaultRange::new(1 << 32, PG);
    let r = v.pre_fault_memory(&mut range);
    if errno(r.clone()) == Some(Errno(25)) {
        skip("pre_fault_without_a_slot_follows_the_cap: KVM_PRE_FAULT_MEMORY is ENOTTY (a kernel before 6.10)");
        return;
    }
    // With TDP a GPA without a memslot is emulated MMIO (ENOENT); without
    // TDP the ioctl cannot pre-fault at all: EOPNOTSUPP upstream, ENOSPC on
    // PVM hosts (the vCPU's MMU does not load; measured on 6.18.44-fc).
    let want = match (cap, hv.quirks().pvm) {
        (0, true) => Errno::ENOSPC,
        (0, false) => Errno::EOPNOTSUPP,
        _ => Errno::ENOENT,
    };
    assert_eq!(errno(r), Some(want), "KVM_CAP_PRE_FAULT_MEMORY={cap}");
    assert_eq!((range.gpa, range.size), (1 << 32, PG));
}

#[test]
fn mbind_round_trips_through_get_mempolicy() {
    let Some(hv) = kvm_or_skip("mbind_round_trips_through_get_mempolicy") else {
        return;
    };
    let f = plain_file("mbind");
    let map = hv.gmem_mmap(&f, 4 * PG, true).expect("mmap");
    let bind = MemPolicy::new(MPOL_BIND, 1);
    let r = hv.gmem_mbind(&map, PG, PG, bind, 0);
    if errno(r.clone()) == Some(Errno::ENOSYS) {
        skip("mbind_round_trips_through_get_mempolicy: mbind is ENOSYS (a kernel without CONFIG_NUMA)");
        return;
    }
    r.expect("mbind(BIND, node 0)");
    assert_eq!(hv.gmem_get_mempolicy(&map, PG).unwrap(), bind);
    hv.gmem_mbind(&map, 0, 4 * PG, MemPolicy::DEFAULT, 0)
        .expect("mbind(DEFAULT)");
    let got = hv.gmem_get_mempolicy(&map, PG).unwrap();
    assert_eq!((got.mode, got.nodes), (MPOL_DEFAULT, 0));
    let bad = hv.gmem_mbind(&map, 0, PG, MemPolicy::new(999, 1), 0);
    assert_eq!(errno(bad), Some(Errno::EINVAL));
}

#[test]
fn madvise_reaches_the_kernel_and_dontneed_keeps_file_data() {
    let Some(hv) = kvm_or_skip("madvise_reaches_the_kernel_and_dontneed_keeps_file_data") else {
        return;
    };
    let f = plain_file("madvise");
    let map = hv.gmem_mmap(&f, 4 * PG, true).expect("mmap");
    map.fill(0, 4 * PG, 0x6b).unwrap();
    hv.gmem_madvise(&map, 0, 4 * PG, Advice::DontNeed)
        .expect("MADV_DONTNEED");
    let mut buf = vec![0u8; (4 * PG) as usize];
    map.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x6b));
    // An unaligned start is the kernel's EINVAL.
    assert_eq!(
        errno(hv.gmem_madvise(&map, 1, PG, Advice::DontNeed)),
        Some(Errno::EINVAL)
    );
}

#[test]
fn mapping_calls_past_the_mapping_never_reach_the_kernel() {
    let Some(hv) = kvm_or_skip("mapping_calls_past_the_mapping_never_reach_the_kernel") else {
        return;
    };
    let f = plain_file("past");
    let map = hv.gmem_mmap(&f, 2 * PG, true).expect("mmap");
    let invalid = |r: Result<(), BackendError>| matches!(r, Err(BackendError::Invalid { .. }));
    assert!(invalid(hv.gmem_madvise(&map, PG, 2 * PG, Advice::DontNeed)));
    assert!(invalid(hv.gmem_mbind(
        &map,
        0,
        3 * PG,
        MemPolicy::DEFAULT,
        0
    )));
    assert!(invalid(hv.gmem_get_mempolicy(&map, 2 * PG).map(|_| ())));
}

#[test]
fn mmap_with_options_maps_read_write_shared() {
    let Some(hv) = kvm_or_skip("mmap_with_options_maps_read_write_shared") else {
        return;
    };
    let f = plain_file("mmap");
    let map = hv
        .gmem_mmap_with(&f, 4 * PG, MmapOptions::SHARED_RW)
        .expect("mmap");
    map.fill(PG, PG, 0x21).unwrap();
    let again = hv.gmem_mmap(&f, 4 * PG, true).expect("mmap again");
    let mut b = [0u8; 1];
    again.read(PG, &mut b).unwrap();
    assert_eq!(b[0], 0x21);
}
