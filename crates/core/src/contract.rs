//! The narrow contract between the conversion [`Engine`](crate::engine::Engine)
//! and a hypervisor: exactly what a conversion and a memslot change need,
//! nothing about vCPUs, guest programs or probing.
//!
//! A VMM implements [`ConversionBackend`] over its own VM handle (or uses a
//! ready one: `privmem_kvm::vmm::VmFdBackend` over a `kvm_ioctls::VmFd`, or
//! [`HvBackend`] over any [`Hypervisor`], the model included). The vCPU side
//! of the contract is one call, [`PreFault`] (`KVM_PRE_FAULT_MEMORY`), which
//! the per-exit calls take from the vCPU that asked for a conversion.

use std::sync::Arc;

use crate::backend::{
    GmemRef, Hypervisor, Region, RegionApi, SharedMemory, UserAddr, Vcpu, Vm, FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD,
};
use crate::error::{BackendError, Result};
use crate::memops::PreFaultRange;
use crate::slot::SlotDesc;
use crate::types::{Attrs, Gpa, GpaRange, GuestMemfd, SlotId, VmType};

/// A piece of memory a memslot is built on (a guest_memfd file or a shared
/// backing): its size bounds what a slot description may ask of it.
pub trait Backing: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
}

impl Backing for GuestMemfd {
    fn size(&self) -> u64 {
        GuestMemfd::size(self)
    }
}

impl<T: Backing> Backing for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// Every shared backing of the full [`Vm`] traits is a [`Backing`].
impl<S: SharedMemory> Backing for S {
    fn size(&self) -> u64 {
        self.len()
    }
}

/// What the VM behind a backend supports, as far as conversions go.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VmSupport {
    /// The VM type: private memory exists only where
    /// [`VmType::has_private_mem`] says so; every conversion of a VM
    /// without it is refused.
    pub vm_type: VmType,
    /// The VM answers `KVM_CHECK_EXTENSION(KVM_CAP_PRE_FAULT_MEMORY)` with
    /// nonzero: the engine's prefault option issues `KVM_PRE_FAULT_MEMORY`
    /// only then.
    pub pre_fault_memory: bool,
}

/// The narrow contract the conversion engine needs from a hypervisor.
///
/// Every method is one kernel operation (or its model); none may block on
/// the engine. Errors keep the kernel's errno ([`BackendError::Os`]).
pub trait ConversionBackend: Send + Sync + 'static {
    /// A guest_memfd file as the backend holds it.
    type Gmem: Backing;
    /// A shared backing (what `userspace_addr` points into) as the backend
    /// holds it.
    type Shared: Backing;

    /// What the VM supports.
    fn support(&self) -> VmSupport;
    /// `KVM_SET_MEMORY_ATTRIBUTES(range, attrs, flags = 0)`.
    fn set_attributes(&self, range: GpaRange, attrs: Attrs) -> Result<()>;
    /// `fallocate(gmem, PUNCH_HOLE | KEEP_SIZE, offset, len)`: frees the
    /// private pages of a range going shared.
    fn punch_gmem(&self, gmem: &Self::Gmem, offset: u64, len: u64) -> Result<()>;
    /// Frees `[offset, offset + len)` of a shared backing so it reads back
    /// as zeros (the pages of a range going private).
    fn discard_shared(&self, shared: &Self::Shared, offset: u64, len: u64) -> Result<()>;
    /// `KVM_SET_USER_MEMORY_REGION2` built from `slot` (see
    /// [`SlotDesc::region2`]): the one place a memslot is created, from the
    /// same description the engine keeps. A backend that passes a host
    /// address to the kernel must keep that memory mapped until
    /// [`delete_memslot`](Self::delete_memslot) (or its own drop).
    fn set_memslot(&self, slot: &SlotDesc<Self::Gmem, Self::Shared>) -> Result<()>;
    /// Deletes memslot `id` (`memory_size = 0`).
    fn delete_memslot(&self, id: SlotId) -> Result<()>;
}

/// The vCPU side of the contract: `KVM_PRE_FAULT_MEMORY` on the vCPU whose
/// exit asked for a conversion (the ioctl is a vCPU ioctl).
pub trait PreFault {
    /// One `KVM_PRE_FAULT_MEMORY(gpa, size, flags = 0)` call. `gpa` and
    /// `size` come back advanced past what was mapped, on success and on
    /// failure, as the kernel copies them back; `Ok` means at least one
    /// page was mapped.
    fn pre_fault(&mut self, gpa: &mut Gpa, size: &mut u64) -> Result<()>;
}

/// Every vCPU of the full traits pre-faults through
/// [`Vcpu::pre_fault_memory`].
impl<V: Vcpu> PreFault for V {
    fn pre_fault(&mut self, gpa: &mut Gpa, size: &mut u64) -> Result<()> {
        let mut range = PreFaultRange::new(gpa.raw(), *size);
        let r = Vcpu::pre_fault_memory(self, &mut range);
        *gpa = Gpa(range.gpa);
        *size = range.size;
        r
    }
}

/// [`ConversionBackend`] over any [`Hypervisor`] (the harness's KVM backend
/// and the model): the adapter that keeps the full traits' backends working.
///
/// Its guest_memfds are [`GuestMemfd`]s, its shared backings the VM's
/// [`Vm::Shared`].
pub struct HvBackend<H: Hypervisor> {
    hv: Arc<H>,
    vm: Arc<H::Vm>,
}

impl<H: Hypervisor> std::fmt::Debug for HvBackend<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HvBackend")
            .field("hypervisor", &self.hv.name())
            .field("vm_type", &self.vm.vm_type())
            .finish()
    }
}

impl<H: Hypervisor> HvBackend<H> {
    /// The adapter over VM `vm` of hypervisor `hv`.
    pub fn new(hv: Arc<H>, vm: Arc<H::Vm>) -> HvBackend<H> {
        HvBackend { hv, vm }
    }
    /// The hypervisor.
    pub fn hypervisor(&self) -> &Arc<H> {
        &self.hv
    }
    /// The VM.
    pub fn vm(&self) -> &Arc<H::Vm> {
        &self.vm
    }
}

impl<H: Hypervisor> ConversionBackend for HvBackend<H> {
    type Gmem = GuestMemfd;
    type Shared = <H::Vm as Vm>::Shared;

    fn support(&self) -> VmSupport {
        let cap = self
            .vm
            .check_extension(crate::backend::Cap::PreFaultMemory)
            .unwrap_or(0);
        VmSupport {
            vm_type: self.vm.vm_type(),
            pre_fault_memory: cap != 0,
        }
    }

    fn set_attributes(&self, range: GpaRange, attrs: Attrs) -> Result<()> {
        self.vm
            .set_memory_attributes(range.start().raw(), range.len(), attrs.0, 0)
    }

    fn punch_gmem(&self, gmem: &GuestMemfd, offset: u64, len: u64) -> Result<()> {
        let (offset, len) = (to_i64(offset)?, to_i64(len)?);
        self.hv.gmem_fallocate(
            gmem,
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn discard_shared(&self, shared: &Self::Shared, offset: u64, len: u64) -> Result<()> {
        shared.discard(offset, len)
    }

    fn set_memslot(&self, slot: &SlotDesc<GuestMemfd, Self::Shared>) -> Result<()> {
        let r = slot.region2();
        let region = Region {
            api: RegionApi::V2,
            slot: r.slot,
            flags: r.flags,
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            userspace: match &slot.shared {
                Some(s) => UserAddr::Backing {
                    mem: &s.mem,
                    offset: s.offset,
                },
                None => UserAddr::Raw(0),
            },
            gmem: slot
                .gmem
                .as_ref()
                .map_or(GmemRef::Raw(-1), |g| GmemRef::File(&g.file)),
            gmem_offset: r.guest_memfd_offset,
        };
        debug_assert_eq!(region.flags & MEM_GUEST_MEMFD != 0, slot.gmem.is_some());
        self.vm.set_user_memory_region(&region)
    }

    fn delete_memslot(&self, id: SlotId) -> Result<()> {
        let region = Region::<<H::Vm as Vm>::Shared> {
            api: RegionApi::V2,
            slot: u32::from(id.0),
            flags: 0,
            gpa: 0,
            size: 0,
            userspace: UserAddr::Raw(0),
            gmem: GmemRef::Raw(-1),
            gmem_offset: 0,
        };
        self.vm.set_user_memory_region(&region)
    }
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| BackendError::Invalid {
        op: "fallocate",
        why: format!("{v:#x} does not fit an off_t"),
    })
}

impl<H: Hypervisor> crate::engine::Engine<HvBackend<H>> {
    /// The VM of an engine over the full hypervisor traits.
    pub fn vm(&self) -> &Arc<H::Vm> {
        self.backend().vm()
    }
    /// The hypervisor of an engine over the full hypervisor traits.
    pub fn hypervisor(&self) -> &Arc<H> {
        self.backend().hypervisor()
    }
}
