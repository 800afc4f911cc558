//! `KVM_PRE_FAULT_MEMORY`, and the memory-management syscalls on a
//! guest_memfd mapping (`mmap` with a chosen protection, `mbind`,
//! `get_mempolicy`, `madvise`): one raw call each.
//!
//! The mapping calls act on an address range of our own mapping only: a
//! range reaching past it is refused before the kernel sees it, since the
//! kernel would apply `mbind`/`madvise` to whatever else is mapped there.

use std::os::fd::{AsRawFd, BorrowedFd};

use privmem_core::memops::{Advice, MemPolicy, MmapOptions, MmapProt, MmapSharing};
use privmem_core::{BackendError, Errno, PreFaultRange};

use crate::mem::KvmMapping;
use crate::sys::os_err;

/// `KVM_PRE_FAULT_MEMORY`: `_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)`.
/// Available with `KVM_CAP_PRE_FAULT_MEMORY`.
pub const KVM_PRE_FAULT_MEMORY: libc::c_ulong = 0xc040_aed5;

/// `struct kvm_pre_fault_memory`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PreFaultMemory {
    gpa: u64,
    size: u64,
    flags: u64,
    padding: [u64; 5],
}
const _: () = assert!(std::mem::size_of::<PreFaultMemory>() == 64);

/// `get_mempolicy` flag `MPOL_F_ADDR`.
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// `maxnode` for a 64-bit node mask: the kernel reads `maxnode - 1` bits.
const MAXNODE: libc::c_ulong = 65;

/// `KVM_PRE_FAULT_MEMORY(range)` on a vCPU fd; `range` is written back
/// with what the kernel passed back, on success and on failure.
///
/// # Errors
/// `Os { op: "KVM_PRE_FAULT_MEMORY", .. }` with the kernel's errno.
pub fn pre_fault_memory(
    vcpu: BorrowedFd<'_>,
    range: &mut PreFaultRange,
) -> Result<(), BackendError> {
    let mut arg = PreFaultMemory {
        gpa: range.gpa,
        size: range.size,
        flags: range.flags,
        padding: [0; 5],
    };
    // SAFETY: `arg` is a live, exclusively borrowed 64-byte `repr(C)` struct,
    // the size `KVM_PRE_FAULT_MEMORY` encodes; the kernel reads and writes
    // only it, and maps guest memory it already owns.
    let ret = unsafe {
        libc::ioctl(
            vcpu.as_raw_fd(),
            KVM_PRE_FAULT_MEMORY,
            &mut arg as *mut PreFaultMemory,
        )
    };
    let err = (ret < 0).then(|| os_err("KVM_PRE_FAULT_MEMORY"));
    range.gpa = arg.gpa;
    range.size = arg.size;
    err.map_or(Ok(()), Err)
}

/// `mmap(NULL, len, prot, flags, fd, 0)` of a guest_memfd with `opts`.
///
/// # Errors
/// `Os { op: "mmap", .. }` with the kernel's errno.
pub fn mmap_gmem(
    fd: BorrowedFd<'_>,
    len: u64,
    opts: MmapOptions,
) -> Result<KvmMapping, BackendError> {
    let prot = match opts.prot {
        MmapProt::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        MmapProt::ReadWriteExec => libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
    };
    let flags = match opts.sharing {
        MmapSharing::Shared => libc::MAP_SHARED,
        MmapSharing::Private => libc::MAP_PRIVATE,
    };
    KvmMapping::with_prot(fd, len, prot, flags)
}

/// The address of `[offset, offset+len)` of `map`, or `Invalid` if the
/// range reaches past the mapping.
pub(crate) fn range_in(
    map: &KvmMapping,
    offset: u64,
    len: u64,
    op: &'static str,
) -> Result<usize, BackendError> {
    let inside = offset.checked_add(len).is_some_and(|end| {
        end <= privmem_core::HostMemory::len(map) && offset < privmem_core::HostMemory::len(map)
    });
    if !inside {
        return Err(BackendError::Invalid {
            op,
            why: format!(
                "{offset:#x}+{len:#x} reaches past the {:#x}-byte mapping (the kernel would act on other memory)",
                privmem_core::HostMemory::len(map)
            ),
        });
    }
    usize::try_from(map.host_addr() + offset).map_err(|_| BackendError::os(op, Errno::EINVAL))
}

/// `mbind(map + offset, len, policy.mode, &policy.nodes, 65, flags)`.
///
/// # Errors
/// `Invalid` for a range past the mapping; `Os { op: "mbind", .. }`.
pub fn mbind(
    map: &KvmMapping,
    offset: u64,
    len: u64,
    policy: MemPolicy,
    flags: u32,
) -> Result<(), BackendError> {
    let addr = range_in(map, offset, len, "mbind")?;
    let nodes: libc::c_ulong = policy.nodes;
    // SAFETY: mbind changes only the memory policy of our own mapping's
    // range (checked above); `nodes` is a live 64-bit mask the kernel reads
    // (maxnode 65 = 64 bits).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len as libc::c_ulong,
            libc::c_ulong::from(policy.mode),
            &nodes as *const libc::c_ulong,
            MAXNODE,
            libc::c_ulong::from(flags),
        )
    };
    if ret < 0 {
        return Err(os_err("mbind"));
    }
    Ok(())
}

/// `get_mempolicy(&mode, &nodes, 65, map + offset, MPOL_F_ADDR)`.
///
/// # Errors
/// `Invalid` for an offset past the mapping; `Os { op: "get_mempolicy", .. }`.
pub fn get_mempolicy(map: &KvmMapping, offset: u64) -> Result<MemPolicy, BackendError> {
    let addr = range_in(map, offset, 1, "get_mempolicy")?;
    let mut mode: libc::c_int = 0;
    let mut nodes: libc::c_ulong = 0;
    // SAFETY: `mode` and `nodes` are live locals the kernel fills (an int and
    // 64 bits of mask for maxnode 65); `addr` is only looked up.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            &mut nodes as *mut libc::c_ulong,
            MAXNODE,
            addr,
            MPOL_F_ADDR,
        )
    };
    if ret < 0 {
        return Err(os_err("get_mempolicy"));
    }
    Ok(MemPolicy::new(mode as u32, nodes))
}

/// `madvise(map + offset, len, advice)`.
///
/// # Errors
/// `Invalid` for a range past the mapping; `Os { op: "madvise", .. }`.
pub fn madvise(
    map: &KvmMapping,
    offset: u64,
    len: u64,
    advice: Advice,
) -> Result<(), BackendError> {
    let addr = range_in(map, offset, len, "madvise")?;
    let len = usize::try_from(len).map_err(|_| BackendError::os("madvise", Errno::EINVAL))?;
    // SAFETY: the range lies in our own shared file mapping (checked above).
    // None of the advice values issued here frees file data: DONTNEED on a
    // MAP_SHARED file mapping only drops page-table entries, and all host
    // access to the mapping goes through process_vm_*, which re-faults.
    let ret = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice.raw()) };
    if ret < 0 {
        return Err(os_err("madvise"));
    }
    Ok(())
}
