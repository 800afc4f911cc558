//! [`KvmVm`]: memslots (with ownership of their backings), guest_memfd
//! creation, memory attributes, and the per-vCPU runtime areas.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use privmem_core::attrmap::AttrMap;
use privmem_core::{Attrs, Emulation, EmulationLog, Gpa, GpaRange};

use kvm_bindings::CpuId;
use kvm_ioctls::VmFd;
use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::{
    BackendError, Cap, GmemFlags, GmemRef, GuestMemfd, HostMemory, Region, RegionApi, SharedKind,
    UserAddr, Vm, VmType, PAGE_SIZE,
};

use crate::guest::layout::{Layout, HUGE};
use crate::guest::Transport;
use crate::mem::{KvmMapping, KvmShared};
use crate::sys::{self, fd_of, MemoryAttributes, MemoryRegion1, MemoryRegion2};
use crate::vcpu::KvmVcpu;

/// First memslot id used for runtime areas (slot = base + vCPU index).
pub const RUNTIME_SLOT_BASE: u32 = 32000;
/// Highest user memslot id on x86 (`KVM_USER_MEM_SLOTS - 1`).
const MAX_SLOT_ID: u32 = 32763;
/// `KVM_CAP_EXIT_HYPERCALL`.
const CAP_EXIT_HYPERCALL: u32 = 201;

/// A live memslot and what keeps its host memory valid.
#[derive(Debug)]
struct SlotEntry {
    gpa: u64,
    size: u64,
    /// The shared backing behind `userspace_addr`, held until deletion.
    _backing: Option<KvmShared>,
    /// The gmem mmap passed as `userspace_addr` on hosts that need it.
    _gmem_map: Option<KvmMapping>,
    runtime: bool,
}

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

/// State shared by a VM and its vCPUs.
#[derive(Debug)]
pub(crate) struct VmInner {
    pub(crate) fd: VmFd,
    raw_type: u64,
    pub(crate) transport: Transport,
    /// Give gmem-only slots a host mmap as `userspace_addr` (PVM quirk).
    gmem_hva: bool,
    pub(crate) cpuid: Option<Arc<CpuId>>,
    /// See [`HostQuirks::emulation`].
    pub(crate) emulation: Arc<EmulationLog>,
    /// The mask last enabled with `KVM_CAP_EXIT_HYPERCALL` (port-I/O emulation).
    pub(crate) exit_hypercall_mask: AtomicU64,
    /// The pages the caller made private (KVM has no get API, so the backend
    /// mirrors its own successful `KVM_SET_MEMORY_ATTRIBUTES` calls): the
    /// runtime area is placed where no page is private, so privmem's own code
    /// and page tables never sit on pages made private (even slotless ones).
    private: Mutex<AttrMap>,
    slots: Mutex<BTreeMap<u32, SlotEntry>>,
    /// The highest end of any op range a program of this VM has had: runtime
    /// areas go above it when they fit, so privmem's own code never lands on
    /// a GPA an earlier program touched (its faults there would replace the
    /// kernel's MMIO SPTE for a slotless gfn, which decides how a later
    /// access to it resolves on sw-protected VMs: `privmem_model` `mmio`).
    op_high_water: AtomicU64,
}

/// Host properties a VM inherits from its hypervisor.
#[derive(Debug, Clone)]
pub(crate) struct HostQuirks {
    /// Hypercall transport for guest code.
    pub(crate) transport: Transport,
    /// See [`crate::caps::gmem_slots_need_hva`].
    pub(crate) gmem_hva: bool,
    /// `KVM_GET_SUPPORTED_CPUID`, set on every vCPU.
    pub(crate) cpuid: Option<Arc<CpuId>>,
    /// Counts privmem's own stand-ins for the kernel (shared by the
    /// hypervisor and every VM and vCPU it created).
    pub(crate) emulation: Arc<EmulationLog>,
}

/// A KVM VM.
#[derive(Debug)]
pub struct KvmVm {
    inner: Arc<VmInner>,
}

fn invalid(op: &'static str, why: impl Into<String>) -> BackendError {
    BackendError::Invalid {
        op,
        why: why.into(),
    }
}

impl KvmVm {
    pub(crate) fn new(fd: VmFd, raw_type: u64, host: HostQuirks) -> KvmVm {
        KvmVm {
            inner: Arc::new(VmInner {
                fd,
                raw_type,
                transport: host.transport,
                gmem_hva: host.gmem_hva,
                cpuid: host.cpuid,
                emulation: host.emulation,
                exit_hypercall_mask: AtomicU64::new(0),
                private: Mutex::new(AttrMap::new()),
                slots: Mutex::new(BTreeMap::new()),
                op_high_water: AtomicU64::new(0),
            }),
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

/// The highest end of `ranges` (0 for none).
fn top_of(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).max().unwrap_or(0)
}

impl VmInner {
    /// Lays out the runtime area at the first 2 MiB boundary at or above
    /// `top` whose pages are all shared.
    fn plan_clear_of_private(
        &self,
        top: u64,
        ranges: &[(u64, u64)],
        code: u64,
    ) -> Result<Layout, BackendError> {
        const OP: &str = "load_program";
        let no_room = || invalid(OP, "no room for the runtime area");
        let private = self.private.lock().unwrap_or_else(PoisonError::into_inner);
        let mut base = top.checked_next_multiple_of(HUGE).ok_or_else(no_room)?;
        loop {
            let layout =
                Layout::plan(base, ranges, code).map_err(|e| invalid(OP, e.to_string()))?;
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

    fn slots(&self) -> MutexGuard<'_, BTreeMap<u32, SlotEntry>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn region_ioctl(&self, api: RegionApi, r: &MemoryRegion2) -> Result<(), BackendError> {
        match api {
            RegionApi::V2 => sys::set_user_memory_region2(fd_of(&self.fd), r),
            RegionApi::V1 => sys::set_user_memory_region(
                fd_of(&self.fd),
                &MemoryRegion1 {
                    slot: r.slot,
                    flags: r.flags,
                    guest_phys_addr: r.guest_phys_addr,
                    memory_size: r.memory_size,
                    userspace_addr: r.userspace_addr,
                },
            ),
        }
    }

    fn delete_slot(&self, slot: u32) -> Result<(), BackendError> {
        let r = MemoryRegion2 {
            slot,
            ..Default::default()
        };
        sys::set_user_memory_region2(fd_of(&self.fd), &r)
    }

    /// True if this VM can back its runtime area with a MMAP|INIT_SHARED
    /// guest_memfd (6.18 default VMs); otherwise anonymous memory is used.
    fn gmem_runtime_backing(&self) -> bool {
        let want = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
        let flags =
            sys::check_extension(fd_of(&self.fd), Cap::GuestMemfdFlags.number()).unwrap_or(0);
        self.raw_type == 0 && GmemFlags(flags).contains(want)
    }

    /// Builds and installs the runtime area for vCPU `index`, replacing its
    /// previous one. The area goes above every memslot and every op range,
    /// and above every op range of earlier programs of the VM when it fits.
    pub(crate) fn install_runtime_area(
        &self,
        index: u32,
        old: Option<RuntimeArea>,
        ranges: &[(u64, u64)],
        code: &[u8],
    ) -> Result<RuntimeArea, BackendError> {
        const OP: &str = "load_program";
        let slot = RUNTIME_SLOT_BASE
            .checked_add(index)
            .filter(|s| *s <= MAX_SLOT_ID)
            .ok_or_else(|| invalid(OP, format!("no runtime memslot id for vcpu {index}")))?;
        let mut slots = self.slots();
        if slots.get(&slot).is_some_and(|e| !e.runtime) {
            return Err(invalid(
                OP,
                format!("memslot {slot} (vcpu {index}'s runtime area) is taken by the workload"),
            ));
        }
        if let Some(old) = old {
            self.delete_slot(old.slot)?;
            slots.remove(&old.slot);
        }
        for (&id, e) in slots.iter().filter(|(_, e)| e.runtime) {
            let hit = ranges
                .iter()
                .any(|&(s, end)| s < e.gpa + e.size && e.gpa < end);
            if hit {
                return Err(invalid(
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
        let seen = self
            .op_high_water
            .fetch_max(top_of(ranges), Ordering::AcqRel)
            .max(top_of(ranges));
        // Above every GPA an earlier program touched if there is room, else
        // above this program's ranges and the live memslots only.
        let layout = match self.plan_clear_of_private(top.max(seen), ranges, code.len() as u64) {
            Ok(layout) => layout,
            Err(_) if seen > top => self.plan_clear_of_private(top, ranges, code.len() as u64)?,
            Err(e) => return Err(e),
        };
        let image = layout.image(code);
        let (backing, region) = self.area_backing(slot, &layout, &image)?;
        sys::set_user_memory_region2(fd_of(&self.fd), &region)?;
        slots.insert(
            slot,
            SlotEntry {
                gpa: layout.base,
                size: layout.size,
                _backing: None,
                _gmem_map: None,
                runtime: true,
            },
        );
        Ok(RuntimeArea {
            slot,
            layout,
            _backing: backing,
        })
    }

    fn area_backing(
        &self,
        slot: u32,
        layout: &Layout,
        image: &[u8],
    ) -> Result<(AreaBacking, MemoryRegion2), BackendError> {
        let fault = |_| invalid("load_program", "writing the runtime area faulted");
        let mut region = MemoryRegion2 {
            slot,
            guest_phys_addr: layout.base,
            memory_size: layout.size,
            ..Default::default()
        };
        if self.gmem_runtime_backing() {
            let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
            let fd = sys::create_guest_memfd(fd_of(&self.fd), layout.size, flags.0)?;
            let gmem = GuestMemfd::new(fd, layout.size, flags);
            let map = KvmMapping::new(gmem.as_fd(), layout.size, true)?;
            map.write(0, image).map_err(fault)?;
            region.flags = MEM_GUEST_MEMFD;
            // Unused by a 6.18 gmem-only slot, but PVM hosts fault through
            // the HVA (see `caps::gmem_slots_need_hva`).
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
    pub(crate) fn remove_runtime_area(&self, area: RuntimeArea) {
        let mut slots = self.slots();
        // Deleting can only fail if the slot is already gone; either way KVM
        // no longer references the area when the backing is dropped below.
        let _ = self.delete_slot(area.slot);
        slots.remove(&area.slot);
        drop(area);
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
                return Err(invalid(
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
        UserAddr::Raw(v) => Err(invalid(
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

impl KvmVm {
    /// On hosts where gmem-only slots are reached through `userspace_addr`
    /// ([`crate::caps::gmem_slots_need_hva`]), maps the slot's range of a
    /// `MMAP|INIT_SHARED` guest_memfd so its HVA can stand in for the
    /// caller's `userspace_addr = 0`. Anything else (no quirk, other flags,
    /// a raw fd, a bad offset, an mmap failure) returns `None` and the
    /// request goes to KVM unchanged, so KVM's own errno still decides.
    fn gmem_hva_mapping(&self, region: &Region<'_, KvmShared>) -> Option<KvmMapping> {
        if !self.inner.gmem_hva {
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
        sys::check_extension(fd_of(&self.inner.fd), cap.number())
    }

    fn enable_exit_hypercall(&self, mask: u64) -> Result<(), BackendError> {
        sys::enable_cap(fd_of(&self.inner.fd), CAP_EXIT_HYPERCALL, mask)?;
        self.inner.exit_hypercall_mask.store(mask, Ordering::SeqCst);
        Ok(())
    }

    fn create_guest_memfd(&self, size: u64, flags: GmemFlags) -> Result<GuestMemfd, BackendError> {
        let fd = sys::create_guest_memfd(fd_of(&self.inner.fd), size, flags.0)?;
        Ok(GuestMemfd::new(fd, size, flags))
    }

    fn set_user_memory_region(&self, region: &Region<'_, KvmShared>) -> Result<(), BackendError> {
        let (mut hva, backing) = resolve_hva(region)?;
        let gmem_map = self.gmem_hva_mapping(region);
        if let Some(m) = &gmem_map {
            hva = m.host_addr();
            self.inner.emulation.record(Emulation::GmemHva);
        }
        let mut slots = self.inner.slots();
        if slots.get(&region.slot).is_some_and(|e| e.runtime) {
            return Err(invalid(
                "KVM_SET_USER_MEMORY_REGION",
                format!("memslot {} is privmem's runtime area", region.slot),
            ));
        }
        let raw = MemoryRegion2 {
            slot: region.slot,
            flags: region.flags,
            guest_phys_addr: region.gpa,
            memory_size: region.size,
            userspace_addr: hva,
            guest_memfd_offset: region.gmem_offset,
            guest_memfd: gmem_raw(region.gmem),
            ..Default::default()
        };
        self.inner.region_ioctl(region.api, &raw)?;
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
        sys::set_memory_attributes(
            fd_of(&self.inner.fd),
            MemoryAttributes {
                address,
                size,
                attributes,
                flags,
            },
        )?;
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
        self.inner.transport.name()
    }

    fn vm_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(fd_of(&self.inner.fd))
    }
}
