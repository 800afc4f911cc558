//! Page storage: a sparse `memfd` accessed with `pread`/`pwrite` and freed
//! with `fallocate(PUNCH_HOLE)`. A 1 TiB file costs nothing until written.
//!
//! Also the model's shared backing ([`ModelShared`]).

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use privmem_core::backend::{HostFault, HostMemory, SharedKind, SharedMemory};
use privmem_core::error::Result;
use privmem_core::{BackendError, Errno, PAGE_SIZE};
use rustix::fs::{FallocateFlags, MemfdFlags};

/// Largest single I/O the model issues (bounds latency of a kick).
pub(crate) const MAX_IO: u64 = 1 << 20;
/// Fill/scratch buffer size used for repeated-byte writes.
const FILL_CHUNK: usize = 64 << 10;

fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

/// A sparse memfd of a fixed size.
#[derive(Debug)]
pub(crate) struct Memfd {
    fd: OwnedFd,
    size: u64,
}

impl Memfd {
    /// `memfd_create(name)` + `ftruncate(size)`.
    pub(crate) fn create(name: &str, size: u64) -> Result<Memfd, Errno> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC).map_err(errno)?;
        rustix::fs::ftruncate(&fd, size).map_err(errno)?;
        Ok(Memfd { fd, size })
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// A `dup` of the fd.
    pub(crate) fn dup(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// `(st_dev, st_ino)`: the identity used to recognise the fd later.
    pub(crate) fn identity(&self) -> Result<(u64, u64), Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(errno)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Reads `buf.len()` bytes at `off` (holes read as zeros).
    pub(crate) fn read_at(&self, mut off: u64, mut buf: &mut [u8]) -> Result<(), Errno> {
        while !buf.is_empty() {
            let n = rustix::io::pread(&self.fd, &mut *buf, off).map_err(errno)?;
            if n == 0 {
                // Past EOF: cannot happen for in-bounds callers; read as zeros.
                buf.fill(0);
                return Ok(());
            }
            off += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Writes `data` at `off`.
    pub(crate) fn write_at(&self, mut off: u64, mut data: &[u8]) -> Result<(), Errno> {
        while !data.is_empty() {
            let n = rustix::io::pwrite(&self.fd, data, off).map_err(errno)?;
            off += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes `len` copies of `byte` at `off`, using `fill` (a buffer of
    /// `byte`s of any length) with `pwritev` to avoid per-call allocation.
    pub(crate) fn fill_at(&self, mut off: u64, mut len: u64, fill: &[u8]) -> Result<(), Errno> {
        debug_assert!(!fill.is_empty());
        while len > 0 {
            let mut slices: [IoSlice<'_>; 16] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut n = 0;
            let mut planned = 0u64;
            while n < slices.len() && planned < len {
                let take = (fill.len() as u64).min(len - planned) as usize;
                slices[n] = IoSlice::new(&fill[..take]);
                planned += take as u64;
                n += 1;
            }
            let done = rustix::io::pwritev(&self.fd, &slices[..n], off).map_err(errno)? as u64;
            off += done;
            len -= done;
        }
        Ok(())
    }

    /// Reads `[off, off+len)` through `scratch` and returns the index (from
    /// `off`) and value of the first byte that is not `expect`.
    ///
    /// `scratch` holds a read buffer and, after it, a buffer of `expect`
    /// bytes (kept between calls), so the common all-equal case is one
    /// slice comparison (libc's vectorised `bcmp`); only a mismatching chunk
    /// is scanned for the first bad byte.
    pub(crate) fn find_mismatch(
        &self,
        off: u64,
        len: u64,
        expect: u8,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<(u64, u8)>, Errno> {
        // The pattern half starts as zeros: a valid pattern of 0.
        let (read, pattern) = aligned(scratch, 2 * FILL_CHUNK).split_at_mut(FILL_CHUNK);
        // The pattern half is only ever filled whole, so two bytes tell.
        if pattern[0] != expect || pattern[FILL_CHUNK - 1] != expect {
            pattern.fill(expect);
        }
        let mut done = 0u64;
        while done < len {
            let take = (len - done).min(FILL_CHUNK as u64) as usize;
            let buf = &mut read[..take];
            self.read_at(off + done, buf)?;
            if *buf != pattern[..take] {
                if let Some(i) = first_not(buf, expect) {
                    return Ok(Some((done + i as u64, buf[i])));
                }
            }
            done += take as u64;
        }
        Ok(None)
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`, clamped to the file.
    pub(crate) fn punch(&self, off: u64, len: u64) -> Result<(), Errno> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return Ok(());
        }
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.fd, mode, off, end - off).map_err(errno)
    }

    /// `fallocate(KEEP_SIZE)`: allocates (zeroed where holes were).
    pub(crate) fn allocate(&self, off: u64, len: u64) -> Result<(), Errno> {
        rustix::fs::fallocate(&self.fd, FallocateFlags::KEEP_SIZE, off, len).map_err(errno)
    }

    /// Number of 4 KiB pages the memfd currently holds (`st_blocks`).
    pub(crate) fn allocated_pages(&self) -> Result<u64, Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(errno)?;
        Ok((st.st_blocks as u64 * 512).div_ceil(PAGE_SIZE))
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Index of the first byte of `buf` that is not `expect`: 256-byte blocks
/// OR-reduced without early exit (the compiler vectorises the block), then
/// the offending block or the tail byte by byte.
pub(crate) fn first_not(buf: &[u8], expect: u8) -> Option<usize> {
    const BLOCK: usize = 256;
    let mut blocks = buf.chunks_exact(BLOCK);
    let mut base = 0usize;
    for b in blocks.by_ref() {
        let diff = b.iter().fold(0u8, |acc, &x| acc | (x ^ expect));
        if diff != 0 {
            return b.iter().position(|&x| x != expect).map(|i| base + i);
        }
        base += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(|&x| x != expect)
        .map(|i| base + i)
}

/// Alignment of the model's I/O buffers. The kernel copies between user
/// buffers and page-cache pages with `rep movsb`, which on this host's CPUs
/// runs 2x slower when the user address sits 8-24 bytes past the page
/// offset of the page (a `malloc` of 128 KiB or more returns exactly such an
/// address: page + 16). Measured: `pread` of 4 KiB into a buffer at page
/// offset 16 takes 2.5 µs, at offset 0, 32 or 64 0.5 µs.
const IO_ALIGN: usize = 64;

/// `len` bytes of `buf` starting at an [`IO_ALIGN`]-aligned address (the
/// buffer grows once; its contents are unspecified).
pub(crate) fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len + IO_ALIGN {
        buf.clear();
        buf.resize(len + IO_ALIGN, 0);
    }
    let pad = buf.as_ptr().align_offset(IO_ALIGN).min(IO_ALIGN);
    &mut buf[pad..pad + len]
}

/// A buffer of `byte`s ([`IO_ALIGN`]-aligned), rebuilt only when the byte
/// changes.
#[derive(Debug, Default)]
pub(crate) struct FillBuf {
    byte: Option<u8>,
    buf: Vec<u8>,
}

impl FillBuf {
    /// A slice of at least one `byte` (64 KiB).
    pub(crate) fn get(&mut self, byte: u8) -> &[u8] {
        let fresh = self.buf.is_empty();
        let slice = aligned(&mut self.buf, FILL_CHUNK);
        if fresh || self.byte != Some(byte) {
            slice.fill(byte);
            self.byte = Some(byte);
        }
        slice
    }
}

static NEXT_SHARED_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct SharedInner {
    id: u64,
    mem: Memfd,
    kind: SharedKind,
    discarded_pages: AtomicU64,
}

/// The model's shared backing for `userspace_addr`: a memfd of `len` bytes.
///
/// Both [`SharedKind`]s are memfd-backed; the kind is recorded, and discard is
/// `fallocate(PUNCH_HOLE)` for both.
#[derive(Clone, Debug)]
pub struct ModelShared {
    inner: Arc<SharedInner>,
}

impl ModelShared {
    /// Allocates a zeroed backing of `size` bytes (page-aligned, nonzero).
    ///
    /// # Errors
    /// `Invalid` for a zero or unaligned size; `Os` if the memfd fails.
    pub fn new(size: u64, kind: SharedKind) -> Result<ModelShared> {
        const OP: &str = "create_shared";
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(BackendError::Invalid {
                op: OP,
                why: format!("size {size:#x} is not a nonzero multiple of 4 KiB"),
            });
        }
        let mem = Memfd::create("privmem-shared", size).map_err(|e| BackendError::os(OP, e))?;
        Ok(ModelShared {
            inner: Arc::new(SharedInner {
                id: NEXT_SHARED_ID.fetch_add(1, Ordering::Relaxed),
                mem,
                kind,
                discarded_pages: AtomicU64::new(0),
            }),
        })
    }

    /// A unique id (the model's stand-in for the mapping's HVA).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Pages currently allocated in the backing.
    pub fn allocated_pages(&self) -> u64 {
        self.inner.mem.allocated_pages().unwrap_or(0)
    }

    /// Total pages passed to [`SharedMemory::discard`] so far.
    pub fn discarded_pages(&self) -> u64 {
        self.inner.discarded_pages.load(Ordering::Relaxed)
    }

    pub(crate) fn memfd(&self) -> &Memfd {
        &self.inner.mem
    }

    /// Bytes of `[offset, offset+want)` inside the backing, or a fault at
    /// the first byte outside it.
    fn clamp(&self, offset: u64, want: u64) -> (u64, Option<HostFault>) {
        let len = self.inner.mem.size();
        if offset >= len {
            return (0, (want > 0).then_some(HostFault { offset }));
        }
        let ok = want.min(len - offset);
        let fault = (ok < want).then_some(HostFault { offset: len });
        (ok, fault)
    }
}

fn host_io(e: Errno, offset: u64) -> HostFault {
    // An I/O error on the backing memfd is reported as a host fault: the
    // trait has no other error channel, and real loads/stores would SIGBUS.
    let _ = e;
    HostFault { offset }
}

impl HostMemory for ModelShared {
    fn len(&self) -> u64 {
        self.inner.mem.size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HostFault> {
        let (ok, fault) = self.clamp(offset, buf.len() as u64);
        let mem = &self.inner.mem;
        mem.read_at(offset, &mut buf[..ok as usize])
            .map_err(|e| host_io(e, offset))?;
        fault.map_or(Ok(()), Err)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), HostFault> {
        let (ok, fault) = self.clamp(offset, data.len() as u64);
        let mem = &self.inner.mem;
        mem.write_at(offset, &data[..ok as usize])
            .map_err(|e| host_io(e, offset))?;
        fault.map_or(Ok(()), Err)
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), HostFault> {
        let (ok, fault) = self.clamp(offset, len);
        if ok > 0 {
            let mut v = Vec::new();
            let fill = aligned(&mut v, ok.min(FILL_CHUNK as u64) as usize);
            fill.fill(byte);
            let mem = &self.inner.mem;
            mem.fill_at(offset, ok, fill)
                .map_err(|e| host_io(e, offset))?;
        }
        fault.map_or(Ok(()), Err)
    }
}

impl SharedMemory for ModelShared {
    fn kind(&self) -> SharedKind {
        self.inner.kind
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        const OP: &str = "discard";
        let end = offset.checked_add(len);
        if !offset.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || end.is_none_or(|e| e > self.len())
        {
            return Err(BackendError::Invalid {
                op: OP,
                why: format!("range {offset:#x}+{len:#x} is unaligned or outside the backing"),
            });
        }
        self.inner
            .mem
            .punch(offset, len)
            .map_err(|e| BackendError::os(OP, e))?;
        self.inner
            .discarded_pages
            .fetch_add(len / PAGE_SIZE, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_of_2_pow_62_bytes_creates_without_allocating() {
        let m = Memfd::create("t", 1 << 62).unwrap();
        assert_eq!(m.allocated_pages().unwrap(), 0);
    }

    #[test]
    fn memfd_punch_frees_and_zeroes() {
        let m = Memfd::create("t", 4 * PAGE_SIZE).unwrap();
        m.fill_at(0, 4 * PAGE_SIZE, &[0xaa; 100]).unwrap();
        assert_eq!(m.allocated_pages().unwrap(), 4);
        m.punch(PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(m.allocated_pages().unwrap(), 3);
        let mut buf = vec![0u8; 4096];
        m.read_at(PAGE_SIZE, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn find_mismatch_reports_first_bad_byte() {
        let m = Memfd::create("t", 2 * PAGE_SIZE).unwrap();
        m.fill_at(0, 2 * PAGE_SIZE, &[7; 3]).unwrap();
        m.write_at(5000, &[9]).unwrap();
        let mut scratch = Vec::new();
        let r = m.find_mismatch(0, 2 * PAGE_SIZE, 7, &mut scratch).unwrap();
        assert_eq!(r, Some((5000, 9)));
    }

    #[test]
    fn first_not_finds_every_position_across_blocks() {
        for at in [0usize, 7, 63, 64, 255, 256, 257, 511, 600, 700] {
            let mut v = vec![3u8; 701];
            v[at] = 4;
            assert_eq!(first_not(&v, 3), Some(at));
        }
        assert_eq!(first_not(&[3u8; 701], 3), None);
    }

    #[test]
    fn aligned_buffers_start_on_64_bytes() {
        for len in [1usize, 100, 4096, 1 << 17] {
            let mut v = Vec::new();
            let b = aligned(&mut v, len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        }
        let mut f = FillBuf::default();
        assert!(f.get(7).iter().all(|&b| b == 7));
        assert_eq!(f.get(7).as_ptr() as usize % IO_ALIGN, 0);
        assert!(f.get(9).iter().all(|&b| b == 9));
    }

    #[test]
    fn find_mismatch_tracks_a_changing_expected_byte() {
        let m = Memfd::create("t", 2 * PAGE_SIZE).unwrap();
        let mut scratch = Vec::new();
        // Zeros match 0; after filling with 5 they match 5 and not 0.
        assert_eq!(m.find_mismatch(0, 8192, 0, &mut scratch).unwrap(), None);
        m.fill_at(0, 2 * PAGE_SIZE, &[5; 7]).unwrap();
        assert_eq!(m.find_mismatch(0, 8192, 5, &mut scratch).unwrap(), None);
        assert_eq!(
            m.find_mismatch(0, 8192, 0, &mut scratch).unwrap(),
            Some((0, 5))
        );
        m.write_at(8191, &[6]).unwrap();
        assert_eq!(
            m.find_mismatch(0, 8192, 5, &mut scratch).unwrap(),
            Some((8191, 6))
        );
    }

    #[test]
    fn first_not_handles_tail() {
        let mut v = vec![1u8; 19];
        v[17] = 2;
        assert_eq!(first_not(&v, 1), Some(17));
        assert_eq!(first_not(&v[..17], 1), None);
    }

    #[test]
    fn shared_write_past_end_faults_after_landing_prefix() {
        let s = ModelShared::new(PAGE_SIZE, SharedKind::Memfd).unwrap();
        let r = s.fill(4000, 200, 0x5a);
        assert_eq!(r, Err(HostFault { offset: 4096 }));
        let mut b = [0u8; 96];
        s.read(4000, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0x5a));
    }

    #[test]
    fn shared_discard_unaligned_is_invalid() {
        let s = ModelShared::new(PAGE_SIZE, SharedKind::Anonymous).unwrap();
        assert!(matches!(
            s.discard(1, 4096),
            Err(BackendError::Invalid { .. })
        ));
    }

    #[test]
    fn shared_discard_frees_pages() {
        let s = ModelShared::new(2 * PAGE_SIZE, SharedKind::Anonymous).unwrap();
        s.fill(0, 2 * PAGE_SIZE, 1).unwrap();
        s.discard(0, PAGE_SIZE).unwrap();
        assert_eq!(s.allocated_pages(), 1);
        assert_eq!(s.discarded_pages(), 1);
    }
}
