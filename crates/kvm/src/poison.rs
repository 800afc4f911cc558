//! Hardware-poison injection on real KVM: `madvise(MADV_HWPOISON)` on a
//! guest_memfd page, through a host mapping of it (Linux 7.3,
//! `GUEST_MEMFD_FLAG_MMAP|INIT_SHARED` files; `CONFIG_MEMORY_FAILURE`;
//! `CAP_SYS_ADMIN`).
//!
//! The call runs in a forked child ([`privmem_mem::hwpoison`]): the kernel
//! answers it with -1 `EBUSY` and a forced `SIGBUS` (`BUS_MCEERR_AR`) to
//! the calling task, because guest_memfd's error handler
//! (`kvm_gmem_error_folio`) keeps the poisoned folio (`MF_DELAYED`, counted
//! as not recovered). The child takes that signal; this process's signal
//! handlers and masks are never changed, not even for a moment.
//!
//! Nothing is assumed about the kernel: each refusal is the kernel's own
//! answer, turned into an `Unsupported` that says what is missing.
//! - `mmap` `ENODEV`: the file has no `GUEST_MEMFD_FLAG_MMAP` (6.12 has no
//!   mappable guest_memfd at all);
//! - `madvise` `EFAULT`: the host cannot fault the page in (a file without
//!   `INIT_SHARED`, e.g. a SW_PROTECTED VM's private memory:
//!   `kvm_gmem_fault_user_mapping` answers SIGBUS), so `MADV_HWPOISON` has
//!   no page to name;
//! - `EPERM`: no `CAP_SYS_ADMIN`; `EINVAL` on an aligned page: a kernel
//!   without `CONFIG_MEMORY_FAILURE`.
//!
//! On a PVM host, or with the `gmem_hva` emulation, guest faults reach
//! guest_memfd pages through `userspace_addr`; KVM answers a poisoned page
//! there with a `SIGBUS` to the vCPU thread (`kvm_send_hwpoison_signal`)
//! instead of an `EHWPOISON` exit, which would kill the VMM: refused.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use privmem_core::backend::unsupported;
use privmem_core::{BackendError, Errno, GmemFlags, HostMemory, Quirks, PAGE_SIZE};

use crate::mem::KvmMapping;
use crate::memops;

/// The operation poison errors name (as the model's).
const OP: &str = "madvise(MADV_HWPOISON)";

/// The guest_memfd behind a memslot, as the VM keeps it for
/// [`privmem_core::Vm::poison_page`]: the caller's descriptor number and
/// the file's identity, the slot's offset into it and the file's creation
/// flags. It holds no reference: as in the kernel, a binding does not keep
/// the file open, so closing the caller's guest_memfd still releases it.
#[derive(Debug)]
pub(crate) struct SlotGmem {
    pub(crate) fd: RawFd,
    /// `(st_dev, st_ino)` of the bound file.
    pub(crate) identity: (u64, u64),
    pub(crate) offset: u64,
    pub(crate) flags: GmemFlags,
}

impl SlotGmem {
    /// Records `file` for a slot; `None` if it cannot be `fstat`ed.
    pub(crate) fn new(file: BorrowedFd<'_>, offset: u64, flags: GmemFlags) -> Option<SlotGmem> {
        Some(SlotGmem {
            fd: file.as_raw_fd(),
            identity: identity(file)?,
            offset,
            flags,
        })
    }

    /// A descriptor of the bound file while the caller still holds it: a
    /// fresh duplicate of the recorded descriptor, checked to be the same
    /// file (the number may have been closed and reused).
    fn open(&self) -> Option<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC reads no memory; on an invalid or closed
        // descriptor it fails with EBADF.
        let raw = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 0) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a descriptor this call just created and nothing
        // else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(raw) };
        (identity(dup.as_fd())? == self.identity).then_some(dup)
    }
}

/// `(st_dev, st_ino)` of an open file: one `fstat`, no duplicate (every
/// memslot with a guest_memfd records it).
fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is a live descriptor for the call; `st` is a writable
    // `struct stat` the kernel fills on success and leaves alone on failure.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// Refuses injection where a poisoned guest_memfd page would be reached
/// through `userspace_addr` (see the module documentation).
fn refuse_quirks(quirks: Quirks) -> Result<(), BackendError> {
    if quirks.pvm || quirks.gmem_hva {
        return Err(unsupported(
            OP,
            "hardware-poison injection on a PVM host (or with the gmem_hva emulation): guest \
             faults reach guest_memfd pages through userspace_addr, where KVM answers a \
             poisoned page with SIGBUS to the vCPU thread, not an EHWPOISON exit",
        ));
    }
    Ok(())
}

/// `madvise(map + offset, 4096, MADV_HWPOISON)` from a forked child;
/// `Ok` once the page is poisoned.
///
/// # Errors
/// `Invalid` for a page past the mapping; `Os` `EINVAL` for an unaligned
/// offset and `EFAULT` for a page the host cannot fault in (as the model);
/// `Unsupported` where the host or kernel cannot inject (see the module
/// documentation); `Os` with the kernel's errno otherwise (e.g. `EBUSY`
/// when the page still reads afterwards).
pub(crate) fn poison_mapping(
    map: &KvmMapping,
    offset: u64,
    quirks: Quirks,
) -> Result<(), BackendError> {
    memops::range_in(map, offset, PAGE_SIZE, OP)?;
    if !offset.is_multiple_of(PAGE_SIZE) {
        return Err(BackendError::os(OP, Errno::EINVAL));
    }
    refuse_quirks(quirks)?;
    // Fault the page into this mapping first, as `madvise`'s own
    // get_user_pages_fast would if this process called it: the mapping then
    // always gets the hwpoison entry (host touches stay SIGBUS through it,
    // even after PUNCH_HOLE, until MADV_DONTNEED or munmap). A page the host
    // cannot fault in fails here and in the child alike (EFAULT there).
    let _ = map.read(offset, &mut [0u8; 1]);
    let inj = map.inject_hwpoison(offset)?;
    match inj.madvise {
        Ok(()) => Ok(()),
        // guest_memfd: poisoned and kept (MF_DELAYED counts as not
        // recovered), the child got BUS_MCEERR_AR. Confirm the page is
        // poisoned: a host read of it now fails.
        Err(libc::EBUSY) if map.read(offset, &mut [0u8; 1]).is_err() => Ok(()),
        Err(libc::EPERM) => Err(unsupported(
            OP,
            "hardware-poison injection: madvise(MADV_HWPOISON) needs CAP_SYS_ADMIN, which \
             this process lacks (EPERM)",
        )),
        Err(libc::EINVAL) => Err(unsupported(
            OP,
            "hardware-poison injection: the kernel refuses MADV_HWPOISON (EINVAL): built \
             without CONFIG_MEMORY_FAILURE",
        )),
        Err(e) => Err(BackendError::os(OP, Errno(e))),
    }
}

/// Poisons the page at `file_offset` of a memslot's guest_memfd: maps that
/// page and injects through it. The kernel's refusals that mean "this page
/// cannot be poisoned from userspace here" become `Unsupported`, naming the
/// file's flags and the kernel's answer.
///
/// # Errors
/// As [`poison_mapping`]; `Unsupported` when the file cannot be mapped
/// (`ENODEV`) or the page cannot be faulted in from the host (`EFAULT`).
pub(crate) fn poison_file_page(
    gmem: &SlotGmem,
    file_offset: u64,
    what: &str,
    quirks: Quirks,
) -> Result<(), BackendError> {
    refuse_quirks(quirks)?;
    let page = file_offset - file_offset % PAGE_SIZE;
    let flags = gmem.flags.0;
    let Some(file) = gmem.open() else {
        return Err(BackendError::invalid(
            "poison_page",
            format!("no live guest_memfd backs {what}: the slot's file was closed"),
        ));
    };
    let map = match KvmMapping::new_at(file.as_fd(), page, PAGE_SIZE) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(Errno::ENODEV) => {
            return Err(unsupported(
                "poison_page",
                format!(
                    "hardware-poison injection at {what}: its guest_memfd (flags {flags:#x}) \
                     cannot be mapped (mmap: ENODEV, no GUEST_MEMFD_FLAG_MMAP), so no host \
                     address names the page for madvise(MADV_HWPOISON)"
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    match poison_mapping(&map, 0, quirks) {
        Err(e) if e.errno() == Some(Errno::EFAULT) => Err(unsupported(
            "poison_page",
            format!(
                "hardware-poison injection at {what}: the host cannot fault in this page of its \
                 guest_memfd (flags {flags:#x}: private memory, no GUEST_MEMFD_FLAG_INIT_SHARED; \
                 madvise(MADV_HWPOISON): EFAULT), so only a PFN-based injector could poison it, \
                 and userspace cannot learn the PFN of an unmapped page"
            ),
        )),
        other => other,
    }
}

/// `CAP_SYS_ADMIN`'s bit in `/proc/self/status` `CapEff`.
const CAP_SYS_ADMIN: u32 = 21;

/// True if the calling thread's effective set has `CAP_SYS_ADMIN`
/// (`CapEff` in `/proc/thread-self/status`); false when unreadable.
fn has_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

impl crate::KvmHypervisor {
    /// Why [`privmem_core::Vm::poison_page`] cannot poison guest_memfd pages
    /// of a `ty` VM on this host, probed without poisoning anything, or
    /// `None` if it can: a default VM with a `MMAP|INIT_SHARED` guest_memfd
    /// (`KVM_CAP_GUEST_MEMFD_FLAGS`), a kernel with `CONFIG_MEMORY_FAILURE`
    /// (its `vm.memory_failure_early_kill` sysctl exists), `CAP_SYS_ADMIN`,
    /// and no PVM quirk. VMs with private memory never qualify: their
    /// guest_memfd pages cannot be faulted in by the host.
    pub fn poison_blocker(&self, ty: privmem_core::VmType) -> Option<String> {
        use privmem_core::{Hypervisor, VmType};
        if let Err(e) = refuse_quirks(self.options().quirks) {
            return Some(e.to_string());
        }
        if ty != VmType::Default {
            return Some(format!(
                "a {} VM's guest_memfd pages are private: the host cannot fault them in, so \
                 madvise(MADV_HWPOISON) cannot name them (only the model can poison them)",
                ty.name()
            ));
        }
        if !self.has_shared_gmem() {
            return Some(
                "poisoning needs a MMAP|INIT_SHARED guest_memfd (Linux 7.3), which this host's \
                 KVM_CAP_GUEST_MEMFD_FLAGS lacks"
                    .into(),
            );
        }
        if !std::path::Path::new("/proc/sys/vm/memory_failure_early_kill").exists() {
            return Some("the kernel has no CONFIG_MEMORY_FAILURE (MADV_HWPOISON)".into());
        }
        if !has_cap_sys_admin() {
            return Some(
                "madvise(MADV_HWPOISON) needs CAP_SYS_ADMIN, which this process lacks".into(),
            );
        }
        None
    }
}
