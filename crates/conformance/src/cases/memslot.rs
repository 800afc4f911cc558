//! B1–B4: `set_memory_region_test.c`'s memslot rules; B5: memslot address spaces.
//!
//! B3/B4 need a VM that binds guest_memfd: the selftest uses a
//! `KVM_X86_SW_PROTECTED_VM`; on 6.18 a default VM binds guest_memfd under
//! the same rules, so without SW_PROTECTED the cases run on a default VM
//! whose `KVM_CAP_GUEST_MEMFD` is set, and skip only when neither exists.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use privmem_core::backend::{
    GmemRef, RegionApi, MEM_GUEST_MEMFD, MEM_LOG_DIRTY_PAGES, MEM_READONLY,
};
use privmem_core::{Cap, Errno, GmemFlags, Hypervisor, Vm, VmType};

use super::gmem::PG;
use crate::ctx::{
    delete, ensure, expect_errno, fail, region, vm_type_name, Check, Ctx, OrFail, Shared, Stop,
};

const M2: u64 = 2 << 20;
const GPA_C0: u64 = 0xc000_0000;
const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;

/// A memfd (a regular file that is not a guest_memfd).
fn memfd() -> Check<OwnedFd> {
    rustix::fs::memfd_create("privmem-conformance", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| fail(format!("memfd_create: {e}")))
}

/// B1: flags outside the supported set are EINVAL for v1 and v2; v2-only
/// flags are EINVAL for v1; GUEST_MEMFD excludes LOG_DIRTY and READONLY.
/// The last checks need a guest_memfd: without one the case is partial,
/// naming them.
pub(crate) fn b1_invalid_flags<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let ty = if cx.has_vm_type(VmType::SwProtected) {
        VmType::SwProtected
    } else {
        VmType::Default
    };
    let vm = cx.create_vm(ty)?;
    let mut supported = MEM_LOG_DIRTY_PAGES | MEM_READONLY;
    if cx.caps.memory_attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
        supported |= MEM_GUEST_MEMFD;
    }
    let v2_only = MEM_GUEST_MEMFD;
    // The selftest passes fd 0; a memfd is a non-guest_memfd file for sure.
    let other = memfd()?;
    for i in 0..32 {
        let bit = 1u32 << i;
        if supported & bit != 0 && v2_only & bit == 0 {
            continue;
        }
        let mut r = region::<Shared<H>>(0, bit, 0, M2);
        r.api = RegionApi::V1;
        expect_errno(
            vm.set_user_memory_region(&r),
            Errno::EINVAL,
            format_args!("v1 flags bit {i}"),
        )?;
        if supported & bit == 0 {
            r.api = RegionApi::V2;
            r.gmem = GmemRef::Fd(other.as_fd());
            expect_errno(
                vm.set_user_memory_region(&r),
                Errno::EINVAL,
                format_args!("v2 flags bit {i}"),
            )?;
        }
    }
    if vm.check_extension(Cap::GuestMemfd).unwrap_or(0) == 0 {
        return Err(Stop::Partial(format!(
            "skipped v2 GUEST_MEMFD|LOG_DIRTY_PAGES and GUEST_MEMFD|READONLY: the {} VM has \
             KVM_CAP_GUEST_MEMFD=0",
            vm_type_name(ty.kvm_type())
        )));
    }
    let g = vm
        .create_guest_memfd(M2, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(2 MiB)")?;
    for (extra, name) in [
        (MEM_LOG_DIRTY_PAGES, "LOG_DIRTY_PAGES"),
        (MEM_READONLY, "READONLY"),
    ] {
        let mut r = region::<Shared<H>>(0, MEM_GUEST_MEMFD | extra, 0, M2);
        r.gmem = GmemRef::File(&g);
        expect_errno(
            vm.set_user_memory_region(&r),
            Errno::EINVAL,
            format_args!("v2 GUEST_MEMFD|{name}"),
        )?;
    }
    Ok(())
}

/// B2: `KVM_CAP_NR_MEMSLOTS` 2 MiB slots succeed (v1, NULL hva, which need
/// not be unique); one more is EINVAL.
pub(crate) fn b2_max_slots<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let n = cx.caps.nr_memslots;
    ensure!(n > 0, "KVM_CAP_NR_MEMSLOTS is 0");
    let n = u32::try_from(n).map_err(|_| fail(format!("KVM_CAP_NR_MEMSLOTS {n} is absurd")))?;
    let vm = cx.create_vm(VmType::Default)?;
    for slot in 0..=n {
        let mut r = region::<Shared<H>>(slot, 0, u64::from(slot) * M2, M2);
        r.api = RegionApi::V1;
        let res = vm.set_user_memory_region(&r);
        if slot < n {
            res.or_fail(format_args!("memslot {slot} of {n}"))?;
        } else {
            expect_errno(
                res,
                Errno::EINVAL,
                format_args!("memslot {n} (one past KVM_CAP_NR_MEMSLOTS)"),
            )?;
        }
    }
    Ok(())
}

/// B3: a guest_memfd memslot refuses non-guest_memfd fds (`/dev/kvm`, the
/// VM's own fd where the backend has one, a memfd), another VM's
/// guest_memfd and unaligned offsets (EINVAL), and accepts offset 0.
pub(crate) fn b3_private_region<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let vm = cx.gmem_slot_vm()?;
    let bind = |gmem: GmemRef<'_>, off: u64| {
        let mut r = region::<Shared<H>>(10, MEM_GUEST_MEMFD, GPA_C0, M2);
        r.gmem = gmem;
        r.gmem_offset = off;
        vm.set_user_memory_region(&r)
    };
    // /dev/kvm where it exists; any other non-guest_memfd file otherwise.
    let dev = File::open("/dev/kvm")
        .or_else(|_| File::open("/dev/null"))
        .map_err(|e| fail(format!("open /dev/kvm or /dev/null: {e}")))?;
    expect_errno(
        bind(GmemRef::Fd(dev.as_fd()), 0),
        Errno::EINVAL,
        "fd = /dev/kvm",
    )?;
    // A VM fd, where the backend's VMs are files (KVM; not the model).
    if let Some(fd) = vm.vm_fd() {
        expect_errno(bind(GmemRef::Fd(fd), 0), Errno::EINVAL, "fd = VM fd")?;
    }
    let mfd = memfd()?;
    expect_errno(
        bind(GmemRef::Fd(mfd.as_fd()), 0),
        Errno::EINVAL,
        "fd = memfd",
    )?;

    let other = cx.create_vm(vm.vm_type())?;
    let foreign = other
        .create_guest_memfd(M2, GmemFlags(0))
        .or_fail("other VM's guest_memfd")?;
    expect_errno(
        bind(GmemRef::File(&foreign), 0),
        Errno::EINVAL,
        "another VM's guest_memfd",
    )?;
    let mut r = region::<Shared<H>>(10, MEM_GUEST_MEMFD, GPA_C0, M2);
    r.gmem = GmemRef::File(&foreign);
    other
        .set_user_memory_region(&r)
        .or_fail("the other VM binding its own guest_memfd")?;

    let g = vm
        .create_guest_memfd(M2, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(2 MiB)")?;
    for off in 1..PG {
        expect_errno(
            bind(GmemRef::File(&g), off),
            Errno::EINVAL,
            format_args!("offset {off}"),
        )?;
    }
    bind(GmemRef::File(&g), 0).or_fail("offset 0")
}

/// B4: GPA overlap with an existing guest_memfd slot is EEXIST (front and
/// back). An overlapping file range alone is refused, and the slot is not
/// created, with exactly the backend's kernel's errno
/// ([`crate::Kernel::gmem_overlap_errno`]): EINVAL where `kvm_gmem_bind()`
/// records the binding (the 6.18 source, 6.12.117), EEXIST where the commit
/// phase does (Debian's 6.12.118, measured in the rig; 7.3).
pub(crate) fn b4_overlapping<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let vm = cx.gmem_slot_vm()?;
    let g = vm
        .create_guest_memfd(4 * M2, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(8 MiB)")?;
    let add = |slot: u32, gpa: u64, off: u64| {
        let mut r = region::<Shared<H>>(slot, MEM_GUEST_MEMFD, gpa, 2 * M2);
        r.gmem = GmemRef::File(&g);
        r.gmem_offset = off;
        vm.set_user_memory_region(&r)
    };
    let hi = 0x1_8000_0000;
    add(10, GPA_C0, 0).or_fail("slot 10 at 0xc0000000")?;
    add(11, hi, 2 * M2).or_fail("slot 11 at 0x180000000")?;
    let mut del = delete::<Shared<H>>(10);
    del.flags = MEM_GUEST_MEMFD;
    vm.set_user_memory_region(&del).or_fail("delete slot 10")?;
    expect_errno(
        add(10, hi - M2, 0),
        Errno::EEXIST,
        "slot 10 over the front of slot 11",
    )?;
    expect_errno(
        add(10, hi + M2, 0),
        Errno::EEXIST,
        "slot 10 over the back of slot 11",
    )?;
    expect_errno(
        add(12, 0x2_0000_0000, M2),
        cx.kernel.gmem_overlap_errno(),
        format_args!(
            "slot 12 over slot 11's file range (kernel {})",
            cx.kernel.name()
        ),
    )?;
    // Refused means not created: deleting slot 12 finds nothing.
    expect_errno(
        vm.set_user_memory_region(&delete::<Shared<H>>(12)),
        Errno::EINVAL,
        "deleting the refused slot 12",
    )?;
    add(10, GPA_C0, 0).or_fail("slot 10 re-added at its old place")
}

/// B5: memslot address spaces (`kvm_arch_nr_memslot_as_ids`). Every VM
/// type accepts a slot in each of its `KVM_CAP_MULTI_ADDRESS_SPACE`
/// address spaces (at least one) at the same GPA, since overlap is checked
/// per address space; within one it is still EEXIST; the next `as_id` is
/// EINVAL. VMs with private memory have one address space (no SMM).
pub(crate) fn b5_address_spaces<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for ty in [VmType::Default, VmType::SwProtected] {
        if !cx.has_vm_type(ty) {
            continue;
        }
        let vm = cx.create_vm(ty)?;
        let n = vm
            .check_extension(Cap::MultiAddressSpace)
            .or_fail("KVM_CHECK_EXTENSION(KVM_CAP_MULTI_ADDRESS_SPACE)")?
            .max(1);
        ensure!(
            n <= 2,
            "{} VM: {n} address spaces (x86 has at most 2)",
            ty.name()
        );
        if ty.has_private_mem() {
            ensure!(
                n == 1,
                "{} VM: {n} address spaces, want 1 (no SMM)",
                ty.name()
            );
        }
        let n = n as u32;
        for as_id in 0..n {
            let slot = as_id << 16 | 3;
            let r = region::<Shared<H>>(slot, 0, GPA_C0, M2);
            vm.set_user_memory_region(&r).or_fail(format_args!(
                "{} VM: slot 3 of address space {as_id}",
                ty.name()
            ))?;
            expect_errno(
                vm.set_user_memory_region(&region::<Shared<H>>(slot + 1, 0, GPA_C0 + M2 / 2, M2)),
                Errno::EEXIST,
                format_args!(
                    "{} VM: slot 4 over slot 3 in address space {as_id}",
                    ty.name()
                ),
            )?;
        }
        expect_errno(
            vm.set_user_memory_region(&region::<Shared<H>>(n << 16 | 3, 0, GPA_C0, M2)),
            Errno::EINVAL,
            format_args!("{} VM: address space {n} of {n}", ty.name()),
        )?;
        for as_id in 0..n {
            vm.set_user_memory_region(&delete::<Shared<H>>(as_id << 16 | 3))
                .or_fail(format_args!(
                    "{} VM: delete slot 3 of address space {as_id}",
                    ty.name()
                ))?;
        }
    }
    Ok(())
}
