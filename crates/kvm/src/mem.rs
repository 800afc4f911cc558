//! Host mappings: guest_memfd mmaps ([`KvmMapping`]), shared backings
//! ([`KvmShared`]) and the `kvm_run` mapping, all [`privmem_mem::Mapping`]s
//! (rust-vmm `vm-memory` regions).
//!
//! Host access to guest_memfd mappings and shared backings goes through the
//! kernel ([`Mapping::read_checked`] and its siblings:
//! `process_vm_readv`/`writev`), never CPU loads and stores: a host access to
//! a guest_memfd page beyond `i_size`, or to any page of one created without
//! `INIT_SHARED`, would raise SIGBUS. A failing page comes back as a
//! [`HostFault`] at the first byte that did not move; the bytes before it
//! landed (selftest A6 semantics).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use privmem_core::{
    BackendError, Errno, HostFault, HostMemory, SharedKind, SharedMemory, PAGE_SIZE,
};
use privmem_mem::{MapError, Mapping, Memfd, Seal, Share};

/// A `privmem_mem` error as a backend error for `op`: the failing call's
/// errno (`mmap` failures carry `op`'s name), or `Invalid`.
fn backend(op: &'static str, e: MapError) -> BackendError {
    match e {
        MapError::Os { op: "mmap", errno } => BackendError::os(op, Errno(errno)),
        MapError::Os { op, errno } => BackendError::os(op, Errno(errno)),
        other => BackendError::invalid(op, other.to_string()),
    }
}

/// A fault at an offset inside a mapping of `len` bytes is a `SIGBUS` (the
/// file refused the page), one at or past its end a `SIGSEGV`, as a CPU
/// access there would be.
fn host_fault(len: u64) -> impl Fn(privmem_mem::Fault) -> HostFault {
    move |f| {
        if f.offset < len {
            HostFault::bus(f.offset)
        } else {
            HostFault::segv(f.offset)
        }
    }
}

/// A read/write mapping of a vCPU's `kvm_run` (or, without an fd, of
/// anonymous shared memory), for the vCPU loop's volatile accesses.
#[derive(Debug)]
pub(crate) struct Mmap {
    map: Mapping,
}

impl Mmap {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, flags, fd, 0)`, where `flags`
    /// is `MAP_SHARED` or `MAP_PRIVATE` (anonymous shared memory if `fd`
    /// is `None`).
    pub(crate) fn new(
        len: u64,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        op: &'static str,
    ) -> Result<Mmap, BackendError> {
        let share = if flags & libc::MAP_SHARED != 0 {
            Share::Shared
        } else {
            Share::Private
        };
        let map = match fd {
            Some(fd) => Mapping::file(fd, 0, len, share),
            None => Mapping::anonymous(len),
        }
        .map_err(|e| backend(op, e))?;
        Ok(Mmap { map })
    }

    /// The start pointer, valid for [`Mmap::len`] bytes while `self` lives.
    /// Crate-private: callers access the bytes only with volatile or atomic
    /// operations, and never after dropping `self`.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        // SAFETY: the pointer stays inside this crate, whose users (the
        // vCPU's `kvm_run` accessors) keep the mapping alive through the
        // `Arc<Mmap>` they read it from, stay within `len`, and only use
        // volatile or atomic accesses.
        unsafe { self.map.as_ptr() }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.map.len()
    }
}

/// A host `mmap` of a guest_memfd. The mapping holds its own reference on
/// the file, so it stays valid after the fd is closed.
#[derive(Debug)]
pub struct KvmMapping {
    map: Mapping,
}

impl KvmMapping {
    /// Maps `len` bytes of `fd` read/write, shared or private.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: u64, shared: bool) -> Result<Self, BackendError> {
        let share = if shared {
            Share::Shared
        } else {
            Share::Private
        };
        let map = Mapping::file(fd, 0, len, share).map_err(|e| backend("mmap", e))?;
        Ok(KvmMapping { map })
    }

    /// Maps `len` bytes of `fd` from offset 0 with `prot` and `flags`.
    pub(crate) fn with_prot(
        fd: BorrowedFd<'_>,
        len: u64,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> Result<Self, BackendError> {
        let share = if flags & libc::MAP_SHARED != 0 {
            Share::Shared
        } else {
            Share::Private
        };
        let exec = if prot & libc::PROT_EXEC != 0 {
            privmem_mem::Exec::Yes
        } else {
            privmem_mem::Exec::No
        };
        let map = Mapping::file_exec(fd, len, share, exec).map_err(|e| backend("mmap", e))?;
        Ok(KvmMapping { map })
    }

    /// Maps `[offset, offset+len)` of `fd` shared, read/write.
    pub(crate) fn new_at(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<Self, BackendError> {
        let map = Mapping::file(fd, offset, len, Share::Shared).map_err(|e| backend("mmap", e))?;
        Ok(KvmMapping { map })
    }

    /// `madvise(MADV_HWPOISON)` on the page at `offset`, from a forked child
    /// ([`privmem_mem::hwpoison`]): what the kernel answered it.
    pub(crate) fn inject_hwpoison(
        &self,
        offset: u64,
    ) -> Result<privmem_mem::Injection, BackendError> {
        self.map
            .inject_hwpoison(offset)
            .map_err(|e| backend("madvise(MADV_HWPOISON)", e))
    }

    /// The host virtual address of the mapping, for a memslot's
    /// `userspace_addr`. The caller keeps `self` alive until KVM no longer
    /// uses the slot (the VM stores it in the slot's entry).
    pub(crate) fn host_addr(&self) -> u64 {
        // SAFETY: crate-private; every caller (the VM's memslot setup) keeps
        // this mapping alive in the slot's entry until the slot is deleted,
        // so KVM never uses the address after the mapping is gone.
        unsafe { self.map.host_addr() }
    }
}

impl HostMemory for KvmMapping {
    fn len(&self) -> u64 {
        self.map.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        self.map
            .read_checked(offset, buf)
            .map_err(host_fault(self.len()))
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        self.map
            .write_checked(offset, data)
            .map_err(host_fault(self.len()))
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        self.map
            .fill_checked(offset, len, byte)
            .map_err(host_fault(self.len()))
    }
}

#[derive(Debug)]
struct SharedInner {
    // Dropped before `memfd` (declaration order).
    map: Mapping,
    kind: SharedKind,
    memfd: Option<Memfd>,
}

/// A shared backing for `userspace_addr`: anonymous shared memory or a memfd.
/// Clones share the memory; it is unmapped when the last clone is dropped
/// (the VM keeps a clone per memslot that uses it).
#[derive(Debug, Clone)]
pub struct KvmShared {
    inner: Arc<SharedInner>,
}

impl KvmShared {
    /// Allocates `size` bytes (page-aligned, nonzero).
    pub(crate) fn new(size: u64, kind: SharedKind) -> Result<Self, BackendError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(BackendError::invalid(
                "create_shared",
                "size must be a nonzero multiple of 4 KiB",
            ));
        }
        let inner = match kind {
            SharedKind::Anonymous => SharedInner {
                map: Mapping::anonymous(size).map_err(|e| backend("mmap", e))?,
                kind,
                memfd: None,
            },
            SharedKind::Memfd => {
                let fd = Memfd::create("privmem-shared", size, Seal::None)
                    .map_err(|e| backend("memfd_create", e))?;
                let map = Mapping::file(fd.as_fd(), 0, size, Share::Shared)
                    .map_err(|e| backend("mmap", e))?;
                SharedInner {
                    map,
                    kind,
                    memfd: Some(fd),
                }
            }
        };
        Ok(KvmShared {
            inner: Arc::new(inner),
        })
    }

    /// The host virtual address of byte `offset` (caller checks bounds), for
    /// a memslot's `userspace_addr`. The caller keeps a clone of `self`
    /// until KVM no longer uses the slot (the VM stores it in the slot's
    /// entry).
    pub(crate) fn hva(&self, offset: u64) -> u64 {
        // SAFETY: crate-private; every caller (the VM's memslot setup) keeps
        // a clone of this backing in the slot's entry until the slot is
        // deleted, so KVM never uses the address after the mapping is gone.
        unsafe { self.inner.map.host_addr() + offset }
    }
}

impl HostMemory for KvmShared {
    fn len(&self) -> u64 {
        self.inner.map.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        self.inner
            .map
            .read_checked(offset, buf)
            .map_err(host_fault(self.len()))
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        self.inner
            .map
            .write_checked(offset, data)
            .map_err(host_fault(self.len()))
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        let map = &self.inner.map;
        map.fill_checked(offset, len, byte)
            .map_err(host_fault(self.len()))
    }
}

impl SharedMemory for KvmShared {
    fn kind(&self) -> SharedKind {
        self.inner.kind
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(BackendError::invalid(
                "discard",
                "offset and length must be page-aligned",
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.len()) {
            return Err(BackendError::invalid(
                "discard",
                "range exceeds the backing",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        match (&self.inner.memfd, self.inner.kind) {
            (Some(fd), SharedKind::Memfd) => fd
                .punch(offset, len)
                .map_err(|e| backend("fallocate(PUNCH_HOLE)", e)),
            _ => self
                .inner
                .map
                .discard(offset, len)
                .map_err(|e| backend("madvise(MADV_REMOVE)", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_anonymous_write_discard_reads_zero() {
        let s = KvmShared::new(2 * PAGE_SIZE, SharedKind::Anonymous).unwrap();
        s.fill(0, 2 * PAGE_SIZE, 0xaa).unwrap();
        s.discard(0, PAGE_SIZE).unwrap();
        let mut buf = [0u8; 2];
        s.read(PAGE_SIZE - 1, &mut buf).unwrap();
        assert_eq!(buf, [0x00, 0xaa]);
    }

    #[test]
    fn shared_memfd_write_discard_reads_zero() {
        let s = KvmShared::new(2 * PAGE_SIZE, SharedKind::Memfd).unwrap();
        s.fill(0, 2 * PAGE_SIZE, 0x55).unwrap();
        s.discard(PAGE_SIZE, PAGE_SIZE).unwrap();
        let mut buf = [0u8; 2];
        s.read(PAGE_SIZE - 1, &mut buf).unwrap();
        assert_eq!(buf, [0x55, 0x00]);
    }

    #[test]
    fn shared_write_past_end_lands_prefix_and_faults() {
        let s = KvmShared::new(PAGE_SIZE, SharedKind::Anonymous).unwrap();
        let err = s.write(PAGE_SIZE - 2, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(err.offset, PAGE_SIZE);
        let mut buf = [0u8; 2];
        s.read(PAGE_SIZE - 2, &mut buf).unwrap();
        assert_eq!(buf, [1, 2]);
    }

    #[test]
    fn shared_discard_unaligned_is_invalid() {
        let s = KvmShared::new(PAGE_SIZE, SharedKind::Anonymous).unwrap();
        assert!(matches!(
            s.discard(1, PAGE_SIZE),
            Err(BackendError::Invalid { .. })
        ));
    }

    #[test]
    fn mapping_errors_keep_the_kernels_errno() {
        let e = KvmShared::new(1 << 62, SharedKind::Anonymous).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOMEM), "{e}");
        let kvm_run = Mmap::new(0, libc::MAP_SHARED, None, "mmap(kvm_run)").unwrap_err();
        assert_eq!(
            kvm_run,
            BackendError::os("mmap(kvm_run)", Errno::EINVAL),
            "{kvm_run}"
        );
    }
}
