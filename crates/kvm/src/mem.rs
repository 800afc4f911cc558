//! Host mappings: guest_memfd mmaps ([`KvmMapping`]) and shared backings
//! ([`KvmShared`]), plus SIGBUS-free host access to them.
//!
//! # Why `process_vm_readv`/`process_vm_writev`
//!
//! A host load or store to a guest_memfd page beyond `i_size`, or to any page of
//! a guest_memfd created without `INIT_SHARED`, raises **SIGBUS**
//! (kernel-semantics.md §2.4). privmem must never die from that. Instead of
//! touching the mapping with CPU loads/stores, all host access goes through
//! `process_vm_readv`/`process_vm_writev` on our own pid: the kernel faults the
//! pages in on our behalf (GUP) and reports a failing page as `EFAULT` or a
//! short count instead of a signal. The remote side is split into page-sized
//! iovecs so the count tells exactly how far the copy got; bytes before the
//! fault have landed (selftest A6 semantics) and [`HostFault::offset`] is the
//! first byte that did not.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use privmem_core::backend::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use privmem_core::{BackendError, HostFault, HostMemory, SharedKind, SharedMemory, PAGE_SIZE};

use crate::sys::os_err;

/// Most remote iovecs per `process_vm_*` call (`IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Chunk size of the pattern buffer used by `fill`.
const FILL_CHUNK: u64 = 1 << 20;

/// An owned `mmap` region, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mmap` is an address range we own. It never hands out references to
// the bytes; all access goes through syscalls (process_vm_*, madvise, ioctls)
// or through atomics at fixed offsets (kvm_run.immediate_exit), and `munmap`
// only happens in `Drop`, when no other handle exists. Sharing the address
// between threads is therefore sound.
unsafe impl Send for Mmap {}
// SAFETY: see `Send` above; `&Mmap` exposes only the address and length.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, flags, fd, 0)`.
    pub(crate) fn new(
        len: u64,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        op: &'static str,
    ) -> Result<Mmap, BackendError> {
        Mmap::new_at(len, flags, fd, 0, op)
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, flags, fd, offset)`.
    pub(crate) fn new_at(
        len: u64,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        op: &'static str,
    ) -> Result<Mmap, BackendError> {
        Mmap::new_prot(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset,
            op,
        )
    }

    /// `mmap(NULL, len, prot, flags, fd, offset)`.
    pub(crate) fn new_prot(
        len: u64,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        op: &'static str,
    ) -> Result<Mmap, BackendError> {
        let len = usize::try_from(len).map_err(|_| invalid(op, "length exceeds usize"))?;
        let offset = libc::off_t::try_from(offset).map_err(|_| invalid(op, "offset too large"))?;
        let raw_fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping with a NULL hint never overlaps existing Rust
        // objects; the kernel validates len, flags and fd and we check the result.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, raw_fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(os_err(op));
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| invalid(op, "mmap returned NULL"))?;
        Ok(Mmap { ptr, len })
    }

    /// The start address.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The start pointer.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and owns
        // exclusively; nothing can use it after drop.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn invalid(op: &'static str, why: &str) -> BackendError {
    BackendError::Invalid {
        op,
        why: why.to_string(),
    }
}

/// Direction of a host transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// Copies `len` bytes between `local` and `[remote, remote+len)` of our own
/// address space with `process_vm_*`. Returns the number of bytes moved
/// before the first failure (`Err`) or `Ok` when all of them moved.
fn transfer(remote: usize, local: *mut u8, len: usize, dir: Dir) -> Result<(), usize> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let page = PAGE_SIZE as usize;
    let mut done = 0usize;
    let mut riov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    while done < len {
        riov.clear();
        let mut cur = remote + done;
        let end = remote + len;
        while cur < end && riov.len() < IOV_MAX {
            let next = ((cur / page) + 1) * page;
            let stop = next.min(end);
            riov.push(libc::iovec {
                iov_base: cur as *mut libc::c_void,
                iov_len: stop - cur,
            });
            cur = stop;
        }
        let chunk = cur - (remote + done);
        let liov = libc::iovec {
            // SAFETY: `done < len`, so the offset stays inside the caller's buffer.
            iov_base: unsafe { local.add(done) }.cast(),
            iov_len: chunk,
        };
        let n = match dir {
            // SAFETY: the local iovec covers `chunk` bytes of the caller's
            // exclusively borrowed buffer; the remote iovecs name addresses in
            // our own mapping, which the kernel accesses via GUP and reports
            // failures as EFAULT/short counts (no Rust reference aliases them).
            Dir::Read => unsafe {
                libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0)
            },
            // SAFETY: as above; the local buffer is only read by the kernel.
            Dir::Write => unsafe {
                libc::process_vm_writev(
                    pid,
                    &liov,
                    1,
                    riov.as_ptr(),
                    riov.len() as libc::c_ulong,
                    0,
                )
            },
        };
        if n < 0 {
            return Err(done);
        }
        let n = n as usize;
        done += n;
        if n < chunk {
            return Err(done);
        }
    }
    Ok(())
}

/// Checked host read of `buf.len()` bytes at `offset` of a mapping.
fn map_read(map: &Mmap, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
    let (len, fault_at) = clamp(map.len(), offset, buf.len() as u64);
    if len > 0 {
        transfer(
            map.addr() + offset as usize,
            buf.as_mut_ptr(),
            len as usize,
            Dir::Read,
        )
        .map_err(|done| HostFault {
            offset: offset + done as u64,
        })?;
    }
    fault_at.map_or(Ok(()), |o| Err(HostFault { offset: o }))
}

/// Checked host write of `data` at `offset` of a mapping.
fn map_write(map: &Mmap, offset: u64, data: &[u8]) -> Result<(), HostFault> {
    let (len, fault_at) = clamp(map.len(), offset, data.len() as u64);
    if len > 0 {
        // The kernel only reads the local buffer for process_vm_writev.
        let local = data.as_ptr().cast_mut();
        transfer(
            map.addr() + offset as usize,
            local,
            len as usize,
            Dir::Write,
        )
        .map_err(|done| HostFault {
            offset: offset + done as u64,
        })?;
    }
    fault_at.map_or(Ok(()), |o| Err(HostFault { offset: o }))
}

/// Host fill of `len` bytes at `offset`.
fn map_fill(map: &Mmap, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
    let chunk = vec![byte; len.min(FILL_CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(FILL_CHUNK);
        map_write(map, offset + done, &chunk[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// How much of `[offset, offset+len)` lies inside a mapping of `map_len`
/// bytes, and where the access runs off the end (the fault offset), if it does.
fn clamp(map_len: u64, offset: u64, len: u64) -> (u64, Option<u64>) {
    if len == 0 {
        return (0, None);
    }
    if offset >= map_len {
        return (0, Some(offset));
    }
    let end = offset.saturating_add(len);
    if end > map_len {
        (map_len - offset, Some(map_len))
    } else {
        (len, None)
    }
}

/// A host `mmap` of a guest_memfd. The mapping holds its own reference on
/// the file, so it stays valid after the fd is closed.
#[derive(Debug)]
pub struct KvmMapping {
    map: Mmap,
}

impl KvmMapping {
    /// Maps `len` bytes of `fd` read/write, shared or private.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: u64, shared: bool) -> Result<Self, BackendError> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        Ok(KvmMapping {
            map: Mmap::new(len, flags, Some(fd), "mmap")?,
        })
    }

    /// Maps `len` bytes of `fd` from offset 0 with `prot` and `flags`.
    pub(crate) fn with_prot(
        fd: BorrowedFd<'_>,
        len: u64,
        prot: libc::c_int,
        flags: libc::c_int,
    ) -> Result<Self, BackendError> {
        Ok(KvmMapping {
            map: Mmap::new_prot(len, prot, flags, Some(fd), 0, "mmap")?,
        })
    }

    /// Maps `[offset, offset+len)` of `fd` shared, read/write.
    pub(crate) fn new_at(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<Self, BackendError> {
        Ok(KvmMapping {
            map: Mmap::new_at(len, libc::MAP_SHARED, Some(fd), offset, "mmap")?,
        })
    }

    /// The host virtual address of the mapping.
    pub fn host_addr(&self) -> u64 {
        self.map.addr() as u64
    }
}

impl HostMemory for KvmMapping {
    fn len(&self) -> u64 {
        self.map.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        map_read(&self.map, offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        map_write(&self.map, offset, data)
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        map_fill(&self.map, offset, len, byte)
    }
}

#[derive(Debug)]
struct SharedInner {
    map: Mmap,
    kind: SharedKind,
    memfd: Option<OwnedFd>,
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
            return Err(invalid(
                "create_shared",
                "size must be a nonzero multiple of 4 KiB",
            ));
        }
        let inner = match kind {
            SharedKind::Anonymous => SharedInner {
                map: Mmap::new(
                    size,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    None,
                    "mmap",
                )?,
                kind,
                memfd: None,
            },
            SharedKind::Memfd => {
                let fd = memfd(size)?;
                let map = Mmap::new(
                    size,
                    libc::MAP_SHARED,
                    Some(std::os::fd::AsFd::as_fd(&fd)),
                    "mmap",
                )?;
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

    /// The host virtual address of byte `offset` (caller checks bounds).
    pub(crate) fn hva(&self, offset: u64) -> u64 {
        self.inner.map.addr() as u64 + offset
    }
}

fn memfd(size: u64) -> Result<OwnedFd, BackendError> {
    // SAFETY: the name is a NUL-terminated static string.
    let fd = unsafe { libc::memfd_create(c"privmem-shared".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("memfd_create"));
    }
    // SAFETY: memfd_create returned a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(|_| invalid("ftruncate", "size too large"))?;
    // SAFETY: ftruncate on an fd we own, no memory arguments.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(os_err("ftruncate"));
    }
    Ok(fd)
}

impl HostMemory for KvmShared {
    fn len(&self) -> u64 {
        self.inner.map.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        map_read(&self.inner.map, offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        map_write(&self.inner.map, offset, data)
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        map_fill(&self.inner.map, offset, len, byte)
    }
}

impl SharedMemory for KvmShared {
    fn kind(&self) -> SharedKind {
        self.inner.kind
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(invalid("discard", "offset and length must be page-aligned"));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.len()) {
            return Err(invalid("discard", "range exceeds the backing"));
        }
        if len == 0 {
            return Ok(());
        }
        match (&self.inner.memfd, self.inner.kind) {
            (Some(fd), SharedKind::Memfd) => {
                let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                // SAFETY: fallocate on a memfd we own; no memory arguments.
                let r = unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as i64, len as i64) };
                if r < 0 {
                    return Err(os_err("fallocate(PUNCH_HOLE)"));
                }
            }
            _ => {
                // SAFETY: the range is inside our own shared anonymous mapping
                // (bounds checked above); MADV_REMOVE frees the pages and later
                // reads see zeros. No Rust reference points into the mapping.
                let r = unsafe {
                    libc::madvise(
                        self.inner.map.as_ptr().add(offset as usize).cast(),
                        len as usize,
                        libc::MADV_REMOVE,
                    )
                };
                if r < 0 {
                    return Err(os_err("madvise(MADV_REMOVE)"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_inside_is_whole() {
        assert_eq!(clamp(8192, 4096, 4096), (4096, None));
    }

    #[test]
    fn clamp_straddling_end_faults_at_end() {
        assert_eq!(clamp(8192, 4096, 8192), (4096, Some(8192)));
    }

    #[test]
    fn clamp_past_end_faults_at_offset() {
        assert_eq!(clamp(8192, 9000, 1), (0, Some(9000)));
    }

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
}
