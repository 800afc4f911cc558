//! B6: Linux 7.3's `set_memory_region_test.c` overlap of guest_memfd file
//! ranges alone (no GPA overlap); V1: `vm_types_test.c`.

use privmem_core::backend::{GmemRef, MEM_GUEST_MEMFD};
use privmem_core::{Cap, Errno, GmemFlags, Hypervisor, Vm};

use crate::ctx::{
    delete, expect_errno, fail, region, vm_type_name, Check, Ctx, OrFail, Shared, Stop,
};

const M2: u64 = 2 << 20;
const GPA_C0: u64 = 0xc000_0000;

/// B6: a 5×2 MiB guest_memfd; slot 11 binds file [4, 8) MiB. A slot at a
/// GPA nobody uses, 4 MiB of the file from offset 2 MiB (the front half of
/// slot 11's range) or 6 MiB (the back half), is EEXIST (the binding is
/// recorded at commit, in 6.12.118 and 7.3), and is not created; a
/// disjoint file range binds.
pub(crate) fn b6_file_offset_overlap<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let vm = cx.gmem_slot_vm()?;
    let g = vm
        .create_guest_memfd(5 * M2, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(10 MiB)")?;
    let add = |slot: u32, gpa: u64, off: u64| {
        let mut r = region::<Shared<H>>(slot, MEM_GUEST_MEMFD, gpa, 2 * M2);
        r.gmem = GmemRef::File(&g);
        r.gmem_offset = off;
        vm.set_user_memory_region(&r)
    };
    add(11, 0x1_8000_0000, 2 * M2).or_fail("slot 11 over file [4, 8) MiB")?;
    for (off, half) in [(M2, "front"), (3 * M2, "back")] {
        expect_errno(
            add(10, GPA_C0, off),
            Errno::EEXIST,
            format_args!("slot 10 at file offset {off:#x} ({half} half of slot 11's range)"),
        )?;
        expect_errno(
            vm.set_user_memory_region(&delete::<Shared<H>>(10)),
            Errno::EINVAL,
            "deleting the refused slot 10",
        )?;
    }
    add(10, GPA_C0, 0).or_fail("slot 10 over file [0, 4) MiB")
}

/// V1 `vm_types_test`: every type 0–63 is created iff `KVM_CAP_VM_TYPES`
/// has its bit, else EINVAL (7.3 knows type 5, TDX, and reports it only
/// where TDX runs).
pub(crate) fn v1_vm_types<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let types = cx
        .hv
        .check_extension(Cap::VmTypes)
        .or_fail("KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)")?;
    if types == 0 {
        return Err(Stop::Skip(
            "KVM_CAP_VM_TYPES=0 (a kernel before VM types)".into(),
        ));
    }
    if types & 1 == 0 {
        return Err(fail(format!(
            "KVM_CAP_VM_TYPES={types:#x} lacks KVM_X86_DEFAULT_VM"
        )));
    }
    for ty in 0..64u64 {
        let r = cx.hv.create_vm_raw(ty);
        let what = format!(
            "KVM_CREATE_VM({}) with KVM_CAP_VM_TYPES={types:#x}",
            vm_type_name(ty)
        );
        if types & (1 << ty) != 0 {
            r.or_fail(what)?;
        } else {
            expect_errno(r, Errno::EINVAL, what)?;
        }
    }
    Ok(())
}
