//! Model tests: one behaviour per test, grouped by ioctl / path.
//!
//! Shared setup lives here (`setup_*`, `region*`, `run_*`).

mod attributes;
mod fault_path;
mod gmem_create;
mod gmem_fallocate;
mod gmem_file;
mod host;
mod hypercall;
mod lifecycle;
mod memslots;
mod mmio_sptes;
mod oracle;
mod prefault;
mod profiles;
mod scenarios;

use privmem_core::backend::{
    Access, GmemRef, GuestOp, Hypervisor, Region, RegionApi, SharedKind, UserAddr, Vcpu, Vm,
    MEM_GUEST_MEMFD,
};
use privmem_core::error::Result;
use privmem_core::{Errno, Exit, GmemFlags, Gpa, GuestMemfd, GuestReport, VmType};

use crate::{KernelProfile, ModelHypervisor, ModelShared, ModelVcpu, ModelVm};

/// 4 KiB.
pub(crate) const PG: u64 = 4096;
/// 2 MiB.
pub(crate) const M2: u64 = 2 << 20;
/// The selftests' favourite GPA (private_mem_kvm_exits_test).
pub(crate) const GPA_C0: u64 = 0xc000_0000;

/// A 7.3 model.
pub(crate) fn setup_hv() -> ModelHypervisor {
    ModelHypervisor::new(KernelProfile::V7_3)
}

/// A 7.3 model.VM of type `ty`.
pub(crate) fn setup_vm(ty: VmType) -> (ModelHypervisor, ModelVm) {
    let hv = setup_hv();
    let vm = hv.create_vm(ty).expect("create_vm");
    (hv, vm)
}

/// The EFAULT memory-fault exit for the page at `gpa`.
pub(crate) fn efault(gpa: u64, private: bool) -> Exit {
    Exit::MemoryFault(privmem_core::MemoryFault {
        gpa: Gpa(gpa),
        size: PG,
        private,
        errno: privmem_core::FaultErrno::Efault,
    })
}

/// The errno of a failed call (None on success or a non-errno error).
pub(crate) fn errno<T>(r: Result<T>) -> Option<Errno> {
    r.err().and_then(|e| e.errno())
}

/// A v2 region with a raw (NULL) `userspace_addr`.
pub(crate) fn region_raw<'a>(
    slot: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    gmem: GmemRef<'a>,
    gmem_offset: u64,
) -> Region<'a, ModelShared> {
    Region {
        api: RegionApi::V2,
        slot,
        flags,
        gpa,
        size,
        userspace: UserAddr::Raw(0),
        gmem,
        gmem_offset,
    }
}

/// Adds a GUEST_MEMFD slot (hva NULL) for `gmem` at `gpa`.
pub(crate) fn add_gmem_slot(
    vm: &ModelVm,
    slot: u32,
    gpa: u64,
    size: u64,
    gmem: &GuestMemfd,
    off: u64,
) -> Result<()> {
    vm.set_user_memory_region(&region_raw(
        slot,
        MEM_GUEST_MEMFD,
        gpa,
        size,
        GmemRef::File(gmem),
        off,
    ))
}

/// Adds a GUEST_MEMFD slot with a shared backing too (the selftests' layout).
pub(crate) fn add_gmem_slot_with_shared(
    vm: &ModelVm,
    slot: u32,
    gpa: u64,
    shared: &ModelShared,
    gmem: &GuestMemfd,
    off: u64,
) -> Result<()> {
    let size = privmem_core::backend::HostMemory::len(shared);
    vm.set_user_memory_region(&Region {
        api: RegionApi::V2,
        slot,
        flags: MEM_GUEST_MEMFD,
        gpa,
        size,
        userspace: UserAddr::Backing {
            mem: shared,
            offset: 0,
        },
        gmem: GmemRef::File(gmem),
        gmem_offset: off,
    })
}

/// Adds a plain slot backed by a new shared backing of `size`.
pub(crate) fn add_shared_slot(vm: &ModelVm, slot: u32, gpa: u64, size: u64) -> ModelShared {
    let mem = vm.create_shared(size, SharedKind::Memfd).expect("shared");
    vm.set_user_memory_region(&Region {
        api: RegionApi::V2,
        slot,
        flags: 0,
        gpa,
        size,
        userspace: UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    })
    .expect("add shared slot");
    mem
}

/// Deletes slot `slot`.
pub(crate) fn delete_slot(vm: &ModelVm, slot: u32) -> Result<()> {
    vm.set_user_memory_region(&region_raw(slot, 0, 0, 0, GmemRef::Raw(-1), 0))
}

/// A gmem of `size` bytes with `flags`.
pub(crate) fn gmem(vm: &ModelVm, size: u64, flags: GmemFlags) -> GuestMemfd {
    vm.create_guest_memfd(size, flags)
        .expect("create_guest_memfd")
}

/// A vCPU with `ops` loaded.
pub(crate) fn vcpu(vm: &ModelVm, index: u32, ops: &[GuestOp]) -> ModelVcpu {
    let mut v = vm.create_vcpu(index).expect("vcpu");
    v.load_program(ops).expect("load");
    v
}

/// `write` op.
pub(crate) fn w(gpa: u64, len: u64, byte: u8, access: Access) -> GuestOp {
    GuestOp::Write {
        gpa: Gpa(gpa),
        len,
        byte,
        access,
    }
}

/// `read` op.
pub(crate) fn r(gpa: u64, len: u64, expect: u8, access: Access) -> GuestOp {
    GuestOp::Read {
        gpa: Gpa(gpa),
        len,
        expect,
        access,
    }
}

/// `map` op (attrs as the workload encodes them: bit 4 = private).
pub(crate) fn map(gpa: u64, pages: u64, private: bool, expect_ret: Option<i64>) -> GuestOp {
    GuestOp::Map {
        gpa,
        pages,
        attrs: if private { 0x10 } else { 0 },
        expect_ret,
    }
}

/// Runs until `Hlt`, collecting every exit (panics on run errors, and after
/// 10_000 exits).
pub(crate) fn run_all(v: &mut ModelVcpu) -> Vec<Exit> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let e = v.run().expect("run");
        out.push(e);
        if e == Exit::Hlt {
            return out;
        }
    }
    panic!("vcpu did not halt: {:?}", &out[out.len() - 5..]);
}

/// True if every report in `exits` is CheckPassed/Sync and it ends in Hlt.
pub(crate) fn all_passed(exits: &[Exit]) -> bool {
    exits.last() == Some(&Exit::Hlt)
        && exits.iter().all(|e| {
            matches!(
                e,
                Exit::Hlt | Exit::Report(GuestReport::CheckPassed | GuestReport::Sync { .. })
            )
        })
}
