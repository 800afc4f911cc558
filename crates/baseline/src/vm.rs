//! The `scale` benchmark's baseline: the kernel's own setup of a default VM
//! with one slot, through kvm-ioctls and nothing else.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use kvm_bindings::{kvm_create_guest_memfd, kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD};
use kvm_ioctls::{Kvm, VmFd};
use privmem_core::GmemFlags;
use privmem_mem::{Mapping, Memfd, Seal, Share};

use crate::error::BaselineError;

/// `/dev/kvm`, opened once for [`bare_gmem_vm`] and [`bare_memfd_vm`].
#[derive(Debug)]
pub struct DevKvm {
    kvm: Kvm,
}

impl DevKvm {
    /// Opens `/dev/kvm` read/write.
    ///
    /// # Errors
    /// `OpenKvm` if it cannot be opened.
    pub fn open() -> Result<DevKvm, BaselineError> {
        let kvm = Kvm::new().map_err(BaselineError::OpenKvm)?;
        Ok(DevKvm { kvm })
    }

    /// `KVM_CREATE_VM(0)` (kvm-ioctls also reads the vCPU mmap size, as
    /// privmem's own VM creation does).
    fn default_vm(&self) -> Result<VmFd, BaselineError> {
        self.kvm
            .create_vm_with_type(0)
            .map_err(BaselineError::CreateVm)
    }

    /// `KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)`.
    fn sw_protected_vm(&self) -> Result<VmFd, BaselineError> {
        self.kvm
            .create_vm_with_type(1)
            .map_err(BaselineError::CreateVm)
    }
}

/// A VM built by [`bare_gmem_vm`] or [`bare_memfd_vm`]; dropping it
/// destroys the VM.
#[derive(Debug)]
pub struct BareVm {
    // Field order is drop order: the mapping, then the VM (which drops the
    // slot), then the backing file.
    _map: Option<Mapping>,
    _vm: VmFd,
    _file: OwnedFd,
    /// A sw-protected VM's shared memfd (beside its guest_memfd).
    _shared: Option<OwnedFd>,
}

/// `KVM_SET_USER_MEMORY_REGION2` of slot 0 at GPA 0, `size` bytes.
///
/// # Safety
/// `userspace_addr` must be 0 or the address of a live mapping of at least
/// `size` bytes that outlives the slot.
unsafe fn set_slot0(
    vm: &VmFd,
    size: u64,
    userspace_addr: u64,
    gmem: Option<&OwnedFd>,
) -> Result<(), BaselineError> {
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: gmem.map_or(0, |_| KVM_MEM_GUEST_MEMFD),
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr,
        guest_memfd_offset: 0,
        guest_memfd: gmem.map_or(0, |g| g.as_raw_fd() as u32),
        ..Default::default()
    };
    // SAFETY: the caller's contract covers `userspace_addr`; the guest_memfd
    // is a live fd of this VM.
    unsafe { vm.set_user_memory_region2(region) }
        .map_err(|source| BaselineError::SetUserMemoryRegion2 { size, source })
}

/// The kernel's own setup of a default VM with one guest_memfd slot of
/// `size` bytes at GPA 0: `KVM_CREATE_VM(0)`, `KVM_CREATE_GUEST_MEMFD(size,
/// MMAP|INIT_SHARED)` and `KVM_SET_USER_MEMORY_REGION2`. With `map_hva`, the
/// gmem is also mmapped and its address passed as `userspace_addr`, as
/// privmem does on hosts that need it (PVM).
///
/// # Errors
/// The variant naming the call that failed.
pub fn bare_gmem_vm(kvm: &DevKvm, size: u64, map_hva: bool) -> Result<BareVm, BaselineError> {
    let vm = kvm.default_vm()?;
    let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    let raw = vm
        .create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags: flags.0,
            ..Default::default()
        })
        .map_err(|source| BaselineError::CreateGuestMemfd { size, source })?;
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
    let gmem = unsafe { OwnedFd::from_raw_fd(raw) };
    let map = if map_hva {
        Some(Mapping::file(gmem.as_fd(), 0, size, Share::Shared)?)
    } else {
        None
    };
    // SAFETY: a mapping's address is only read here; the mapping lives in
    // the returned `BareVm` with the VM, so it outlives the slot's use.
    let hva = map.as_ref().map_or(0, |m| unsafe { m.host_addr() });
    // SAFETY: `hva` is 0 or the address of `map`, which covers `size` bytes
    // and is kept in the returned `BareVm`.
    unsafe { set_slot0(&vm, size, hva, Some(&gmem))? };
    Ok(BareVm {
        _map: map,
        _vm: vm,
        _file: gmem,
        _shared: None,
    })
}

/// The same setup where the host has no guest_memfd, as privmem falls back
/// to it: `KVM_CREATE_VM(0)`, `memfd_create` + `ftruncate(size)`, a shared
/// mmap of it, and `KVM_SET_USER_MEMORY_REGION2` with that mapping as
/// `userspace_addr`.
///
/// # Errors
/// The variant naming the call that failed.
pub fn bare_memfd_vm(kvm: &DevKvm, size: u64) -> Result<BareVm, BaselineError> {
    let vm = kvm.default_vm()?;
    let memfd = Memfd::create("privmem-bench", size, Seal::None)?;
    let map = Mapping::file(memfd.as_fd(), 0, size, Share::Shared)?;
    // SAFETY: `map` covers `size` bytes and is kept in the returned `BareVm`
    // with the VM, so it outlives the slot.
    unsafe { set_slot0(&vm, size, map.host_addr(), None)? };
    Ok(BareVm {
        _map: Some(map),
        _vm: vm,
        _file: memfd.into_fd(),
        _shared: None,
    })
}

/// The kernel's own setup of a sw-protected VM with one private-capable
/// slot of `size` bytes at GPA 0, the calls privmem's setup makes for it:
/// `KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)`,
/// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` for `KVM_HC_MAP_GPA_RANGE`,
/// `KVM_CREATE_GUEST_MEMFD(size, 0)`, a shared memfd of `size` bytes
/// mapped shared, and `KVM_SET_USER_MEMORY_REGION2` with both.
///
/// # Errors
/// The variant naming the call that failed.
pub fn bare_sw_protected_vm(kvm: &DevKvm, size: u64) -> Result<BareVm, BaselineError> {
    let vm = kvm.sw_protected_vm()?;
    let mut cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_EXIT_HYPERCALL,
        ..Default::default()
    };
    cap.args[0] = 1 << 12;
    vm.enable_cap(&cap).map_err(BaselineError::EnableCap)?;
    let raw = vm
        .create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags: 0,
            ..Default::default()
        })
        .map_err(|source| BaselineError::CreateGuestMemfd { size, source })?;
    // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
    let gmem = unsafe { OwnedFd::from_raw_fd(raw) };
    let memfd = Memfd::create("privmem-bench", size, Seal::None)?;
    let map = Mapping::file(memfd.as_fd(), 0, size, Share::Shared)?;
    // SAFETY: `map` covers `size` bytes and is kept in the returned `BareVm`
    // with the VM, so it outlives the slot; the guest_memfd is this VM's.
    unsafe { set_slot0(&vm, size, map.host_addr(), Some(&gmem))? };
    Ok(BareVm {
        _map: Some(map),
        _vm: vm,
        _file: gmem,
        _shared: Some(memfd.into_fd()),
    })
}
