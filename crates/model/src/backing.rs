//! Page storage: a sparse `memfd`, freed with `fallocate(PUNCH_HOLE)`. A
//! 1 TiB file costs nothing until written.
//!
//! Bytes move through a shared mapping of the file ([`HostMap`], from
//! `privmem-mem`, the memory-mapping crate on rust-vmm's `vm-memory`) where
//! that is both faster and invisible, and with `pread`/`pwrite` elsewhere:
//!
//! - the file is mapped at the first access of at least [`MAP_MIN_IO`]
//!   bytes that finds data in its range ([`Memfd::mapped`]);
//! - once mapped, such accesses are split into runs of pages of the same
//!   residency (`mincore`); runs of resident pages (holding data) are
//!   copied through the mapping, with no per-page syscall work;
//! - runs of non-resident pages (holes, `fallocate`d but never written,
//!   swapped out) and smaller accesses use `pread`/`pwrite`, as before. A
//!   read through a shared mapping would allocate a page in a hole, a
//!   `pread` does not: the model's reads still never allocate (see the
//!   crate README), and on this PVM host writing a fresh page with
//!   `pwrite` is also ~1.7x cheaper than faulting it in, and leaves no page
//!   table entry for a later `PUNCH_HOLE` to zap;
//! - files larger than [`privmem_mem::MAX_MAP_LEN`] (1 TiB), or
//!   beyond the process's mapping budget, or whose mapping fails, are not
//!   mapped and use `pread`/`pwrite` throughout.
//!
//! The file is sealed with `F_SEAL_SHRINK | F_SEAL_GROW` (its size is
//! fixed, as a guest_memfd's is), so a load or store through the mapping
//! never runs past its end. `PUNCH_HOLE` zaps the mapping's pages: later
//! accesses see zeros, whichever path they take.
//!
//! Also the model's shared backing ([`ModelShared`]).

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use privmem_core::backend::{HostFault, HostMemory, SharedKind, SharedMemory};
use privmem_core::error::Result;
use privmem_core::{BackendError, Errno, PAGE_SIZE};
use privmem_mem::{HostMap, MapError, Residency};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags, SeekFrom};

/// Largest single I/O the model issues (bounds latency of a kick).
pub(crate) const MAX_IO: u64 = 1 << 20;
/// Fill/scratch buffer size used for repeated-byte writes.
const FILL_CHUNK: usize = 64 << 10;
/// Smallest access that goes through the mapping: below it one `mincore`
/// (~1 µs here) costs more than the `pread`/`pwrite` it would save.
pub(crate) const MAP_MIN_IO: u64 = 16 << 10;

fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

fn map_errno(e: MapError) -> Errno {
    Errno(e.errno())
}

/// A sparse memfd of a fixed size.
#[derive(Debug)]
pub(crate) struct Memfd {
    fd: OwnedFd,
    size: u64,
    /// The whole file, mapped shared once a bulk access found data in it
    /// ([`Memfd::mapped`]); `None` inside if it could not be mapped.
    map: OnceLock<Option<HostMap>>,
    /// False until the first write or fill: the file is all holes, so reads
    /// are zeros without a syscall ([`Memfd::never_written`]).
    written: AtomicBool,
}

impl Memfd {
    /// `memfd_create(name)` + `ftruncate(size)`, sealed against size
    /// changes. Not mapped yet (see [`Memfd::mapped`]).
    pub(crate) fn create(name: &str, size: u64) -> Result<Memfd, Errno> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = rustix::fs::memfd_create(name, flags).map_err(errno)?;
        rustix::fs::ftruncate(&fd, size).map_err(errno)?;
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&fd, seals).map_err(errno)?;
        Ok(Memfd {
            fd,
            size,
            map: OnceLock::new(),
            written: AtomicBool::new(false),
        })
    }

    /// True while nothing was ever written to the file: every byte is a
    /// hole (a fresh memfd; punches and `fallocate` only add zeros). The
    /// model writes its files only through [`Memfd::write_at`] and
    /// [`Memfd::fill_at`], which set the flag before the data lands; the fd
    /// handed out for a guest_memfd refuses `write`/`pwrite` in the kernel
    /// being modelled. A read racing with the first write may see zeros,
    /// as a racing read of guest memory may.
    ///
    /// A confidential guest's shared memory starts this way, so the reads
    /// that follow its implicit conversions to shared cost no `pread`.
    fn never_written(&self) -> bool {
        !self.written.load(Ordering::Acquire)
    }

    /// Records that data is about to land (before it does).
    fn will_write(&self) {
        if self.never_written() {
            self.written.store(true, Ordering::Release);
        }
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file is mapped (tests).
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        self.map.get().is_some_and(Option::is_some)
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

    /// The mapping, if `[off, off+len)` is worth accessing through it: the
    /// access is at least [`MAP_MIN_IO`] and inside the file (anything else
    /// keeps its `pread`/`pwrite` behaviour) and the file is mapped.
    ///
    /// The file is mapped on the first such access that finds data in its
    /// range (`SEEK_DATA`): a file only ever written fresh and punched
    /// (conversions) is never mapped, so its punches do not pay for
    /// walking a mapping (+0.3 µs per 4 KiB punch here).
    fn mapped(&self, off: u64, len: u64) -> Option<&HostMap> {
        let inside = off.checked_add(len).is_some_and(|end| end <= self.size);
        if len < MAP_MIN_IO || !inside {
            return None;
        }
        if let Some(map) = self.map.get() {
            return map.as_ref();
        }
        if !self.has_data(off, len) {
            return None;
        }
        // An unmapped file works through pread/pwrite alone.
        self.map
            .get_or_init(|| HostMap::new(self.fd.as_fd()).ok())
            .as_ref()
    }

    /// Whether `[off, off+len)` holds data (`lseek(SEEK_DATA)`; an error
    /// counts as data, which only means mapping the file).
    fn has_data(&self, off: u64, len: u64) -> bool {
        match rustix::fs::seek(&self.fd, SeekFrom::Data(off)) {
            Ok(data) => data < off + len,
            Err(e) => e != rustix::io::Errno::NXIO,
        }
    }

    /// Reads `buf.len()` bytes at `off` (holes read as zeros, and stay holes).
    pub(crate) fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if self.never_written() {
            buf.fill(0);
            return Ok(());
        }
        let Some(map) = self.mapped(off, buf.len() as u64) else {
            return self.pread_at(off, buf);
        };
        for_runs(map, off, buf.len() as u64, |at, n, resident| {
            let part = &mut buf[(at - off) as usize..][..n as usize];
            if resident {
                map.read(at, part).map_err(map_errno)?;
            } else {
                self.pread_at(at, part)?;
            }
            Ok(None::<()>)
        })?;
        Ok(())
    }

    /// `pread` of `buf.len()` bytes at `off`.
    fn pread_at(&self, mut off: u64, mut buf: &mut [u8]) -> Result<(), Errno> {
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
    pub(crate) fn write_at(&self, off: u64, data: &[u8]) -> Result<(), Errno> {
        self.will_write();
        let Some(map) = self.mapped(off, data.len() as u64) else {
            return self.pwrite_at(off, data);
        };
        for_runs(map, off, data.len() as u64, |at, n, resident| {
            let part = &data[(at - off) as usize..][..n as usize];
            if resident {
                map.prefault(at, n).map_err(map_errno)?;
                map.write(at, part).map_err(map_errno)?;
            } else {
                self.pwrite_at(at, part)?;
            }
            Ok(None::<()>)
        })?;
        Ok(())
    }

    /// `pwrite` of `data` at `off`.
    fn pwrite_at(&self, mut off: u64, mut data: &[u8]) -> Result<(), Errno> {
        self.will_write();
        while !data.is_empty() {
            let n = rustix::io::pwrite(&self.fd, data, off).map_err(errno)?;
            off += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes `len` copies of `byte` at `off`; `fill` is a buffer of `byte`s
    /// of any length, for the `pwritev` path.
    pub(crate) fn fill_at(&self, off: u64, len: u64, fill: &[u8]) -> Result<(), Errno> {
        debug_assert!(!fill.is_empty());
        self.will_write();
        let Some(map) = self.mapped(off, len) else {
            return self.pwritev_fill(off, len, fill);
        };
        for_runs(map, off, len, |at, n, resident| {
            if resident {
                map.prefault(at, n).map_err(map_errno)?;
                map.fill(at, n, fill[0]).map_err(map_errno)?;
            } else {
                self.pwritev_fill(at, n, fill)?;
            }
            Ok(None::<()>)
        })?;
        Ok(())
    }

    /// `pwritev` of `len` copies of `fill[0]` from `fill` (no allocation).
    fn pwritev_fill(&self, mut off: u64, mut len: u64, fill: &[u8]) -> Result<(), Errno> {
        self.will_write();
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

    /// The index (from `off`) and value of the first byte of `[off,
    /// off+len)` that is not `expect`. Resident pages are compared in
    /// place through the mapping; the rest is read through `scratch`
    /// ([`Memfd::pread_mismatch`]).
    pub(crate) fn find_mismatch(
        &self,
        off: u64,
        len: u64,
        expect: u8,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<(u64, u8)>, Errno> {
        if self.never_written() {
            return Ok((expect != 0 && len > 0).then_some((0, 0)));
        }
        let Some(map) = self.mapped(off, len) else {
            return self.pread_mismatch(off, len, expect, scratch);
        };
        for_runs(map, off, len, |at, n, resident| {
            let bad = if resident {
                map.find_not(at, n, expect).map_err(map_errno)?
            } else {
                self.pread_mismatch(at, n, expect, scratch)?
            };
            Ok(bad.map(|(i, seen)| (at - off + i, seen)))
        })
    }

    /// [`Memfd::find_mismatch`] with `pread`: `scratch` holds a read buffer
    /// and, after it, a buffer of `expect` bytes (kept between calls), so
    /// the common all-equal case is one slice comparison (libc's vectorised
    /// `bcmp`); only a mismatching chunk is scanned for the first bad byte.
    fn pread_mismatch(
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
            self.pread_at(off + done, buf)?;
            if *buf != pattern[..take] {
                if let Some(i) = first_not(buf, expect) {
                    return Ok(Some((done + i as u64, buf[i])));
                }
            }
            done += take as u64;
        }
        Ok(None)
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`, clamped to the file. The kernel
    /// also zaps the punched pages from the mapping.
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

/// Calls `f(at, n, resident)` for the runs of same-residency pages that
/// make up `[off, off+len)`, in order, until `f` returns `Some`. If
/// `mincore` fails, the rest counts as not resident (the `pread`/`pwrite`
/// path is correct for every page; the mapping is only faster).
fn for_runs<T>(
    map: &HostMap,
    off: u64,
    len: u64,
    mut f: impl FnMut(u64, u64, bool) -> Result<Option<T>, Errno>,
) -> Result<Option<T>, Errno> {
    let end = off + len;
    let mut at = off;
    while at < end {
        let run = map.resident_run(at, end - at).unwrap_or(Residency {
            resident: false,
            len: end - at,
        });
        if let Some(found) = f(at, run.len, run.resident)? {
            return Ok(Some(found));
        }
        at += run.len;
    }
    Ok(None)
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
    /// The VM's injection table, for backings a VM created.
    inject: Option<Arc<crate::inject::Injector>>,
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
        ModelShared::create(size, kind, None)
    }

    /// [`ModelShared::new`], with discards failing where `inject` says
    /// ([`InjectOp::DiscardShared`](crate::InjectOp::DiscardShared)).
    pub(crate) fn create(
        size: u64,
        kind: SharedKind,
        inject: Option<Arc<crate::inject::Injector>>,
    ) -> Result<ModelShared> {
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
                inject,
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
            return (0, (want > 0).then_some(HostFault::segv(offset)));
        }
        let ok = want.min(len - offset);
        let fault = (ok < want).then_some(HostFault::segv(len));
        (ok, fault)
    }
}

fn host_io(e: Errno, offset: u64) -> HostFault {
    // An I/O error on the backing memfd is reported as a host fault: the
    // trait has no other error channel, and real loads/stores would SIGBUS.
    let _ = e;
    HostFault::bus(offset)
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
        let injected = self
            .inner
            .inject
            .as_ref()
            .and_then(|i| i.check(crate::InjectOp::DiscardShared));
        if let Some(errno) = injected {
            return Err(BackendError::os(OP, errno));
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
mod tests;
