//! [`KvmVm`]: memslots (with ownership of their backings), guest_memfd
//! creation, memory attributes, and the opt-in `gmem_hva` emulation.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use kvm_bindings::{
    kvm_enable_cap, kvm_memory_attributes, kvm_userspace_memory_region2, KVM_CAP_EXIT_HYPERCALL,
};
use kvm_ioctls::VmFd;
use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::{
    Attrs, BackendError, Cap, Emulations, GmemFlags, GmemRef, Gpa, GpaRange, GuestMemfd,
    HostMemory, Region, SharedKind, UserAddr, Vm, VmType, PAGE_SIZE,
};

use crate::mem::{KvmMapping, KvmShared};
use crate::poison::{self, SlotGmem};
use crate::state::{Emulation, SlotEntry, VmConfig, VmState};
use crate::sys::{self, fd_of, kvm_err};
use crate::vcpu::KvmVcpu;

/// A KVM VM.
#[derive(Debug)]
pub struct KvmVm {
    inner: Arc<VmState>,
}

impl KvmVm {
    pub(crate) fn new(fd: VmFd, raw_type: u64, config: VmConfig) -> KvmVm {
        KvmVm {
            inner: Arc::new(VmState::new(fd, raw_type, config)),
        }
    }

    /// The raw `KVM_CREATE_VM` type.
    pub fn raw_type(&self) -> u64 {
        self.inner.raw_type
    }
}

impl AsFd for KvmVm {
    /// The VM fd (for raw probes; KVM state changes should go through [`Vm`]).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        fd_of(&self.inner.fd)
    }
}

/// Resolves a region's `userspace_addr`: an HVA and the backing that keeps
/// it valid. Raw values pass only if KVM can never dereference them.
fn resolve_hva(region: &Region<'_, KvmShared>) -> Result<(u64, Option<KvmShared>), BackendError> {
    const OP: &str = "KVM_SET_USER_MEMORY_REGION";
    match region.userspace {
        UserAddr::Backing { mem, offset } => {
            let end = offset.checked_add(region.size);
            if end.is_none_or(|e| e > mem.len()) {
                return Err(BackendError::invalid(
                    OP,
                    format!(
                        "offset {offset:#x} + size {:#x} exceeds the {:#x}-byte backing",
                        region.size,
                        mem.len()
                    ),
                ));
            }
            Ok((mem.hva(offset), Some(mem.clone())))
        }
        UserAddr::Raw(v) if v == 0 || !v.is_multiple_of(PAGE_SIZE) => Ok((v, None)),
        UserAddr::Raw(v) => Err(BackendError::invalid(
            OP,
            format!("raw userspace_addr {v:#x} would hand KVM arbitrary host memory"),
        )),
    }
}

fn gmem_raw(g: GmemRef<'_>) -> u32 {
    match g {
        GmemRef::File(f) => f.as_fd().as_raw_fd() as u32,
        GmemRef::Fd(fd) => fd.as_raw_fd() as u32,
        GmemRef::Raw(fd) => fd as u32,
    }
}

/// The guest_memfd a `KVM_MEM_GUEST_MEMFD` slot is bound to, recorded for
/// [`Vm::poison_page`] without holding it open (`None` if it cannot be
/// `fstat`ed or the request named the file by a raw fd, whose flags
/// privmem does not know).
fn slot_gmem(region: &Region<'_, KvmShared>) -> Option<SlotGmem> {
    let GmemRef::File(g) = region.gmem else {
        return None;
    };
    if region.flags & MEM_GUEST_MEMFD == 0 {
        return None;
    }
    SlotGmem::new(g.as_fd(), region.gmem_offset, g.flags())
}

impl KvmVm {
    /// The opt-in `gmem_hva` emulation ([`privmem_core::Quirks::gmem_hva`],
    /// for PVM hosts, where gmem-only slots are reached through
    /// `userspace_addr` only): maps the slot's range of a `MMAP|INIT_SHARED`
    /// guest_memfd so its HVA can stand in for the caller's
    /// `userspace_addr = 0`. Anything else (option off, other flags, a raw
    /// fd, a bad offset, an mmap failure) returns `None` and the request
    /// goes to KVM unchanged, so KVM's own errno still decides.
    fn gmem_hva_mapping(&self, region: &Region<'_, KvmShared>) -> Option<KvmMapping> {
        if !self.inner.config.gmem_hva {
            return None;
        }
        let g = region.gmem_hva_file()?;
        KvmMapping::new_at(g.as_fd(), region.gmem_offset, region.size).ok()
    }
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;
    type Shared = KvmShared;

    fn vm_type(&self) -> VmType {
        match self.inner.raw_type {
            0 => VmType::Default,
            1 => VmType::SwProtected,
            _ => VmType::Coco,
        }
    }

    fn check_extension(&self, cap: Cap) -> Result<u64, BackendError> {
        self.inner.check_extension(cap.number())
    }

    fn enable_exit_hypercall(&self, mask: u64) -> Result<(), BackendError> {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            args: [mask, 0, 0, 0],
            ..Default::default()
        };
        self.inner
            .fd
            .enable_cap(&cap)
            .map_err(|e| kvm_err("KVM_ENABLE_CAP", &e))?;
        self.inner.exit_hypercall_mask.store(mask, Ordering::SeqCst);
        Ok(())
    }

    fn create_guest_memfd(&self, size: u64, flags: GmemFlags) -> Result<GuestMemfd, BackendError> {
        let fd = sys::create_guest_memfd(&self.inner.fd, size, flags.0)?;
        Ok(GuestMemfd::new(fd, size, flags))
    }

    fn set_user_memory_region(&self, region: &Region<'_, KvmShared>) -> Result<(), BackendError> {
        let (mut hva, backing) = resolve_hva(region)?;
        let gmem_map = self.gmem_hva_mapping(region);
        if let Some(m) = &gmem_map {
            hva = m.host_addr();
        }
        let mut slots = self.inner.slots();
        if slots.get(&region.slot).is_some_and(|e| e.runtime) {
            return Err(BackendError::invalid(
                "KVM_SET_USER_MEMORY_REGION",
                format!("memslot {} is privmem's runtime area", region.slot),
            ));
        }
        let raw = kvm_userspace_memory_region2 {
            slot: region.slot,
            flags: region.flags,
            guest_phys_addr: region.gpa,
            memory_size: region.size,
            userspace_addr: hva,
            guest_memfd_offset: region.gmem_offset,
            guest_memfd: gmem_raw(region.gmem),
            ..Default::default()
        };
        // SAFETY: `hva` is 0, unaligned (KVM refuses it), or lies inside
        // `backing` (bounds-checked by `resolve_hva`) or `gmem_map` (mapped
        // for exactly this slot's range), both kept in the slot table until
        // the slot is deleted or replaced.
        unsafe { self.inner.set_region(region.api, raw) }?;
        if gmem_map.is_some() {
            self.inner.note_emulation(Emulation::GmemHva);
        }
        if region.size == 0 {
            slots.remove(&region.slot);
        } else {
            slots.insert(
                region.slot,
                SlotEntry {
                    gpa: region.gpa,
                    size: region.size,
                    _backing: backing,
                    _gmem_map: gmem_map,
                    runtime: false,
                    gmem: slot_gmem(region),
                },
            );
        }
        Ok(())
    }

    fn set_memory_attributes(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<(), BackendError> {
        let attrs = kvm_memory_attributes {
            address,
            size,
            attributes,
            flags,
        };
        self.inner
            .fd
            .set_memory_attributes(attrs)
            .map_err(|e| kvm_err("KVM_SET_MEMORY_ATTRIBUTES", &e))?;
        if let Ok(range) = GpaRange::new(Gpa(address), size) {
            let mut private = self
                .inner
                .private
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            private.set(range, attributes & Attrs::PRIVATE.0 != 0);
        }
        Ok(())
    }

    fn create_shared(&self, size: u64, kind: SharedKind) -> Result<KvmShared, BackendError> {
        KvmShared::new(size, kind)
    }

    fn create_vcpu(&self, index: u32) -> Result<KvmVcpu, BackendError> {
        KvmVcpu::new(Arc::clone(&self.inner), index)
    }

    fn hypercall_transport(&self) -> &'static str {
        self.inner.config.transport.name()
    }

    fn vm_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(fd_of(&self.inner.fd))
    }

    /// `hypercall` once a guest `KVM_HC_MAP_GPA_RANGE` went through the
    /// port-I/O emulation, `gmem_hva` once a caller's `userspace_addr = 0`
    /// was replaced by a guest_memfd mapping.
    fn emulations(&self) -> Emulations {
        self.inner.emulations()
    }

    /// Poisons the guest_memfd page behind `gpa` with
    /// `madvise(MADV_HWPOISON)` on a one-page mapping of it (from a forked
    /// child: this process gets no signal). Works where the kernel lets the
    /// host fault the page in: a `MMAP|INIT_SHARED` file on Linux 7.3, as
    /// root. Elsewhere `Unsupported`, naming the file's flags and the
    /// kernel's refusal (`mmap` `ENODEV`: no `MMAP`, as on 6.12; `madvise`
    /// `EFAULT`: private memory, as a SW_PROTECTED VM's).
    fn poison_page(&self, gpa: Gpa) -> Result<(), BackendError> {
        let slots = self.inner.slots();
        let hit = slots.values().find_map(|e| {
            let inside = gpa.raw().checked_sub(e.gpa).filter(|d| *d < e.size)?;
            let g = e.gmem.as_ref()?;
            Some((g, g.offset.checked_add(inside)?))
        });
        let Some((gmem, file_offset)) = hit else {
            return Err(BackendError::Invalid {
                op: "poison",
                why: format!("no live guest_memfd backs {gpa}"),
            });
        };
        poison::poison_file_page(
            gmem,
            file_offset,
            &gpa.to_string(),
            self.inner.config.quirks,
        )
    }
}
