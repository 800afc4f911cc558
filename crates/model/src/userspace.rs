//! What privmem's userspace, not the kernel, holds for a model VM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::gmem::GmemFile;

/// What privmem's userspace, not the kernel, holds for a VM: with
/// [`Quirks::gmem_hva`], the guest_memfd mapping that stands in for a slot's
/// NULL `userspace_addr`, by raw slot id (the KVM backend's
/// `SlotEntry::_gmem_map`). Shared by the VM's handles and its vCPUs, as the
/// KVM backend's slot table is; outside [`VmInner`](crate::state::VmInner) because a file holds its
/// VM (a reference from the VM would be a cycle).
#[derive(Debug, Default)]
pub(crate) struct Userspace {
    pub(crate) gmem_maps: Mutex<BTreeMap<u32, Arc<GmemFile>>>,
}
