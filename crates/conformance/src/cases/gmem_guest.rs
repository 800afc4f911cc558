//! A13 `test_guest_memfd_guest`: a MMAP|INIT_SHARED guest_memfd as the only
//! backing of a default VM's memslot; host and guest see each other's bytes.

use privmem_core::backend::{GmemRef, HostMemory, MEM_GUEST_MEMFD};
use privmem_core::{Access, GmemFlags, Gpa, GuestOp, Hypervisor, Vm, VmType};

use super::gmem::{expect_bytes, PG};
use crate::ctx::{fail, region, require_gmem_flags, require_gmem_only_faults};
use crate::ctx::{Check, Ctx, OrFail, Shared, Stop};
use crate::guest::{run_ops, unexpected};

/// The selftest's GPA: 4 GiB.
const GPA_4G: u64 = 1 << 32;

/// A guest write op.
pub(crate) fn write(gpa: u64, len: u64, byte: u8) -> GuestOp {
    GuestOp::Write {
        gpa: Gpa(gpa),
        len,
        byte,
        access: Access::Shared,
    }
}

/// A guest read-and-check op.
pub(crate) fn read(gpa: u64, len: u64, expect: u8) -> GuestOp {
    GuestOp::Read {
        gpa: Gpa(gpa),
        len,
        expect,
        access: Access::Shared,
    }
}

/// A13.
pub(crate) fn a13_guest<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    if cx.caps.gmem_flags == 0 {
        return Err(Stop::Skip(
            "KVM_CAP_GUEST_MEMFD_FLAGS=0 (system scope)".into(),
        ));
    }
    let want = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    let vm = cx.create_vm(VmType::Default)?;
    require_gmem_flags(&vm, want)?;
    require_gmem_only_faults(cx.hv.quirks(), want)?;
    let g = vm
        .create_guest_memfd(PG, want)
        .or_fail("KVM_CREATE_GUEST_MEMFD(1p, MMAP|INIT_SHARED)")?;
    let mut r = region::<Shared<H>>(1, MEM_GUEST_MEMFD, GPA_4G, PG);
    r.gmem = GmemRef::File(&g);
    vm.set_user_memory_region(&r)
        .or_fail("memslot 1 at 4 GiB")?;
    {
        let map = cx.hv.gmem_mmap(&g, PG, true).or_fail("mmap")?;
        map.fill(0, PG, 0xaa)
            .map_err(|e| fail(format!("host memset 0xaa: {e}")))?;
    }
    let ops = [
        read(GPA_4G, PG, 0xaa),
        write(GPA_4G, PG, 0xff),
        GuestOp::Halt,
    ];
    run_ops(&vm, 0, &ops, |v, e| {
        Err(unexpected(privmem_core::Vcpu::index(v), &e))
    })?;
    let map = cx.hv.gmem_mmap(&g, PG, true).or_fail("re-mmap")?;
    expect_bytes(&map, 0, PG, 0xff, "host view after the guest wrote 0xff")
}
