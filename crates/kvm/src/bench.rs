//! Baselines for `privmem bench`: the bare kernel work privmem is measured
//! against, done here because it needs `unsafe` (raw ioctls, a mapping
//! handed out as a slice, an allocator).
//!
//! - [`raw_run_until_hlt`]: a bare loop of `KVM_RUN` on a privmem vCPU,
//!   counting exits (the `exit` baseline);
//! - [`BareMemfd`]: a sparse memfd with `fallocate(PUNCH_HOLE)` and a plain
//!   mmap for `memset`/compare (the `fault`, `convert` and `access`
//!   baselines);
//! - [`bare_gmem_vm`]: `KVM_CREATE_VM` + `KVM_CREATE_GUEST_MEMFD` +
//!   `KVM_SET_USER_MEMORY_REGION2` and nothing else (the `scale` baseline);
//! - [`CountingAlloc`]: a per-thread byte count of live heap memory (the
//!   `attrmap` memory figure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use privmem_core::abi::{KVM_EXIT_HLT, KVM_EXIT_IO, OFF_EXIT_REASON};
use privmem_core::backend::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD};
use privmem_core::{BackendError, Errno, GmemFlags};

use crate::mem::Mmap;
use crate::sys::{self, os_err};
use kvm_bindings::{kvm_create_guest_memfd, kvm_userspace_memory_region2 as MemoryRegion2, KVMIO};
use vmm_sys_util::ioctl::ioctl_with_ref;

// Raw, like `bare_default_vm`: the baseline's VM is a bare fd (no
// kvm-ioctls `VmFd`), so its setup costs the kernel calls alone.
mod raw {
    use super::{kvm_create_guest_memfd, MemoryRegion2, KVMIO};
    vmm_sys_util::ioctl_iowr_nr!(KVM_CREATE_GUEST_MEMFD, KVMIO, 0xd4, kvm_create_guest_memfd);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION2, KVMIO, 0x49, MemoryRegion2);
}
use raw::{KVM_CREATE_GUEST_MEMFD, KVM_SET_USER_MEMORY_REGION2};

/// `KVM_CREATE_GUEST_MEMFD` on a bare VM fd.
fn bare_create_gmem(vm: BorrowedFd<'_>, size: u64, flags: u64) -> Result<OwnedFd, BackendError> {
    let arg = kvm_create_guest_memfd {
        size,
        flags,
        ..Default::default()
    };
    // SAFETY: `arg` is a live kvm_create_guest_memfd the kernel only reads.
    let fd = unsafe { ioctl_with_ref(&vm, KVM_CREATE_GUEST_MEMFD(), &arg) };
    if fd < 0 {
        return Err(os_err("KVM_CREATE_GUEST_MEMFD"));
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `KVM_SET_USER_MEMORY_REGION2` on a bare VM fd.
///
/// # Safety
/// `r.userspace_addr` must be 0 or inside a mapping of `r.memory_size`
/// bytes that outlives the slot.
unsafe fn bare_set_region2(vm: BorrowedFd<'_>, r: &MemoryRegion2) -> Result<(), BackendError> {
    // SAFETY: `r` is a live struct the kernel only reads; the caller
    // guarantees the address it names.
    if unsafe { ioctl_with_ref(&vm, KVM_SET_USER_MEMORY_REGION2(), r) } < 0 {
        return Err(os_err("KVM_SET_USER_MEMORY_REGION2"));
    }
    Ok(())
}
use crate::vcpu::KvmVcpu;

/// `EINTR`.
const EINTR: i32 = 4;

fn invalid(op: &'static str, why: String) -> BackendError {
    BackendError::Invalid { op, why }
}

/// Runs `vcpu` with bare `KVM_RUN` ioctls until it halts: no decoding, no
/// handling, only a read of `exit_reason`. Returns the number of
/// `KVM_EXIT_IO` exits (every other exit but `KVM_EXIT_HLT` is an error).
/// Load the program first ([`privmem_core::Vcpu::load_program`]).
///
/// # Errors
/// `Os` if `KVM_RUN` fails (EINTR is retried); `Invalid` on an unexpected
/// exit reason or after more than `max_exits` exits.
pub fn raw_run_until_hlt(vcpu: &KvmVcpu, max_exits: u64) -> Result<u64, BackendError> {
    let (fd, run) = vcpu.raw_parts();
    let mut io = 0u64;
    loop {
        match sys::run(fd) {
            Ok(()) => {}
            Err(EINTR) => continue,
            Err(e) => return Err(BackendError::os("KVM_RUN", Errno(e))),
        }
        // SAFETY: `exit_reason` (u32, 4-aligned) lies at offset 8 of the
        // kvm_run mapping (at least one page), which `vcpu` keeps mapped; the
        // kernel wrote it before KVM_RUN returned on this thread.
        let reason =
            unsafe { std::ptr::read_volatile(run.as_ptr().add(OFF_EXIT_REASON).cast::<u32>()) };
        match reason {
            KVM_EXIT_IO => io += 1,
            KVM_EXIT_HLT => return Ok(io),
            other => {
                return Err(invalid(
                    "KVM_RUN",
                    format!("unexpected exit reason {other} after {io} I/O exits"),
                ))
            }
        }
        if io > max_exits {
            return Err(invalid("KVM_RUN", format!("more than {max_exits} exits")));
        }
    }
}

/// A sparse memfd of a fixed size that nobody else can truncate.
#[derive(Debug)]
pub struct BareMemfd {
    fd: OwnedFd,
    size: u64,
}

impl BareMemfd {
    /// `memfd_create` + `ftruncate(size)`.
    ///
    /// # Errors
    /// `Os` if either call fails.
    pub fn new(size: u64) -> Result<BareMemfd, BackendError> {
        // SAFETY: the name is a NUL-terminated static string.
        let fd = unsafe { libc::memfd_create(c"privmem-bench".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_err("memfd_create"));
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = libc::off_t::try_from(size)
            .map_err(|_| invalid("ftruncate", format!("size {size:#x} too large")))?;
        // SAFETY: ftruncate on an fd we own; no memory arguments.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
            return Err(os_err("ftruncate"));
        }
        Ok(BareMemfd { fd, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE, off, len)`.
    ///
    /// # Errors
    /// `Os` if the call fails.
    pub fn punch(&self, off: u64, len: u64) -> Result<(), BackendError> {
        let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
            return Err(invalid("fallocate", "range beyond i64".into()));
        };
        let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an fd we own; no memory arguments.
        if unsafe { libc::fallocate(self.fd.as_raw_fd(), mode, off, len) } < 0 {
            return Err(os_err("fallocate"));
        }
        Ok(())
    }

    /// A `dup` of the fd as a `File`, for plain `pread`/`pwrite`.
    ///
    /// # Errors
    /// `Os` if `dup` fails.
    pub fn file(&self) -> Result<File, BackendError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| BackendError::os("dup", Errno::from_io(&e)))?;
        Ok(File::from(fd))
    }

    /// Writes `len` bytes of `byte` at `off` with `pwrite` (allocating the
    /// pages without mapping them, as the model writes its memfds).
    ///
    /// # Errors
    /// `Os` if a write fails.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), BackendError> {
        let file = self.file()?;
        let buf = vec![byte; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&file, &buf[..n], off + done)
                .map_err(|e| BackendError::os("pwrite", Errno::from_io(&e)))?;
            done += n as u64;
        }
        Ok(())
    }

    /// Maps the whole file shared, read/write.
    ///
    /// # Errors
    /// `Os` if `mmap` fails.
    pub fn map(&self) -> Result<BareMap, BackendError> {
        let map = Mmap::new(self.size, libc::MAP_SHARED, Some(self.fd.as_fd()), "mmap")?;
        Ok(BareMap { map })
    }
}

/// A shared mapping of a [`BareMemfd`], accessed with plain loads and stores.
#[derive(Debug)]
pub struct BareMap {
    map: Mmap,
}

impl BareMap {
    /// The mapped bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = usize::try_from(self.map.len()).unwrap_or(0);
        // SAFETY: the mapping covers `len` bytes of a memfd whose size was
        // fixed at creation and that only `BareMemfd` can truncate (it never
        // does), so every byte is backed and no access raises SIGBUS; the
        // mapping lives as long as `self`, and `&mut self` makes this the
        // only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), len) }
    }
}

/// `/dev/kvm`, opened once for [`bare_gmem_vm`].
#[derive(Debug)]
pub struct DevKvm {
    file: File,
}

impl DevKvm {
    /// Opens `/dev/kvm` read/write.
    ///
    /// # Errors
    /// `Os` if it cannot be opened.
    pub fn open() -> Result<DevKvm, BackendError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| BackendError::os("open(/dev/kvm)", Errno::from_io(&e)))?;
        Ok(DevKvm { file })
    }
}

/// A VM built by [`bare_gmem_vm`] or [`bare_memfd_vm`]; dropping it
/// destroys the VM.
#[derive(Debug)]
pub struct BareVm {
    // Field order is drop order: the mapping, then the VM (which drops the
    // slot), then the backing file.
    _map: Option<Mmap>,
    _vm: OwnedFd,
    _file: OwnedFd,
}

/// `KVM_CREATE_VM(0)`.
fn bare_default_vm(kvm: &DevKvm) -> Result<OwnedFd, BackendError> {
    const KVM_CREATE_VM: libc::c_ulong = 0xae01;
    // SAFETY: KVM_CREATE_VM takes its type by value and touches no user memory.
    let vm = unsafe { libc::ioctl(kvm.file.as_raw_fd(), KVM_CREATE_VM, 0 as libc::c_ulong) };
    if vm < 0 {
        return Err(os_err("KVM_CREATE_VM"));
    }
    // SAFETY: KVM_CREATE_VM returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(vm) })
}

/// The kernel's own setup of a default VM with one guest_memfd slot of
/// `size` bytes at GPA 0: `KVM_CREATE_VM(0)`, `KVM_CREATE_GUEST_MEMFD(size,
/// MMAP|INIT_SHARED)` and `KVM_SET_USER_MEMORY_REGION2`. With `map_hva`, the
/// gmem is also mmapped and its address passed as `userspace_addr`, as
/// privmem does with the opt-in `gmem_hva` emulation ([`privmem_core::Quirks::gmem_hva`]).
///
/// # Errors
/// `Os` naming the call that failed.
pub fn bare_gmem_vm(kvm: &DevKvm, size: u64, map_hva: bool) -> Result<BareVm, BackendError> {
    let vm = bare_default_vm(kvm)?;
    let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    let gmem = bare_create_gmem(vm.as_fd(), size, flags.0)?;
    let map = if map_hva {
        Some(Mmap::new(
            size,
            libc::MAP_SHARED,
            Some(gmem.as_fd()),
            "mmap",
        )?)
    } else {
        None
    };
    let region = MemoryRegion2 {
        slot: 0,
        flags: MEM_GUEST_MEMFD,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: map.as_ref().map_or(0, |m| m.addr() as u64),
        guest_memfd_offset: 0,
        guest_memfd: gmem.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: the address is 0 or `map`'s, which `BareVm` drops after the VM.
    unsafe { bare_set_region2(vm.as_fd(), &region) }?;
    Ok(BareVm {
        _map: map,
        _vm: vm,
        _file: gmem,
    })
}

/// The same setup where the host has no guest_memfd, as privmem falls back
/// to it: `KVM_CREATE_VM(0)`, `memfd_create` + `ftruncate(size)`, a shared
/// mmap of it, and `KVM_SET_USER_MEMORY_REGION2` with that mapping as
/// `userspace_addr`.
///
/// # Errors
/// `Os` naming the call that failed.
pub fn bare_memfd_vm(kvm: &DevKvm, size: u64) -> Result<BareVm, BackendError> {
    let vm = bare_default_vm(kvm)?;
    let memfd = BareMemfd::new(size)?;
    let map = Mmap::new(size, libc::MAP_SHARED, Some(memfd.fd.as_fd()), "mmap")?;
    let region = MemoryRegion2 {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: map.addr() as u64,
        ..Default::default()
    };
    // SAFETY: the address is `map`'s, which `BareVm` drops after the VM.
    unsafe { bare_set_region2(vm.as_fd(), &region) }?;
    Ok(BareVm {
        _map: Some(map),
        _vm: vm,
        _file: memfd.fd,
    })
}

/// CPU time consumed so far by the whole process, every thread (live or
/// exited) included: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub fn process_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec the call fills.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// A global allocator that forwards to [`System`] and keeps, per thread, the
/// bytes it holds, as glibc malloc chunks (request + 8-byte header, rounded
/// to 16, at least 32): what a data structure really costs on the heap.
/// Install it with `#[global_allocator]`; read it with [`thread_heap_bytes`].
#[derive(Debug, Default)]
pub struct CountingAlloc;

fn chunk(size: usize) -> i64 {
    let c = (size.saturating_add(8 + 15) & !15).max(32);
    i64::try_from(c).unwrap_or(i64::MAX)
}

fn account(delta: i64) {
    // A thread being torn down has no counter left; its bytes go uncounted.
    let _ = LIVE.try_with(|l| l.set(l.get().wrapping_add(delta)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the bookkeeping touches only a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(chunk(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-chunk(layout.size()));
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}

/// Heap bytes allocated minus freed by the calling thread so far (through
/// [`CountingAlloc`], when it is the global allocator; 0 otherwise).
pub fn thread_heap_bytes() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

impl AsFd for BareMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_core::PAGE_SIZE;

    #[test]
    fn bare_memfd_punch_zeroes_mapped_bytes() {
        let m = BareMemfd::new(2 * PAGE_SIZE).unwrap();
        let mut map = m.map().unwrap();
        map.as_mut_slice().fill(0xab);
        m.punch(0, PAGE_SIZE).unwrap();
        let s = map.as_mut_slice();
        assert!(s[..4096].iter().all(|&b| b == 0));
        assert!(s[4096..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn bare_memfd_fill_writes_bytes() {
        let m = BareMemfd::new(3 * PAGE_SIZE).unwrap();
        m.fill(PAGE_SIZE, PAGE_SIZE, 7).unwrap();
        let mut map = m.map().unwrap();
        let s = map.as_mut_slice();
        assert!(s[..4096].iter().all(|&b| b == 0));
        assert!(s[4096..8192].iter().all(|&b| b == 7));
        assert!(s[8192..].iter().all(|&b| b == 0));
    }

    #[test]
    fn process_cpu_time_advances_with_work() {
        let t0 = process_cpu_time();
        let mut x = 0u64;
        while process_cpu_time() - t0 < std::time::Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }

    #[test]
    fn chunk_rounds_like_glibc() {
        assert_eq!(chunk(0), 32);
        assert_eq!(chunk(24), 32);
        assert_eq!(chunk(25), 48);
        assert_eq!(chunk(192), 208);
    }
}
