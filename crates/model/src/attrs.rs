//! `KVM_SET_MEMORY_ATTRIBUTES` (docs/semantics/attributes.md, `kvm_vm_ioctl_set_mem_attributes`).
//!
//! Attributes are per VM and per 4 KiB gfn, independent of memslots: they can
//! be set where no slot exists and survive slot deletion. They never move,
//! copy or free data. Stored in the coalesced [`AttrMap`].

use privmem_core::attrmap::AttrMap;
use privmem_core::error::Result;
use privmem_core::{BackendError, Errno, Gpa, GpaRange, PAGE_SIZE};

use crate::inject::InjectOp;
use crate::state::VmInner;

const OP: &str = "KVM_SET_MEMORY_ATTRIBUTES";

impl VmInner {
    /// `KVM_SET_MEMORY_ATTRIBUTES(address, size, attributes, flags)`.
    pub(crate) fn set_attributes(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<()> {
        self.set_attributes_checked(address, size, attributes, flags)
            .map_err(|e| BackendError::os(OP, e))
    }

    fn set_attributes_checked(
        &self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<(), Errno> {
        // Without CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES the ioctl is not in
        // kvm_vm_ioctl(): ENOTTY for every VM type.
        if !self.build.memory_attributes {
            return Err(Errno::ENOTTY);
        }
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        if attributes & !self.profile.supported_attributes(Some(self.ty)) != 0 {
            return Err(Errno::EINVAL);
        }
        let Ok(range) = GpaRange::new(Gpa(address), size) else {
            // size == 0 or address + size wraps.
            return Err(Errno::EINVAL);
        };
        if !address.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let private = attributes != 0;
        let mut attrs = self.attrs.lock_range_maps(range);
        // kvm_vm_set_mem_attributes: a range that already has `attributes`
        // everywhere returns 0 before anything is reserved.
        if attrs.is_uniform(private) {
            return Ok(());
        }
        // xa_reserve() is where the kernel can fail with ENOMEM, before
        // anything changes; the model fires injected failures there. 7.3
        // reserves only when setting: clearing cannot fail.
        if private || self.profile.attr_clear_reserves() {
            if let Some(e) = self.inject.check(InjectOp::SetMemoryAttributes) {
                return Err(e);
            }
        }
        attrs.set(private);
        Ok(())
    }

    /// A copy of the kernel's attribute view.
    pub(crate) fn attributes(&self) -> AttrMap {
        self.attrs.snapshot()
    }
}
