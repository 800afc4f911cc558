//! Kernel-mediated host access to a [`Mapping`], for memory where a CPU
//! load or store could raise SIGBUS.
//!
//! # Why `process_vm_readv`/`process_vm_writev`
//!
//! A host load or store to a guest_memfd page beyond `i_size`, or to any
//! page of a guest_memfd created without `INIT_SHARED`, raises **SIGBUS**
//! (`kvm_gmem_fault_user_mapping` returns `VM_FAULT_SIGBUS`;
//! docs/semantics/guest-memfd.md, "`mmap` and host faults"). privmem must
//! never die from that. Instead of touching the mapping with CPU loads and
//! stores, these accessors copy with `process_vm_readv`/`process_vm_writev`
//! on our own pid: the kernel faults the pages in on our behalf (GUP) and
//! reports a failing page as `EFAULT` or a short count instead of a signal.
//! The mapping side is split into page-sized iovecs so the count tells
//! exactly how far the copy got: bytes before the fault have landed, and
//! [`Fault::offset`] is the first byte that did not.

use crate::error::Fault;
use crate::mapping::{Mapping, PAGE_SIZE};

/// Most remote iovecs per `process_vm_*` call (`IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Size of the pattern buffer [`Mapping::fill_checked`] writes from.
const FILL_CHUNK: u64 = 1 << 20;

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Mapping → caller's buffer.
    Read,
    /// Caller's buffer → mapping.
    Write,
}

/// A caller-owned buffer on the local side of a transfer.
enum Local<'a> {
    /// Filled by a read.
    Into(&'a mut [u8]),
    /// Read by a write.
    From(&'a [u8]),
}

impl Local<'_> {
    fn len(&self) -> usize {
        match self {
            Local::Into(b) => b.len(),
            Local::From(b) => b.len(),
        }
    }

    fn dir(&self) -> Dir {
        match self {
            Local::Into(_) => Dir::Read,
            Local::From(_) => Dir::Write,
        }
    }

    /// The iovec of `[at, at+len)` of the buffer (`at + len <= self.len()`).
    fn iovec(&mut self, at: usize, len: usize) -> libc::iovec {
        let base = match self {
            Local::Into(b) => b[at..at + len].as_mut_ptr(),
            // The kernel only reads the local buffer of process_vm_writev.
            Local::From(b) => b[at..at + len].as_ptr().cast_mut(),
        };
        libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }
    }
}

impl Mapping {
    /// Copies `buf.len()` bytes at `offset` into `buf` through the kernel.
    /// Never raises SIGBUS.
    ///
    /// # Errors
    /// A [`Fault`] at the first byte that could not be read: one the kernel
    /// refused (e.g. a private or truncated guest_memfd page) or the first
    /// byte past the mapping. Every byte before it was copied.
    pub fn read_checked(&self, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.transfer(offset, Local::Into(buf))
    }

    /// Copies `data` to `offset` through the kernel. Never raises SIGBUS.
    ///
    /// # Errors
    /// As [`Mapping::read_checked`]; every byte before the fault landed.
    pub fn write_checked(&self, offset: u64, data: &[u8]) -> Result<(), Fault> {
        self.transfer(offset, Local::From(data))
    }

    /// Stores `len` copies of `byte` at `offset` through the kernel, from a
    /// pattern buffer of at most 1 MiB. Never raises SIGBUS.
    ///
    /// # Errors
    /// As [`Mapping::write_checked`].
    pub fn fill_checked(&self, offset: u64, len: u64, byte: u8) -> Result<(), Fault> {
        let chunk = vec![byte; len.min(FILL_CHUNK) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(FILL_CHUNK);
            self.write_checked(offset.saturating_add(done), &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Moves the part of `[offset, offset+local.len())` inside the mapping,
    /// then reports a fault at the mapping's end if the range ran past it.
    fn transfer(&self, offset: u64, mut local: Local<'_>) -> Result<(), Fault> {
        let (len, past_end) = clamp(self.len(), offset, local.len() as u64);
        if len > 0 {
            let slice = self
                .checked_slice("transfer", offset, len)
                .map_err(|_| Fault { offset })?;
            let remote = slice.ptr_guard_mut().as_ptr() as usize;
            copy(remote, &mut local, len as usize).map_err(|done| Fault {
                offset: offset + done as u64,
            })?;
        }
        past_end.map_or(Ok(()), |o| Err(Fault { offset: o }))
    }
}

/// How much of `[offset, offset+len)` lies inside a mapping of `map_len`
/// bytes, and where the access runs off the end (the fault offset), if it
/// does.
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

/// Copies the first `len` bytes of `local` to or from `[remote,
/// remote+len)` of our own address space with `process_vm_*`. `Err` holds
/// the number of bytes moved before the first failure.
///
/// `remote` must come from a bounds-checked slice of a live mapping; the
/// kernel checks every page anyway (a bad one is an error, never a signal).
fn copy(remote: usize, local: &mut Local<'_>, len: usize) -> Result<(), usize> {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let page = PAGE_SIZE as usize;
    let mut done = 0usize;
    let mut riov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    while done < len {
        riov.clear();
        let mut cur = remote + done;
        let end = remote + len;
        while cur < end && riov.len() < IOV_MAX {
            let stop = ((cur / page + 1) * page).min(end);
            riov.push(libc::iovec {
                iov_base: cur as *mut libc::c_void,
                iov_len: stop - cur,
            });
            cur = stop;
        }
        let chunk = cur - (remote + done);
        let liov = local.iovec(done, chunk);
        let count = riov.len() as libc::c_ulong;
        let n = match local.dir() {
            // SAFETY: the local iovec covers `chunk` bytes of the caller's
            // exclusively borrowed buffer; the remote iovecs name addresses
            // of our own live mapping, which the kernel accesses through GUP,
            // reporting failures as EFAULT or a short count. No Rust
            // reference aliases the mapping.
            Dir::Read => unsafe { libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), count, 0) },
            // SAFETY: as above; the kernel only reads the local buffer.
            Dir::Write => unsafe {
                libc::process_vm_writev(pid, &liov, 1, riov.as_ptr(), count, 0)
            },
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(done);
        };
        done += n;
        if n < chunk {
            return Err(done);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn clamp_inside_is_whole() {
        assert_eq!(clamp(8192, 4096, 4096), (4096, None));
        assert_eq!(clamp(8192, 4096, 0), (0, None));
    }

    #[test]
    fn clamp_straddling_end_faults_at_end() {
        assert_eq!(clamp(8192, 4096, 8192), (4096, Some(8192)));
        assert_eq!(clamp(8192, 4096, u64::MAX), (4096, Some(8192)));
    }

    #[test]
    fn clamp_past_end_faults_at_offset() {
        assert_eq!(clamp(8192, 9000, 1), (0, Some(9000)));
    }

    #[test]
    fn write_past_end_lands_prefix_and_faults() {
        let m = Mapping::anonymous(P).unwrap();
        let err = m.write_checked(P - 2, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(err.offset, P);
        let mut buf = [0u8; 2];
        m.read_checked(P - 2, &mut buf).unwrap();
        assert_eq!(buf, [1, 2]);
        let mut far = [0u8; 1];
        assert_eq!(
            m.read_checked(P + 7, &mut far),
            Err(Fault { offset: P + 7 })
        );
    }

    #[test]
    fn pages_past_the_end_of_the_file_fault_instead_of_sigbus() {
        // A CPU store to the second page would raise SIGBUS: the file ends
        // after one page (as a guest_memfd access beyond i_size does).
        use crate::memfd::{Memfd, Seal};
        use crate::Share;
        use std::os::fd::AsFd;
        let f = Memfd::create("t", P, Seal::None).unwrap();
        let m = Mapping::file(f.as_fd(), 0, 2 * P, Share::Shared).unwrap();
        let err = m.write_checked(P - 2, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(err, Fault { offset: P });
        let mut b = [0u8; 4];
        assert_eq!(m.read_checked(P - 2, &mut b), Err(Fault { offset: P }));
        assert_eq!(&b[..2], &[1, 2]);
        assert_eq!(m.fill_checked(P, 5, 9), Err(Fault { offset: P }));
    }

    #[test]
    fn copies_span_many_iovec_batches() {
        // More than IOV_MAX pages, starting mid-page.
        let pages = IOV_MAX as u64 + 3;
        let m = Mapping::anonymous(pages * P).unwrap();
        let data: Vec<u8> = (0..(pages - 1) * P).map(|i| (i % 251) as u8).collect();
        m.write_checked(100, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_checked(100, &mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn fill_covers_exactly_its_range() {
        let m = Mapping::anonymous(300 * P).unwrap();
        let len = FILL_CHUNK + 3 * P + 1;
        m.fill_checked(7, len, 0x5a).unwrap();
        let mut back = vec![0u8; (300 * P) as usize];
        m.read_checked(0, &mut back).unwrap();
        let end = (7 + len) as usize;
        assert!(back[..7].iter().all(|&b| b == 0));
        assert!(back[7..end].iter().all(|&b| b == 0x5a));
        assert!(back[end..].iter().all(|&b| b == 0));
    }
}
