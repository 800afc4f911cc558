//! The model VM: shared state behind an `Arc`, used concurrently by vCPU
//! threads and by the runtime (attributes, slots, fallocate).
//!
//! Locks: `attrs` and `slots` are `RwLock`s taken for reading on every guest
//! access and never held across an exit or across I/O on page contents;
//! `slots_lock` (a mutex) serialises memslot updates like `kvm->slots_lock`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use privmem_core::attrmap::AttrMap;
use privmem_core::backend::{Cap, Region, SharedKind, Vm};
use privmem_core::error::Result;
use privmem_core::types::PAGE_SHIFT;
use privmem_core::{BackendError, Errno, GmemFlags, Gpa, GuestMemfd, Quirks, VmType, PAGE_SIZE};

use crate::backing::ModelShared;
use crate::gmem::{self, GmemFile, OP_CREATE};
use crate::inject::{InjectOp, Injector};
use crate::memslot::Slots;
use crate::mmio::MmioSptes;
use crate::profile::{
    Build, KernelProfile, EXIT_HYPERCALL_VALID_MASK, MAX_VCPU_IDS, TASK_SIZE_MAX,
};
use crate::vcpu::ModelVcpu;

static NEXT_VM_ID: AtomicU64 = AtomicU64::new(1);

/// The VM's kernel state (`struct kvm`).
#[derive(Debug)]
pub(crate) struct VmInner {
    pub(crate) id: u64,
    pub(crate) ty: VmType,
    pub(crate) profile: KernelProfile,
    pub(crate) inject: Arc<Injector>,
    pub(crate) slots: RwLock<Slots>,
    pub(crate) attrs: RwLock<AttrMap>,
    /// `kvm->arch.hypercall_exit_enabled`.
    pub(crate) hc_mask: AtomicU64,
    pub(crate) slots_lock: Mutex<()>,
    /// `kvm_mmu_max_gfn()`.
    pub(crate) max_gfn: u64,
    /// Host quirks (not upstream; see README.md).
    pub(crate) quirks: Quirks,
    /// Kernel build options (`CONFIG_KVM_SMM`, `CONFIG_KVM_GUEST_MEMFD`).
    pub(crate) build: Build,
    /// MMIO SPTEs and the memslot generation (sw-protected VMs).
    pub(crate) mmio: MmioSptes,
    vcpus: Mutex<BTreeSet<u32>>,
    /// `kvm->vm_dead`: every later VM and vCPU ioctl is EIO.
    dead: AtomicBool,
    /// `kvm->arch.mmu_valid_gen`: bumped by `kvm_mmu_zap_all_fast`, which
    /// makes every vCPU's loaded MMU root obsolete.
    mmu_valid_gen: AtomicU64,
}

impl VmInner {
    pub(crate) fn new(
        ty: VmType,
        profile: KernelProfile,
        inject: Arc<Injector>,
        max_gpa_bits: u32,
        quirks: Quirks,
        build: Build,
    ) -> VmInner {
        VmInner {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            ty,
            profile,
            inject,
            slots: RwLock::default(),
            attrs: RwLock::default(),
            hc_mask: AtomicU64::new(0),
            slots_lock: Mutex::new(()),
            max_gfn: (1u64 << (max_gpa_bits - PAGE_SHIFT)) - 1,
            quirks,
            build,
            mmio: MmioSptes::default(),
            vcpus: Mutex::default(),
            dead: AtomicBool::new(false),
            mmu_valid_gen: AtomicU64::new(0),
        }
    }

    /// The generation a freshly loaded MMU root gets.
    pub(crate) fn mmu_valid_gen(&self) -> u64 {
        self.mmu_valid_gen.load(Ordering::Acquire)
    }

    /// `kvm_arch_flush_shadow_memslot` for a memslot deleted or moved: a
    /// default VM (with `KVM_X86_QUIRK_SLOT_ZAP_ALL`, on by default) zaps
    /// everything with `kvm_mmu_zap_all_fast`, which invalidates every
    /// root; other VM types zap only the slot's range.
    pub(crate) fn flush_shadow_memslot(&self) {
        if self.ty == VmType::Default {
            self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// True once the VM is dead (`kvm_vm_dead`).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// EIO if the VM is dead (the check at the top of `kvm_vm_ioctl`).
    fn alive(&self, op: &'static str) -> Result<()> {
        if self.is_dead() {
            return Err(BackendError::os(op, Errno::EIO));
        }
        Ok(())
    }
}

/// What privmem's userspace, not the kernel, holds for a VM: with
/// [`Quirks::gmem_hva`], the guest_memfd mapping that stands in for a slot's
/// NULL `userspace_addr`, by raw slot id (the KVM backend's
/// `SlotEntry::_gmem_map`). Shared by the VM's handles and its vCPUs, as the
/// KVM backend's slot table is; outside [`VmInner`] because a file holds its
/// VM (a reference from the VM would be a cycle).
#[derive(Debug, Default)]
pub(crate) struct Userspace {
    gmem_maps: Mutex<BTreeMap<u32, Arc<GmemFile>>>,
}

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
        self.inner.attrs.read().expect("attrs").is_private(gpa)
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
        self.inner.dead.store(true, Ordering::Release);
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
        GmemFile::create(self.inner.clone(), size, flags)
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
