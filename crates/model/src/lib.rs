//! privmem-model: a deterministic pure-Rust model of Linux KVM guest private
//! memory (guest_memfd, memory attributes, `KVM_SET_USER_MEMORY_REGION2`,
//! `KVM_EXIT_MEMORY_FAULT`, `KVM_HC_MAP_GPA_RANGE`), implementing the
//! `privmem_core` hypervisor traits. It behaves as Linux 7.3 (default) or
//! 6.12 ([`KernelProfile`]), both checked against real kernels; every rule
//! and errno follows the kernel source.
//!
//! Pages live in sparse memfds (`pread`/`pwrite`/`fallocate`), so a 1 TiB
//! guest_memfd costs nothing until written and punching a hole really frees
//! memory.
//!
//! Model-only API beyond the traits:
//! - fault injection: [`ModelHypervisor::inject_failure`] (also on
//!   [`ModelVm`]), [`ModelHypervisor::poison_gmem`], [`ModelVm::poison_gpa`];
//! - introspection: [`ModelVm::attributes`], [`ModelHypervisor::gmem_read`],
//!   [`ModelHypervisor::gmem_allocated_pages`], [`ModelShared::allocated_pages`];
//! - stepping: [`ModelVcpu::step`], [`ModelVcpu::set_step_limit`];
//! - host parameters: [`ModelHypervisor::with_max_gpa_bits`] (the MMU's
//!   guest-physical width, 52 by default) and [`ModelHypervisor::with_quirks`]
//!   (host behaviour that is not upstream, e.g. PVM; off by default).
//!
//! `KVM_CAP_VM_TYPES` is `0x13`: default (0), sw-protected (1) and SNP (4),
//! the type [`privmem_core::VmType::Coco`] is created with.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attrs;
mod backing;
pub mod embed;
mod fault;
mod gmem;
mod gmem_mm;
mod gmem_ptes;
mod inject;
mod kick;
mod memslot;
mod mmio;
mod numa;
mod prefault;
mod profile;
mod slots;
mod state;
mod userspace;
mod vcpu;
mod vm;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use privmem_core::backend::{Cap, FileIo, FileStat, Hypervisor};
use privmem_core::error::Result;
use privmem_core::{Advice, MemPolicy, MmapOptions, MmapProt, MmapSharing};
use privmem_core::{BackendError, Errno, GuestMemfd, VmType, PAGE_SIZE};

pub use privmem_core::Quirks;

pub use backing::ModelShared;
pub use gmem::ModelGmemMapping;
pub use inject::InjectOp;
pub use kick::ModelKick;
pub use profile::{
    host_max_gpa_bits, max_gpa_bits_for, nr_memslot_as_ids, Build, KernelProfile,
    PreFaultInvalidSlot, NR_MEMSLOTS, VM_TYPES,
};
pub use vcpu::ModelVcpu;
pub use vm::ModelVm;

use inject::Injector;

/// The model of `/dev/kvm`.
#[derive(Debug, Clone)]
pub struct ModelHypervisor {
    profile: KernelProfile,
    inject: Arc<Injector>,
    max_gpa_bits: u32,
    quirks: Quirks,
    build: Build,
}

impl Default for ModelHypervisor {
    /// The 7.3 model with the default build (guest_memfd, memory
    /// attributes, TDP, no SMM), a 52-bit MMU and no host quirks.
    fn default() -> ModelHypervisor {
        ModelHypervisor::new(KernelProfile::default())
    }
}

impl ModelHypervisor {
    /// A model kernel with the given profile.
    pub fn new(profile: KernelProfile) -> ModelHypervisor {
        ModelHypervisor {
            profile,
            inject: Arc::default(),
            max_gpa_bits: profile::DEFAULT_MAX_GPA_BITS,
            quirks: Quirks::default(),
            build: Build::default(),
        }
    }

    /// The same model with the MMU's guest-physical width set to `bits`
    /// (`kvm_mmu_max_gfn()`: memslots ending above `2^bits` get EINVAL).
    /// Upstream uses 52 with shadow paging and the host's physical address
    /// width with TDP; [`profile::host_max_gpa_bits`] reads it off this host.
    pub fn with_max_gpa_bits(mut self, bits: u32) -> ModelHypervisor {
        self.max_gpa_bits = bits.clamp(32, 52);
        self
    }

    /// The same model with host quirks (host behaviour, not upstream; all
    /// off by default). [`Quirks::pvm`]: default VMs' guest faults go
    /// through `userspace_addr` only; [`Quirks::gmem_hva`]: the KVM
    /// backend's guest_memfd mapping stands in for a NULL `userspace_addr`
    /// and keeps the file alive while the slot lives. See README.md.
    pub fn with_quirks(mut self, quirks: Quirks) -> ModelHypervisor {
        self.quirks = quirks;
        self
    }

    /// The same model built as a kernel with (`true`) or without
    /// `CONFIG_KVM_SMM` (the default, as this host's PVM KVM): with SMM,
    /// VMs without private memory have a second memslot address space
    /// (`as_id` 1, `KVM_CAP_MULTI_ADDRESS_SPACE` = 2), as on the rig's 6.12
    /// kernel.
    pub fn with_smm(mut self, smm: bool) -> ModelHypervisor {
        self.build.smm = smm;
        self
    }

    /// True if the model is built with `CONFIG_KVM_SMM`.
    pub fn smm(&self) -> bool {
        self.build.smm
    }

    /// The same model built with (`true`, the default) or without
    /// `CONFIG_KVM_GUEST_MEMFD` ([`Build::guest_memfd`]): without it
    /// `KVM_CREATE_GUEST_MEMFD` gives `ENOTTY`, `KVM_MEM_GUEST_MEMFD`
    /// `EINVAL`, and the guest_memfd capabilities read 0.
    pub fn with_guest_memfd(mut self, guest_memfd: bool) -> ModelHypervisor {
        self.build.guest_memfd = guest_memfd;
        self
    }

    /// True if the model is built with `CONFIG_KVM_GUEST_MEMFD`.
    pub fn guest_memfd(&self) -> bool {
        self.build.guest_memfd
    }

    /// The same model built with (`true`, the default) or without
    /// `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES` ([`Build::memory_attributes`]):
    /// without it `KVM_SET_MEMORY_ATTRIBUTES` gives `ENOTTY`,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` reads 0 and only default VMs exist.
    pub fn with_memory_attributes(mut self, on: bool) -> ModelHypervisor {
        self.build.memory_attributes = on;
        self
    }

    /// The same model on a host with (`true`, the default) or without
    /// two-dimensional paging ([`Build::tdp`]): without it
    /// `KVM_CAP_PRE_FAULT_MEMORY` is 0 and `KVM_PRE_FAULT_MEMORY` EOPNOTSUPP.
    pub fn with_tdp(mut self, on: bool) -> ModelHypervisor {
        self.build.tdp = on;
        self
    }

    /// The kernel build options.
    pub fn build(&self) -> Build {
        self.build
    }

    /// The MMU's guest-physical width (`kvm_mmu_max_gfn()` is
    /// `2^bits / 4096 - 1`).
    pub fn max_gpa_bits(&self) -> u32 {
        self.max_gpa_bits
    }

    /// The profile.
    pub fn profile(&self) -> KernelProfile {
        self.profile
    }

    /// Fault injection: the `nth` next call (1 = the next one) of `op`, in
    /// this hypervisor or any VM/vCPU it created, fails with `errno`. The
    /// failure fires after argument validation (see [`InjectOp`]).
    pub fn inject_failure(&self, op: InjectOp, nth: u32, errno: Errno) {
        self.inject.arm(op, nth, errno);
    }

    /// Disarms every injected failure.
    pub fn clear_injections(&self) {
        self.inject.clear();
    }

    /// Fault injection: marks the guest_memfd page at file `offset` as
    /// hardware-poisoned (`memory_failure` → `kvm_gmem_error_folio`: the
    /// folio stays, guest faults get EHWPOISON; a PUNCH_HOLE clears it).
    ///
    /// # Errors
    /// `Invalid` for a foreign handle or an offset beyond the file.
    pub fn poison_gmem(&self, gmem: &GuestMemfd, offset: u64) -> Result<()> {
        let file = model_file(gmem, "poison")?;
        if offset >= file.size() {
            return Err(BackendError::invalid(
                "poison",
                format!("offset {offset:#x} is beyond the file"),
            ));
        }
        file.poison_page(offset / PAGE_SIZE);
        Ok(())
    }

    /// Introspection: reads guest_memfd contents at `offset` (no SIGBUS
    /// rules: this is the kernel's view of the pages).
    ///
    /// # Errors
    /// `Invalid` for a foreign handle or a range beyond the file.
    pub fn gmem_read(&self, gmem: &GuestMemfd, offset: u64, buf: &mut [u8]) -> Result<()> {
        let file = model_file(gmem, "gmem_read")?;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > file.size()) {
            return Err(BackendError::invalid(
                "gmem_read",
                format!("range at {offset:#x} is beyond the file"),
            ));
        }
        file.mem
            .read_at(offset, buf)
            .map_err(|e| BackendError::os("gmem_read", e))
    }

    /// Introspection: pages currently allocated in the guest_memfd.
    ///
    /// # Errors
    /// `Invalid` for a foreign handle.
    pub fn gmem_allocated_pages(&self, gmem: &GuestMemfd) -> Result<u64> {
        let file = model_file(gmem, "gmem_allocated_pages")?;
        file.mem
            .allocated_pages()
            .map_err(|e| BackendError::os("gmem_allocated_pages", e))
    }

    /// Introspection: number of memslots bound to the guest_memfd.
    ///
    /// # Errors
    /// `Invalid` for a foreign handle.
    pub fn gmem_binding_count(&self, gmem: &GuestMemfd) -> Result<usize> {
        Ok(model_file(gmem, "gmem_binding_count")?.binding_count())
    }
}

fn model_file(gmem: &GuestMemfd, op: &'static str) -> Result<Arc<gmem::GmemFile>> {
    gmem::file_of(gmem)
        .ok_or_else(|| BackendError::invalid(op, "not a guest_memfd created by the model"))
}

impl Hypervisor for ModelHypervisor {
    type Vm = ModelVm;
    type Mapping = ModelGmemMapping;

    fn name(&self) -> &'static str {
        "model"
    }

    fn check_extension(&self, cap: Cap) -> Result<u64> {
        Ok(self.build.check_extension(self.profile, cap, None))
    }

    fn create_vm(&self, ty: VmType) -> Result<ModelVm> {
        self.create_vm_raw(ty.kvm_type())
    }

    fn create_vm_raw(&self, ty: u64) -> Result<ModelVm> {
        let ty = self
            .build
            .vm_type_from_raw(self.profile, ty)
            .ok_or(BackendError::os("KVM_CREATE_VM", Errno::EINVAL))?;
        Ok(ModelVm::new(state::VmInner::new(
            ty,
            self.profile,
            self.inject.clone(),
            self.max_gpa_bits,
            self.quirks,
            self.build,
        )))
    }

    fn gmem_fallocate(&self, gmem: &GuestMemfd, mode: i32, offset: i64, len: i64) -> Result<()> {
        gmem::fallocate(&self.inject, gmem, mode, offset, len)
    }

    fn gmem_file_io(&self, gmem: &GuestMemfd, io: FileIo) -> Result<usize> {
        gmem::file_io(gmem, io)
    }

    fn gmem_truncate(&self, gmem: &GuestMemfd, _len: u64) -> Result<()> {
        gmem::truncate(gmem)
    }

    fn gmem_stat(&self, gmem: &GuestMemfd) -> Result<FileStat> {
        gmem::stat(gmem)
    }

    fn gmem_mmap(&self, gmem: &GuestMemfd, len: u64, shared: bool) -> Result<ModelGmemMapping> {
        let sharing = if shared {
            MmapSharing::Shared
        } else {
            MmapSharing::Private
        };
        let opts = MmapOptions {
            prot: MmapProt::ReadWrite,
            sharing,
        };
        gmem::mmap(&self.inject, gmem, len, opts)
    }

    fn gmem_mmap_with(
        &self,
        gmem: &GuestMemfd,
        len: u64,
        opts: MmapOptions,
    ) -> Result<ModelGmemMapping> {
        gmem::mmap(&self.inject, gmem, len, opts)
    }

    fn gmem_mbind(
        &self,
        map: &ModelGmemMapping,
        offset: u64,
        len: u64,
        policy: MemPolicy,
        flags: u32,
    ) -> Result<()> {
        map.mbind(offset, len, policy, flags)
    }

    fn gmem_get_mempolicy(&self, map: &ModelGmemMapping, offset: u64) -> Result<MemPolicy> {
        map.get_mempolicy(offset)
    }

    fn gmem_madvise(
        &self,
        map: &ModelGmemMapping,
        offset: u64,
        len: u64,
        advice: Advice,
    ) -> Result<()> {
        map.madvise(offset, len, advice)
    }

    fn gmem_poison(&self, map: &ModelGmemMapping, offset: u64) -> Result<()> {
        map.poison(offset)
    }

    fn quirks(&self) -> Quirks {
        self.quirks
    }

    fn kernel_release(&self) -> String {
        self.profile.name().to_string()
    }
}
