//! The KVM backend's own guest memory: each vCPU's *runtime area*, a
//! memslot holding its page tables, GDT, stack and compiled code.
//!
//! An area is placed above every live memslot, above every op range of this
//! program and (when there is room) of every earlier program of the VM, and
//! clear of every page made private, so privmem's own accesses never land on
//! a GPA the workload used: they would replace the kernel's SPTE for it (an
//! MMIO SPTE of a slotless gfn decides whether a later access to a private
//! gfn faults as private or as shared on sw-protected VMs).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use kvm_bindings::kvm_userspace_memory_region2;
use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::{
    BackendError, Cap, GmemFlags, Gpa, GpaRange, GuestMemfd, HostMemory, RegionApi, SharedKind,
};

use crate::guest::layout::{Layout, HUGE};
use crate::mem::{KvmMapping, KvmShared};
use crate::state::{SlotEntry, VmState};
use crate::sys;

/// First memslot id used for runtime areas (slot = base + vCPU index).
pub const RUNTIME_SLOT_BASE: u32 = 32000;
/// Highest user memslot id on x86 (`KVM_USER_MEM_SLOTS - 1`).
const MAX_SLOT_ID: u32 = 32763;
/// The operation runtime-area errors name.
const OP: &str = "load_program";

/// How a runtime area is backed.
#[derive(Debug)]
enum AreaBacking {
    /// A MMAP|INIT_SHARED guest_memfd (the slot's only backing).
    Gmem { _gmem: GuestMemfd, _map: KvmMapping },
    /// Anonymous shared memory in a plain slot.
    Anon { _mem: KvmShared },
}

/// A vCPU's runtime area: a memslot holding its page tables, GDT, stack and code.
#[derive(Debug)]
pub(crate) struct RuntimeArea {
    slot: u32,
    /// The layout it was built from.
    pub(crate) layout: Layout,
    _backing: AreaBacking,
}

/// The highest end of `ranges` (0 for none).
fn top_of(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).max().unwrap_or(0)
}

/// Lays out the runtime area at the first 2 MiB boundary at or above `top`
/// whose pages are all shared.
fn plan_clear_of_private(
    vm: &VmState,
    top: u64,
    ranges: &[(u64, u64)],
    code: u64,
) -> Result<Layout, BackendError> {
    let no_room = || BackendError::invalid(OP, "no room for the runtime area");
    let private = vm.private.lock().unwrap_or_else(PoisonError::into_inner);
    let mut base = top.checked_next_multiple_of(HUGE).ok_or_else(no_room)?;
    loop {
        let layout = Layout::plan(base, ranges, code)
            .map_err(|e| BackendError::invalid(OP, e.to_string()))?;
        let area = GpaRange::new(Gpa(base), layout.size).map_err(|_| no_room())?;
        match private
            .runs(area)
            .iter()
            .filter(|r| r.private)
            .map(|r| r.range.end())
            .max()
        {
            None => return Ok(layout),
            Some(end) => {
                base = end
                    .raw()
                    .checked_next_multiple_of(HUGE)
                    .ok_or_else(no_room)?
            }
        }
    }
}

/// True if this VM can back its runtime area with a MMAP|INIT_SHARED
/// guest_memfd (6.18 default VMs); otherwise anonymous memory is used.
fn gmem_runtime_backing(vm: &VmState) -> bool {
    let want = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    let flags = vm
        .check_extension(Cap::GuestMemfdFlags.number())
        .unwrap_or(0);
    vm.raw_type == 0 && GmemFlags(flags).contains(want)
}

/// Builds and installs the runtime area for vCPU `index`, replacing its
/// previous one. The area goes above every memslot and every op range, and
/// above every op range of earlier programs of the VM when it fits.
pub(crate) fn install(
    vm: &VmState,
    index: u32,
    old: Option<RuntimeArea>,
    ranges: &[(u64, u64)],
    code: &[u8],
) -> Result<RuntimeArea, BackendError> {
    let slot = RUNTIME_SLOT_BASE
        .checked_add(index)
        .filter(|s| *s <= MAX_SLOT_ID)
        .ok_or_else(|| {
            BackendError::invalid(OP, format!("no runtime memslot id for vcpu {index}"))
        })?;
    let mut slots = vm.slots();
    if slots.get(&slot).is_some_and(|e| !e.runtime) {
        return Err(BackendError::invalid(
            OP,
            format!("memslot {slot} (vcpu {index}'s runtime area) is taken by the workload"),
        ));
    }
    if let Some(old) = old {
        vm.delete_slot(old.slot)?;
        slots.remove(&old.slot);
    }
    for (&id, e) in slots.iter().filter(|(_, e)| e.runtime) {
        let hit = ranges
            .iter()
            .any(|&(s, end)| s < e.gpa + e.size && e.gpa < end);
        if hit {
            return Err(BackendError::invalid(
                OP,
                format!("an op range overlaps runtime memslot {id}"),
            ));
        }
    }
    let top = slots
        .values()
        .map(|e| e.gpa + e.size)
        .chain(ranges.iter().map(|r| r.1))
        .max()
        .unwrap_or(0);
    let seen = vm
        .op_high_water
        .fetch_max(top_of(ranges), Ordering::AcqRel)
        .max(top_of(ranges));
    // Above every GPA an earlier program touched if there is room, else
    // above this program's ranges and the live memslots only.
    let code_len = code.len() as u64;
    let layout = match plan_clear_of_private(vm, top.max(seen), ranges, code_len) {
        Ok(layout) => layout,
        Err(_) if seen > top => plan_clear_of_private(vm, top, ranges, code_len)?,
        Err(e) => return Err(e),
    };
    let image = layout.image(code);
    let (backing, region) = area_backing(vm, slot, &layout, &image)?;
    // SAFETY: `userspace_addr` is the start of `backing`'s mapping of
    // `layout.size` bytes; `backing` lives in the returned area, which is
    // dropped only after `remove` deleted the slot (or a later `install`
    // replaced it).
    unsafe { vm.set_region(RegionApi::V2, region) }?;
    slots.insert(
        slot,
        SlotEntry {
            gpa: layout.base,
            size: layout.size,
            _backing: None,
            _gmem_map: None,
            runtime: true,
            gmem: None,
        },
    );
    Ok(RuntimeArea {
        slot,
        layout,
        _backing: backing,
    })
}

fn area_backing(
    vm: &VmState,
    slot: u32,
    layout: &Layout,
    image: &[u8],
) -> Result<(AreaBacking, kvm_userspace_memory_region2), BackendError> {
    let fault = |_| BackendError::invalid(OP, "writing the runtime area faulted");
    let mut region = kvm_userspace_memory_region2 {
        slot,
        guest_phys_addr: layout.base,
        memory_size: layout.size,
        ..Default::default()
    };
    if gmem_runtime_backing(vm) {
        let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
        let fd = sys::create_guest_memfd(&vm.fd, layout.size, flags.0)?;
        let gmem = GuestMemfd::new(fd, layout.size, flags);
        let map = KvmMapping::new(gmem.as_fd(), layout.size, true)?;
        map.write(0, image).map_err(fault)?;
        region.flags = MEM_GUEST_MEMFD;
        // Unused by a 6.18 gmem-only slot, but PVM hosts fault through the
        // HVA ([`privmem_core::Quirks::pvm`]). privmem's own slot: no
        // caller's address is replaced.
        region.userspace_addr = map.host_addr();
        region.guest_memfd = gmem.as_fd().as_raw_fd() as u32;
        Ok((
            AreaBacking::Gmem {
                _gmem: gmem,
                _map: map,
            },
            region,
        ))
    } else {
        let mem = KvmShared::new(layout.size, SharedKind::Anonymous)?;
        mem.write(0, image).map_err(fault)?;
        region.userspace_addr = mem.hva(0);
        Ok((AreaBacking::Anon { _mem: mem }, region))
    }
}

/// Deletes a runtime area's memslot, then frees its memory.
pub(crate) fn remove(vm: &VmState, area: RuntimeArea) {
    let mut slots = vm.slots();
    // Deleting can only fail if the slot is already gone; either way KVM
    // no longer references the area when the backing is dropped below.
    let _ = vm.delete_slot(area.slot);
    slots.remove(&area.slot);
    drop(area);
}
