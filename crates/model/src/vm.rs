//! The model VM handle ([`ModelVm`]): the `Vm` trait over the kernel state
//! in [`crate::state`], shared behind an `Arc` by vCPU threads and by the
//! runtime (attributes, slots, fallocate).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use privmem_core::attrmap::AttrMap;
use privmem_core::backend::{Cap, Region, SharedKind, Vm};
use privmem_core::error::Result;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{BackendError, Errno, GmemFlags, Gpa, GuestMemfd, VmType, PAGE_SIZE};

use crate::backing::ModelShared;
use crate::gmem::{self, GmemFile, GmemOwner, OP_CREATE};
use crate::inject::InjectOp;
use crate::profile::{KernelProfile, EXIT_HYPERCALL_VALID_MASK, MAX_VCPU_IDS, TASK_SIZE_MAX};
use crate::state::VmInner;
use crate::userspace::Userspace;
use crate::vcpu::ModelVcpu;

/// A model VM. Cheap to clone (all clones are the same VM).
#[derive(Clone, Debug)]
pub struct ModelVm {
    pub(crate) inner: Arc<VmInner>,
    user: Arc<Userspace>,
}

impl ModelVm {
    pub(crate) fn new(inner: VmInner) -> ModelVm {
        ModelVm {
            inner: Arc::new(inner),
            user: Arc::default(),
        }
    }

    /// [`Quirks::gmem_hva`]: the guest_memfd whose mapping the KVM backend
    /// would pass as `userspace_addr` for `r` (`crates/kvm/src/vm.rs`
    /// `gmem_hva_mapping`: v2, GUEST_MEMFD, NULL `userspace_addr`, a
    /// `MMAP|INIT_SHARED` file handle, an aligned range inside the file).
    fn gmem_hva_file(&self, r: &Region<'_, ModelShared>) -> Option<Arc<GmemFile>> {
        if !self.inner.quirks.gmem_hva || r.size > TASK_SIZE_MAX {
            return None;
        }
        gmem::file_of(r.gmem_hva_file()?)
    }

    /// The kernel profile the VM behaves as.
    pub fn profile(&self) -> KernelProfile {
        self.inner.profile
    }

    /// Introspection: a copy of the kernel's attribute map.
    pub fn attributes(&self) -> AttrMap {
        self.inner.attributes()
    }

    /// Introspection: is the page holding `gpa` private in the kernel's view?
    pub fn is_private(&self, gpa: Gpa) -> bool {
        self.inner.attrs.is_private(gpa)
    }

    /// Introspection: number of memslots (every address space).
    pub fn slot_count(&self) -> usize {
        self.inner.slots.read().expect("slots").len()
    }

    /// Introspection: the number of the memslot a guest access to `gpa`
    /// resolves to (address space 0), if any.
    pub fn slot_of(&self, gpa: Gpa) -> Option<u32> {
        let slots = self.inner.slots.read().expect("slots");
        slots.find(gpa.raw() >> PAGE_SHIFT).map(|s| s.id)
    }

    /// Introspection: the `KVM_CAP_EXIT_HYPERCALL` mask in force.
    pub fn exit_hypercall_mask(&self) -> u64 {
        self.inner.hc_mask.load(Ordering::Acquire)
    }

    /// Fault injection: the guest_memfd page backing `gpa` becomes
    /// hardware-poisoned (later guest faults there give EHWPOISON, host
    /// mapping accesses give a host fault).
    ///
    /// # Errors
    /// `Invalid` if no live guest_memfd binding backs `gpa`.
    pub fn poison_gpa(&self, gpa: Gpa) -> Result<()> {
        let gfn = gpa.raw() >> PAGE_SHIFT;
        let slots = self.inner.slots.read().expect("slots");
        let found = slots.find(gfn).and_then(|s| {
            let g = s.gmem.as_ref()?;
            Some((g.file.upgrade()?, g.pgoff + (gfn - s.base_gfn)))
        });
        let (file, pgoff) = found.ok_or_else(|| BackendError::Invalid {
            op: "poison",
            why: format!("no live guest_memfd backs {gpa}"),
        })?;
        file.poison_page(pgoff);
        Ok(())
    }

    /// Fault injection: the VM dies, as a `KVM_BUG_ON` makes it
    /// (`kvm_vm_dead`): every later VM ioctl (`KVM_CHECK_EXTENSION` on the
    /// VM, memslots, attributes, guest_memfd creation, `KVM_ENABLE_CAP`,
    /// vCPU creation) and vCPU ioctl (`KVM_RUN`, `KVM_PRE_FAULT_MEMORY`)
    /// answers EIO. guest_memfd file operations keep working.
    pub fn mark_dead(&self) {
        self.inner.mark_dead();
    }

    /// Fault injection: see [`crate::ModelHypervisor::inject_failure`] (the
    /// table is shared by the hypervisor and all its VMs).
    pub fn inject_failure(&self, op: InjectOp, nth: u32, errno: Errno) {
        self.inner.inject.arm(op, nth, errno);
    }
}

impl Vm for ModelVm {
    type Vcpu = ModelVcpu;
    type Shared = ModelShared;

    fn vm_type(&self) -> VmType {
        self.inner.ty
    }

    fn check_extension(&self, cap: Cap) -> Result<u64> {
        let inner = &self.inner;
        inner.alive("KVM_CHECK_EXTENSION")?;
        Ok(inner
            .build
            .check_extension(inner.profile, cap, Some(inner.ty)))
    }

    fn enable_exit_hypercall(&self, mask: u64) -> Result<()> {
        self.inner.alive("KVM_ENABLE_CAP")?;
        if mask & !EXIT_HYPERCALL_VALID_MASK != 0 {
            return Err(BackendError::os("KVM_ENABLE_CAP", Errno::EINVAL));
        }
        self.inner.hc_mask.store(mask, Ordering::Release);
        Ok(())
    }

    fn create_guest_memfd(&self, size: u64, flags: GmemFlags) -> Result<GuestMemfd> {
        self.inner.alive(OP_CREATE)?;
        // Without CONFIG_KVM_GUEST_MEMFD the ioctl is not in kvm_vm_ioctl()
        // and falls through to kvm_arch_vm_ioctl(): ENOTTY before any check.
        if !self.inner.build.guest_memfd {
            return Err(BackendError::os(OP_CREATE, Errno::ENOTTY));
        }
        let p = self.inner.profile;
        if flags.0 & !p.gmem_supported_flags(Some(self.inner.ty)).0 != 0 {
            return Err(BackendError::os(OP_CREATE, Errno::EINVAL));
        }
        // `size` is a signed loff_t: <= 0 or unaligned is EINVAL; no upper bound.
        if (size as i64) <= 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(BackendError::os(OP_CREATE, Errno::EINVAL));
        }
        if let Some(e) = self.inner.inject.check(InjectOp::CreateGuestMemfd) {
            return Err(BackendError::os(OP_CREATE, e));
        }
        let owner = GmemOwner {
            id: self.inner.id,
            profile: self.inner.profile,
            _vm: self.inner.clone(),
        };
        GmemFile::create(owner, size, flags)
    }

    fn set_user_memory_region(&self, region: &Region<'_, ModelShared>) -> Result<()> {
        self.inner.alive(match region.api {
            privmem_core::RegionApi::V1 => "KVM_SET_USER_MEMORY_REGION",
            privmem_core::RegionApi::V2 => "KVM_SET_USER_MEMORY_REGION2",
        })?;
        let map = self.gmem_hva_file(region);
        self.inner.set_region(region, map.as_ref())?;
        // As the KVM backend's slot table: a successful call replaces the
        // slot's entry (dropping its old mapping), a delete removes it.
        let mut maps = self.user.gmem_maps.lock().expect("gmem maps");
        match map {
            Some(file) if region.size > 0 => maps.insert(region.slot, file),
            _ => maps.remove(&region.slot),
        };
        Ok(())
    }

    fn set_memory_attributes(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<()> {
        self.inner.alive("KVM_SET_MEMORY_ATTRIBUTES")?;
        self.inner.set_attributes(address, size, attributes, flags)
    }

    fn create_shared(&self, size: u64, kind: SharedKind) -> Result<ModelShared> {
        ModelShared::create(size, kind, Some(self.inner.inject.clone()))
    }

    fn create_vcpu(&self, index: u32) -> Result<ModelVcpu> {
        const OP: &str = "KVM_CREATE_VCPU";
        self.inner.alive(OP)?;
        if index >= MAX_VCPU_IDS {
            return Err(BackendError::os(OP, Errno::EINVAL));
        }
        if !self.inner.vcpus.lock().expect("vcpus").insert(index) {
            return Err(BackendError::os(OP, Errno::EEXIST));
        }
        Ok(ModelVcpu::new(self.inner.clone(), self.user.clone(), index))
    }

    fn hypercall_transport(&self) -> &'static str {
        "direct"
    }

    fn poison_page(&self, gpa: Gpa) -> Result<()> {
        self.poison_gpa(gpa)
    }
}
