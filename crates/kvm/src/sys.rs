//! The raw KVM ioctls that kvm-ioctls lacks or wraps lossily, and error
//! helpers. Everything else goes through kvm-ioctls with kvm-bindings'
//! structs; each ioctl here is declared with vmm-sys-util's macros and says
//! why it is raw.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use kvm_bindings::{kvm_create_guest_memfd, KVMIO};
use kvm_ioctls::VmFd;
use privmem_core::{BackendError, Errno};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

// Raw because kvm-ioctls' `check_extension_raw` returns a bare `i32` and
// drops the errno of a failed call (conformance compares errnos).
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
// Raw because kvm-ioctls' `VcpuFd::run` folds a memory-fault exit's errno
// (EFAULT vs EHWPOISON) into `Ok(MemoryFault)` and needs `&mut VcpuFd`;
// privmem decodes the raw `kvm_run` itself (`privmem_core::abi`).
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
// Raw because kvm-ioctls 0.25 has no wrapper for `KVM_GET_STATS_FD`.
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// The calling thread's errno.
pub(crate) fn last_errno() -> Errno {
    Errno::from_io(&std::io::Error::last_os_error())
}

/// An `Os` error for `op` with the calling thread's errno.
pub(crate) fn os_err(op: &'static str) -> BackendError {
    BackendError::os(op, last_errno())
}

/// An `Os` error for `op` from a kvm-ioctls error (which keeps the errno).
pub(crate) fn kvm_err(op: &'static str, e: &kvm_ioctls::Error) -> BackendError {
    BackendError::os(op, Errno(e.errno()))
}

/// `KVM_CHECK_EXTENSION(cap)` on /dev/kvm or a VM fd, as an unsigned value;
/// a failed call keeps its errno.
pub(crate) fn check_extension(fd: BorrowedFd<'_>, cap: u32) -> Result<u64, BackendError> {
    // SAFETY: KVM_CHECK_EXTENSION takes its argument by value and touches no
    // user memory.
    let ret = unsafe { ioctl_with_val(&fd, KVM_CHECK_EXTENSION(), libc::c_ulong::from(cap)) };
    u64::try_from(ret).map_err(|_| os_err("KVM_CHECK_EXTENSION"))
}

/// `KVM_RUN` on a vCPU fd: `Ok(())` on 0, otherwise the errno.
pub(crate) fn run(vcpu: BorrowedFd<'_>) -> Result<(), i32> {
    // SAFETY: KVM_RUN takes no argument; it communicates through the vCPU's
    // kvm_run page, which the kernel owns and the caller keeps mapped.
    let ret = unsafe { ioctl(&vcpu, KVM_RUN()) };
    if ret < 0 {
        Err(last_errno().0)
    } else {
        Ok(())
    }
}

/// `KVM_GET_STATS_FD` on a VM or vCPU fd; the new fd is owned on the spot.
pub(crate) fn get_stats_fd(fd: BorrowedFd<'_>) -> Result<OwnedFd, BackendError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
    let raw = unsafe { ioctl(&fd, KVM_GET_STATS_FD()) };
    if raw < 0 {
        return Err(os_err("KVM_GET_STATS_FD"));
    }
    // SAFETY: the ioctl returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `KVM_CREATE_GUEST_MEMFD` through kvm-ioctls; the new fd is owned on the
/// spot.
pub(crate) fn create_guest_memfd(
    vm: &VmFd,
    size: u64,
    flags: u64,
) -> Result<OwnedFd, BackendError> {
    let arg = kvm_create_guest_memfd {
        size,
        flags,
        ..Default::default()
    };
    let fd = vm
        .create_guest_memfd(arg)
        .map_err(|e| kvm_err("KVM_CREATE_GUEST_MEMFD", &e))?;
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else
    // owns; wrapping it immediately makes it closed exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Borrows the fd of a kvm-ioctls object (which implement only `AsRawFd`).
pub(crate) fn fd_of<T: AsRawFd>(obj: &T) -> BorrowedFd<'_> {
    // SAFETY: kvm-ioctls objects own their fd for their whole lifetime, and
    // the returned borrow cannot outlive `obj`.
    unsafe { BorrowedFd::borrow_raw(obj.as_raw_fd()) }
}
