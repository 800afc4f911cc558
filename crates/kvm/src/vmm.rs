//! privmem in a VMM that owns its `kvm_ioctls::VmFd`, its guest_memfd files
//! and its guest memory: the ready [`ConversionBackend`] over them
//! ([`VmFdBackend`]), and the vCPU-side helpers a VMM's own exit loop needs
//! ([`run`], which keeps `KVM_RUN`'s errno for memory faults, and
//! [`VcpuPreFault`] for `KVM_PRE_FAULT_MEMORY`).
//!
//! # The errno of a memory-fault exit with kvm-ioctls 0.25
//!
//! `VcpuFd::run()` returns `Ok(VcpuExit::MemoryFault { flags, gpa, size })`
//! when `KVM_RUN` returned -1 with `EFAULT` or `EHWPOISON` and
//! `exit_reason == KVM_EXIT_MEMORY_FAULT`, but drops which of the two it
//! was: `EHWPOISON` (a poisoned page, never to be converted) cannot be told
//! from `EFAULT`. Between the ioctl and that return, `run()` makes no other
//! call that could set `errno` (it reads `errno::Error::last()` once and
//! builds the value), so the calling thread's `errno` read **immediately**
//! after `run()` returns is `KVM_RUN`'s. [`run`] does exactly that, and also
//! zeroes `exit_reason` before entering, so a stale 39 left from an earlier
//! fault is never taken for a new one when `KVM_RUN` fails with `EFAULT`
//! for another reason (api.rst: `exit_reason` is undefined then).
//!
//! # Memory lifetime
//!
//! A memslot's `userspace_addr` must stay mapped while the memslot exists.
//! [`VmFdBackend`] holds a reference to every [`SharedRegion`] mapping it
//! gave the kernel until it deletes that memslot, and deletes its remaining
//! memslots when dropped.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2,
    KVM_CAP_PRE_FAULT_MEMORY,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use privmem_core::contract::{Backing, ConversionBackend, PreFault, VmSupport};
use privmem_core::engine::MemoryFaultExit;
use privmem_core::slot::SlotDesc;
use privmem_core::{
    Attrs, BackendError, Errno, GmemFlags, Gpa, GpaRange, PreFaultRange, SlotId, VmType,
};
use vm_memory::mmap::MmapRegion;

fn os(op: &'static str, e: &kvm_ioctls::Error) -> BackendError {
    BackendError::os(op, Errno(e.errno()))
}

fn last_os(op: &'static str) -> BackendError {
    BackendError::os(op, Errno::from_io(&std::io::Error::last_os_error()))
}

/// A guest_memfd file the VMM created (or handed over), with its size.
#[derive(Debug)]
pub struct GmemFile {
    file: File,
    size: u64,
}

impl GmemFile {
    /// `KVM_CREATE_GUEST_MEMFD(size, flags)` on `vm`.
    pub fn create(vm: &VmFd, size: u64, flags: GmemFlags) -> Result<GmemFile, BackendError> {
        let arg = kvm_create_guest_memfd {
            size,
            flags: flags.0,
            ..Default::default()
        };
        let fd = vm
            .create_guest_memfd(arg)
            .map_err(|e| os("KVM_CREATE_GUEST_MEMFD", &e))?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd nothing else owns;
        // wrapping it now makes it closed exactly once.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(GmemFile { file, size })
    }

    /// A guest_memfd the VMM already owns; its size is read with `fstat`.
    pub fn from_fd(fd: OwnedFd) -> Result<GmemFile, BackendError> {
        let file = File::from(fd);
        let size = file
            .metadata()
            .map_err(|e| BackendError::os("fstat", Errno::from_io(&e)))?
            .len();
        Ok(GmemFile { file, size })
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Backing for GmemFile {
    fn size(&self) -> u64 {
        self.size
    }
}

/// A VMM's guest memory as a slot's shared backing: a vm-memory mapping
/// (`GuestRegionMmap::get_mmap()`, or an `MmapRegion` of its own), held
/// by reference so it stays mapped while a memslot points into it.
///
/// How a conversion to private discards it depends on the mapping: a
/// `MAP_SHARED` file mapping (a memfd) is punched in the file
/// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), shared anonymous memory gets
/// `madvise(MADV_REMOVE)`, private anonymous memory `madvise(MADV_DONTNEED)`.
/// A private *file* mapping cannot be discarded without re-exposing the
/// file's contents, so that is refused.
#[derive(Clone, Debug)]
pub struct SharedRegion(Arc<MmapRegion>);

impl SharedRegion {
    /// The region `mmap`.
    pub fn new(mmap: Arc<MmapRegion>) -> SharedRegion {
        SharedRegion(mmap)
    }

    /// The mapping.
    pub fn mmap(&self) -> &Arc<MmapRegion> {
        &self.0
    }

    /// The host address of byte `offset` (which must be inside).
    fn hva(&self, offset: u64) -> u64 {
        (self.0.as_ptr() as u64).saturating_add(offset)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.size()) {
            return Err(BackendError::invalid(
                "discard",
                format!("{offset:#x}+{len:#x} reaches past the region"),
            ));
        }
        let shared = self.0.flags() & libc::MAP_SHARED != 0;
        match (self.0.file_offset(), shared) {
            (Some(fo), true) => {
                let off = fo
                    .start()
                    .checked_add(offset)
                    .ok_or_else(|| BackendError::invalid("fallocate", "file offset overflows"))?;
                punch(fo.file(), off, len, "fallocate(shared backing)")
            }
            (Some(_), false) => Err(BackendError::Unsupported {
                op: "discard",
                missing: "a MAP_PRIVATE file mapping cannot be discarded".into(),
            }),
            (None, true) => self.madvise(offset, len, libc::MADV_REMOVE, "madvise(MADV_REMOVE)"),
            (None, false) => {
                self.madvise(offset, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")
            }
        }
    }

    fn madvise(
        &self,
        offset: u64,
        len: u64,
        advice: libc::c_int,
        op: &'static str,
    ) -> Result<(), BackendError> {
        let len =
            usize::try_from(len).map_err(|_| BackendError::invalid(op, "length overflows"))?;
        // SAFETY: [hva(offset), +len) lies inside the mapping (checked by the
        // caller) that `self` keeps alive; MADV_REMOVE/MADV_DONTNEED only
        // drop its pages (later reads see zeros) and touch no Rust object.
        let ret = unsafe { libc::madvise(self.hva(offset) as *mut libc::c_void, len, advice) };
        if ret == 0 {
            Ok(())
        } else {
            Err(last_os(op))
        }
    }
}

impl Backing for SharedRegion {
    fn size(&self) -> u64 {
        self.0.size() as u64
    }
}

/// `fallocate(file, PUNCH_HOLE | KEEP_SIZE, offset, len)`.
fn punch(file: &File, offset: u64, len: u64, op: &'static str) -> Result<(), BackendError> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| BackendError::invalid(op, "offset overflows"))?;
    let len =
        libc::off_t::try_from(len).map_err(|_| BackendError::invalid(op, "length overflows"))?;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate takes only integers and a file descriptor we borrow.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if ret == 0 {
        Ok(())
    } else {
        Err(last_os(op))
    }
}

/// [`ConversionBackend`] over a VMM's own `VmFd` (`V` is anything that
/// borrows one: `Arc<VmFd>`, `&'static VmFd`, the VMM's own wrapper).
pub struct VmFdBackend<V: Borrow<VmFd> + Send + Sync + 'static = Arc<VmFd>> {
    vm: V,
    support: VmSupport,
    /// Memslots this backend created, and the mapping each points into.
    slots: Mutex<BTreeMap<u16, Option<SharedRegion>>>,
}

impl<V: Borrow<VmFd> + Send + Sync + 'static> std::fmt::Debug for VmFdBackend<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmFdBackend")
            .field("support", &self.support)
            .finish_non_exhaustive()
    }
}

impl<V: Borrow<VmFd> + Send + Sync + 'static> VmFdBackend<V> {
    /// The backend over `vm`, a VM of type `vm_type` (kvm-ioctls does not
    /// remember the `KVM_CREATE_VM` type). Probes `KVM_CAP_PRE_FAULT_MEMORY`
    /// on the VM.
    pub fn new(vm: V, vm_type: VmType) -> VmFdBackend<V> {
        let pre_fault = vm
            .borrow()
            .check_extension_raw(libc::c_ulong::from(KVM_CAP_PRE_FAULT_MEMORY));
        VmFdBackend {
            vm,
            support: VmSupport {
                vm_type,
                pre_fault_memory: pre_fault > 0,
            },
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    /// The VM.
    pub fn vm(&self) -> &VmFd {
        self.vm.borrow()
    }

    fn region2(&self, r: kvm_userspace_memory_region2) -> Result<(), BackendError> {
        // SAFETY: `userspace_addr` is 0 or inside a SharedRegion the caller
        // stores in `self.slots` until the memslot is deleted (and that
        // `set_memslot` checked the slot fits), so the kernel never maps
        // memory this process may reuse; deletions pass no address.
        unsafe { self.vm().set_user_memory_region2(r) }
            .map_err(|e| os("KVM_SET_USER_MEMORY_REGION2", &e))
    }

    fn delete(&self, id: u16) -> Result<(), BackendError> {
        self.region2(kvm_userspace_memory_region2 {
            slot: u32::from(id),
            ..Default::default()
        })
    }
}

impl<V: Borrow<VmFd> + Send + Sync + 'static> Drop for VmFdBackend<V> {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(PoisonError::into_inner));
        for (id, mem) in slots {
            if self.delete(id).is_err() {
                // The kernel still points into the mapping: never unmap it.
                std::mem::forget(mem);
            }
        }
    }
}

impl<V: Borrow<VmFd> + Send + Sync + 'static> ConversionBackend for VmFdBackend<V> {
    type Gmem = GmemFile;
    type Shared = SharedRegion;

    fn support(&self) -> VmSupport {
        self.support
    }

    fn set_attributes(&self, range: GpaRange, attrs: Attrs) -> Result<(), BackendError> {
        let a = kvm_memory_attributes {
            address: range.start().raw(),
            size: range.len(),
            attributes: attrs.0,
            flags: 0,
        };
        self.vm()
            .set_memory_attributes(a)
            .map_err(|e| os("KVM_SET_MEMORY_ATTRIBUTES", &e))
    }

    fn punch_gmem(&self, gmem: &GmemFile, offset: u64, len: u64) -> Result<(), BackendError> {
        punch(&gmem.file, offset, len, "fallocate(guest_memfd)")
    }

    fn discard_shared(
        &self,
        shared: &SharedRegion,
        offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        shared.discard(offset, len)
    }

    fn set_memslot(&self, slot: &SlotDesc<GmemFile, SharedRegion>) -> Result<(), BackendError> {
        slot.validate()
            .map_err(|e| BackendError::invalid("KVM_SET_USER_MEMORY_REGION2", e.to_string()))?;
        let f = slot.region2();
        let region = kvm_userspace_memory_region2 {
            slot: f.slot,
            flags: f.flags,
            guest_phys_addr: f.guest_phys_addr,
            memory_size: f.memory_size,
            userspace_addr: slot.shared.as_ref().map_or(0, |s| s.mem.hva(s.offset)),
            guest_memfd_offset: f.guest_memfd_offset,
            guest_memfd: slot
                .gmem
                .as_ref()
                .map_or(0, |g| g.file.file.as_raw_fd() as u32),
            ..Default::default()
        };
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.contains_key(&slot.id.0) {
            return Err(BackendError::invalid(
                "KVM_SET_USER_MEMORY_REGION2",
                format!("memslot {} exists: delete it first", slot.id.0),
            ));
        }
        self.region2(region)?;
        slots.insert(slot.id.0, slot.shared.as_ref().map(|s| s.mem.clone()));
        Ok(())
    }

    fn delete_memslot(&self, id: SlotId) -> Result<(), BackendError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        self.delete(id.0)?;
        slots.remove(&id.0);
        Ok(())
    }
}

/// What one [`run`] returned.
#[derive(Debug)]
pub enum KvmExit<'a> {
    /// `KVM_EXIT_MEMORY_FAULT` with the errno of its `KVM_RUN` (`EFAULT` or
    /// `EHWPOISON`): hand both to `Engine::handle_memory_fault`.
    MemoryFault {
        /// The `memory_fault` fields.
        exit: MemoryFaultExit,
        /// `KVM_RUN`'s errno.
        errno: i32,
    },
    /// Any other exit, as kvm-ioctls decodes it.
    Other(VcpuExit<'a>),
}

/// `KVM_RUN` through kvm-ioctls, keeping the errno of a memory-fault exit
/// (see the module docs): zeroes `exit_reason`, runs, reads `errno` at once.
pub fn run(vcpu: &mut VcpuFd) -> Result<KvmExit<'_>, kvm_ioctls::Error> {
    vcpu.get_kvm_run().exit_reason = 0;
    let exit = vcpu.run();
    // Nothing between the ioctl and here can have changed errno.
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    match exit? {
        VcpuExit::MemoryFault { flags, gpa, size } => Ok(KvmExit::MemoryFault {
            exit: MemoryFaultExit { flags, gpa, size },
            errno,
        }),
        other => Ok(KvmExit::Other(other)),
    }
}

/// [`PreFault`] on a vCPU: `KVM_PRE_FAULT_MEMORY` through its own duplicate
/// of the vCPU fd, so it can be used while a `VcpuExit` borrows the
/// `VcpuFd` (e.g. to answer a `VcpuExit::Hypercall` in place).
#[derive(Debug)]
pub struct VcpuPreFault {
    fd: OwnedFd,
}

impl VcpuPreFault {
    /// For vCPU `vcpu` (duplicates its fd).
    pub fn new(vcpu: &VcpuFd) -> Result<VcpuPreFault, BackendError> {
        // SAFETY: the VcpuFd owns this fd for its lifetime, which covers this
        // call; the borrow is dropped once duplicated.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(vcpu.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(|e| BackendError::os("dup", Errno::from_io(&e)))?;
        Ok(VcpuPreFault { fd })
    }
}

impl PreFault for VcpuPreFault {
    fn pre_fault(&mut self, gpa: &mut Gpa, size: &mut u64) -> Result<(), BackendError> {
        let mut range = PreFaultRange::new(gpa.raw(), *size);
        let r = crate::memops::pre_fault_memory(self.fd.as_fd(), &mut range);
        *gpa = Gpa(range.gpa);
        *size = range.size;
        r
    }
}
