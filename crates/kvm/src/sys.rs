//! Raw KVM ioctls that kvm-ioctls either lacks or wraps lossily.
//!
//! Every ioctl number used with a raw `libc::ioctl` lives here, with the
//! `repr(C)` argument it takes. Numbers are from `include/uapi/linux/kvm.h`
//! (kernel-semantics.md §1.1); layouts are pinned with `const` asserts.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use privmem_core::{BackendError, Errno};

/// `KVM_SET_USER_MEMORY_REGION` (32-byte struct).
pub const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_ae46;
/// `KVM_SET_USER_MEMORY_REGION2` (160-byte struct). Available with `KVM_CAP_USER_MEMORY2`.
pub const KVM_SET_USER_MEMORY_REGION2: libc::c_ulong = 0x40a0_ae49;
/// `KVM_RUN`.
pub const KVM_RUN: libc::c_ulong = 0xae80;
/// `KVM_ENABLE_CAP`.
pub const KVM_ENABLE_CAP: libc::c_ulong = 0x4068_aea3;
/// `KVM_SET_MEMORY_ATTRIBUTES`. Available with `KVM_CAP_MEMORY_ATTRIBUTES`.
pub const KVM_SET_MEMORY_ATTRIBUTES: libc::c_ulong = 0x4020_aed2;
/// `KVM_CREATE_GUEST_MEMFD`. Available with `KVM_CAP_GUEST_MEMFD`.
pub const KVM_CREATE_GUEST_MEMFD: libc::c_ulong = 0xc040_aed4;
/// `KVM_CHECK_EXTENSION`.
pub const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;

/// `struct kvm_userspace_memory_region2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryRegion2 {
    /// Bits 15:0 slot id, 31:16 address space.
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// Guest physical base.
    pub guest_phys_addr: u64,
    /// Size in bytes (0 deletes).
    pub memory_size: u64,
    /// Shared backing HVA.
    pub userspace_addr: u64,
    /// Offset into the guest_memfd.
    pub guest_memfd_offset: u64,
    /// The guest_memfd fd (as `__u32`).
    pub guest_memfd: u32,
    /// Padding, zero.
    pub pad1: u32,
    /// Padding, zero.
    pub pad2: [u64; 14],
}
const _: () = assert!(std::mem::size_of::<MemoryRegion2>() == 160);

/// `struct kvm_userspace_memory_region` (v1): the first 32 bytes of v2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryRegion1 {
    /// Bits 15:0 slot id, 31:16 address space.
    pub slot: u32,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
    /// Guest physical base.
    pub guest_phys_addr: u64,
    /// Size in bytes (0 deletes).
    pub memory_size: u64,
    /// Shared backing HVA.
    pub userspace_addr: u64,
}
const _: () = assert!(std::mem::size_of::<MemoryRegion1>() == 32);

/// `struct kvm_memory_attributes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryAttributes {
    /// Start GPA.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Flags (must be 0).
    pub flags: u64,
}
const _: () = assert!(std::mem::size_of::<MemoryAttributes>() == 32);

/// `struct kvm_create_guest_memfd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateGuestMemfd {
    /// Size in bytes.
    pub size: u64,
    /// `GUEST_MEMFD_FLAG_*`.
    pub flags: u64,
    /// Reserved, zero.
    pub reserved: [u64; 6],
}
const _: () = assert!(std::mem::size_of::<CreateGuestMemfd>() == 64);

/// `struct kvm_enable_cap`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnableCap {
    /// Capability number.
    pub cap: u32,
    /// Flags.
    pub flags: u32,
    /// Arguments.
    pub args: [u64; 4],
    /// Padding.
    pub pad: [u8; 64],
}
const _: () = assert!(std::mem::size_of::<EnableCap>() == 104);

/// The calling thread's errno.
pub fn last_errno() -> Errno {
    Errno::from_io(&std::io::Error::last_os_error())
}

/// An `Os` error for `op` with the calling thread's errno.
pub fn os_err(op: &'static str) -> BackendError {
    BackendError::os(op, last_errno())
}

/// `ioctl(fd, nr, &arg)` for an argument struct the kernel only reads or
/// fills in place. Returns the ioctl's non-negative result.
fn ioctl_ref<T>(
    fd: BorrowedFd<'_>,
    nr: libc::c_ulong,
    arg: &mut T,
    op: &'static str,
) -> Result<i32, BackendError> {
    // SAFETY: `arg` is a live, exclusively borrowed `repr(C)` struct whose size
    // matches the size encoded in `nr` (checked by the const asserts above), so
    // the kernel reads/writes only memory we own for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), nr, arg as *mut T) };
    if ret < 0 {
        Err(os_err(op))
    } else {
        Ok(ret)
    }
}

/// `KVM_SET_USER_MEMORY_REGION2`.
///
/// The caller (vm.rs) guarantees the HVA is 0, unaligned (rejected by KVM),
/// or inside a backing kept alive until the slot is deleted.
pub fn set_user_memory_region2(vm: BorrowedFd<'_>, r: &MemoryRegion2) -> Result<(), BackendError> {
    let mut r = *r;
    ioctl_ref(
        vm,
        KVM_SET_USER_MEMORY_REGION2,
        &mut r,
        "KVM_SET_USER_MEMORY_REGION2",
    )
    .map(drop)
}

/// `KVM_SET_USER_MEMORY_REGION` (v1), same contract as [`set_user_memory_region2`].
pub fn set_user_memory_region(vm: BorrowedFd<'_>, r: &MemoryRegion1) -> Result<(), BackendError> {
    let mut r = *r;
    ioctl_ref(
        vm,
        KVM_SET_USER_MEMORY_REGION,
        &mut r,
        "KVM_SET_USER_MEMORY_REGION",
    )
    .map(drop)
}

/// `KVM_SET_MEMORY_ATTRIBUTES` with raw values.
pub fn set_memory_attributes(vm: BorrowedFd<'_>, a: MemoryAttributes) -> Result<(), BackendError> {
    let mut a = a;
    ioctl_ref(
        vm,
        KVM_SET_MEMORY_ATTRIBUTES,
        &mut a,
        "KVM_SET_MEMORY_ATTRIBUTES",
    )
    .map(drop)
}

/// `KVM_CREATE_GUEST_MEMFD`; the new fd is owned on the spot.
pub fn create_guest_memfd(
    vm: BorrowedFd<'_>,
    size: u64,
    flags: u64,
) -> Result<OwnedFd, BackendError> {
    let mut arg = CreateGuestMemfd {
        size,
        flags,
        reserved: [0; 6],
    };
    let fd: RawFd = ioctl_ref(
        vm,
        KVM_CREATE_GUEST_MEMFD,
        &mut arg,
        "KVM_CREATE_GUEST_MEMFD",
    )?;
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns;
    // wrapping it immediately makes it closed exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `KVM_ENABLE_CAP(cap, args[0] = arg0)` on a VM or vCPU fd.
pub fn enable_cap(fd: BorrowedFd<'_>, cap: u32, arg0: u64) -> Result<(), BackendError> {
    let mut arg = EnableCap {
        cap,
        flags: 0,
        args: [arg0, 0, 0, 0],
        pad: [0; 64],
    };
    ioctl_ref(fd, KVM_ENABLE_CAP, &mut arg, "KVM_ENABLE_CAP").map(drop)
}

/// `KVM_CHECK_EXTENSION(cap)` on /dev/kvm or a VM fd, as an unsigned value.
pub fn check_extension(fd: BorrowedFd<'_>, cap: u32) -> Result<u64, BackendError> {
    // SAFETY: KVM_CHECK_EXTENSION takes its argument by value and touches no
    // user memory.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            KVM_CHECK_EXTENSION,
            libc::c_ulong::from(cap),
        )
    };
    u64::try_from(ret).map_err(|_| os_err("KVM_CHECK_EXTENSION"))
}

/// `KVM_RUN`: `Ok(())` on 0, otherwise the errno.
pub fn run(vcpu: BorrowedFd<'_>) -> Result<(), i32> {
    // SAFETY: KVM_RUN takes no argument pointer; it communicates through the
    // vCPU's kvm_run mapping, which the caller keeps mapped.
    let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_RUN, 0) };
    if ret < 0 {
        Err(last_errno().0)
    } else {
        Ok(())
    }
}

/// Borrows the fd of a kvm-ioctls object (which implement only `AsRawFd`).
pub fn fd_of<T: AsRawFd>(obj: &T) -> BorrowedFd<'_> {
    // SAFETY: kvm-ioctls objects own their fd for their whole lifetime, and
    // the returned borrow cannot outlive `obj`.
    unsafe { BorrowedFd::borrow_raw(obj.as_raw_fd()) }
}
