//! H1–H2: a hardware-poisoned guest_memfd page (`memory_failure` →
//! `kvm_gmem_error_folio`: the folio stays, poisoned). A guest access to it
//! makes `KVM_RUN` fail with EHWPOISON and a `KVM_EXIT_MEMORY_FAULT` for
//! that page (`kvm_gmem_get_pfn` → `kvm_mmu_faultin_pfn_gmem`); privmem's
//! exit handler reports `hwpoison` with the GPA and never converts it, and
//! the fault repeats until userspace acts.
//!
//! H1 poisons through a mapping (`MADV_HWPOISON`, Linux 7.3) a default VM's
//! gmem-only page: a shared fault, flags 0; a host touch of the page
//! faults, and PUNCH_HOLE drops the poisoned folio (the guest reads a new
//! zero page) while the poisoning mapping's hwpoison entry stays until
//! `MADV_DONTNEED`. H2 poisons a SW_PROTECTED VM's private page: flags
//! PRIVATE. On real KVM, H2 needs a private page the host can name, which
//! no kernel offers (no MMAP on 6.12; no INIT_SHARED for VMs with private
//! memory on 7.3): it skips with the kernel's refusal.

use privmem_core::backend::{GmemRef, HostMemory, SharedKind, UserAddr};
use privmem_core::backend::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD};
use privmem_core::decide::{decide_fault, FaultAction, FaultPolicy, FaultStop, RepeatGuard};
use privmem_core::{Advice, Attrs, Exit, FaultErrno, GmemFlags, Gpa, GuestMemfd, GuestOp};
use privmem_core::{Hypervisor, MemoryFault, Vm, VmType};

use super::gmem::PG;
use super::gmem_guest::read;
use crate::ctx::{ensure, fail, region, require_gmem_flags, require_gmem_only_faults};
use crate::ctx::{Check, Ctx, OrFail, Shared};
use crate::guest::{next_exit, vcpu_with};

const MMAP_SHARED: GmemFlags = GmemFlags(GmemFlags::MMAP.0 | GmemFlags::INIT_SHARED.0);
/// The gmem-only slot's GPA (4 GiB, as `test_guest_memfd_guest`).
const GPA_4G: u64 = 1 << 32;
/// The private page's GPA (`private_mem_kvm_exits_test`).
const GPA_C0: u64 = 0xc000_0000;

/// Checks that `exit` is the EHWPOISON memory fault for `gpa`, and that
/// privmem's fault decision (`privmem_core::decide`) stops the vCPU with
/// hwpoison at that GPA instead of converting anything, every time it
/// comes (hwpoison is never counted by the repeat guard either).
fn expect_hwpoison(exit: &Exit, gpa: u64, private: bool) -> Check {
    let want = MemoryFault {
        gpa: Gpa(gpa),
        size: PG,
        private,
        errno: FaultErrno::Ehwpoison,
    };
    ensure!(
        *exit == Exit::MemoryFault(want),
        "guest read of the poisoned page: expected {want:?}, got {exit:?}"
    );
    let mut guard = RepeatGuard::new(FaultPolicy::DEFAULT_MAX_REPEATS);
    for _ in 0..FaultPolicy::DEFAULT_MAX_REPEATS.get() + 1 {
        let action = decide_fault(&FaultPolicy::default(), &mut guard, &want);
        ensure!(
            action == FaultAction::Stop(FaultStop::Hwpoison(want)),
            "privmem decided {action:?} for EHWPOISON (expected to stop with hwpoison, never to convert)"
        );
    }
    let report = FaultStop::Hwpoison(want).to_string();
    ensure!(
        report.contains("hardware-poisoned") && report.contains(&format!("{:#x}", gpa)),
        "privmem's report `{report}` does not name hwpoison at {gpa:#x}"
    );
    Ok(())
}

/// H1: default VM, gmem-only slot (MMAP|INIT_SHARED, NULL
/// `userspace_addr`), page 1 poisoned through the file's mapping.
pub(crate) fn h1_gmem_only<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    let vm = cx.create_vm(VmType::Default)?;
    require_gmem_flags(&vm, MMAP_SHARED)?;
    require_gmem_only_faults(cx.hv.quirks(), MMAP_SHARED)?;
    let g = vm
        .create_guest_memfd(2 * PG, MMAP_SHARED)
        .or_fail("KVM_CREATE_GUEST_MEMFD(2p, MMAP|INIT_SHARED)")?;
    let mut r = region::<Shared<H>>(1, MEM_GUEST_MEMFD, GPA_4G, 2 * PG);
    r.gmem = GmemRef::File(&g);
    vm.set_user_memory_region(&r)
        .or_fail("memslot 1 at 4 GiB")?;
    let map = cx.hv.gmem_mmap(&g, 2 * PG, true).or_fail("mmap")?;
    map.fill(0, 2 * PG, 0x5a)
        .map_err(|e| fail(format!("host memset: {e}")))?;
    cx.hv
        .gmem_poison(&map, PG)
        .or_fail("madvise(MADV_HWPOISON) on page 1")?;
    let mut b = [0u8; 1];
    match map.read(PG, &mut b) {
        Err(f) if f.offset == PG => {}
        other => {
            return Err(fail(format!(
                "host read of the poisoned page: {other:?}, expected a fault at {PG:#x}"
            )))
        }
    }
    let poisoned = GPA_4G + PG;
    let ops = [read(GPA_4G, PG, 0x5a), read(poisoned, PG, 0), GuestOp::Halt];
    let mut vcpu = vcpu_with(&vm, 0, &ops)?;
    let exit = next_exit(&mut vcpu)?;
    expect_hwpoison(&exit, poisoned, false)?;
    // Nothing converted it: the retry faults the same way.
    let again = next_exit(&mut vcpu)?;
    ensure!(
        again == exit,
        "re-entry after EHWPOISON: {again:?}, expected the same fault"
    );
    // PUNCH_HOLE drops the poisoned folio; the retry reads a fresh page.
    let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    cx.hv
        .gmem_fallocate(&g, punch, PG as i64, PG as i64)
        .or_fail("PUNCH_HOLE page 1")?;
    let after = next_exit(&mut vcpu)?;
    ensure!(
        after == Exit::Hlt,
        "after PUNCH_HOLE the guest read {after:?}, expected a zero page and halt"
    );
    after_punch(cx, &g, &map)
}

/// H1's host side after PUNCH_HOLE of the poisoned page (Linux 7.3, as
/// measured in the rig): the mapping that had the page keeps its hwpoison
/// entry (punch-hole zaps with `skip_cows`, which keeps hwpoison entries),
/// so a host read there is still SIGBUS; a fresh mapping reads the new zero
/// page; `MADV_DONTNEED` clears the old mapping's entry, which then reads
/// zeros too.
fn after_punch<H: Hypervisor>(cx: &Ctx<'_, H>, g: &GuestMemfd, map: &H::Mapping) -> Check {
    let mut b = [0xffu8; 1];
    match map.read(PG, &mut b) {
        Err(f) if f.offset == PG => {}
        other => {
            return Err(fail(format!(
                "host read of the punched page through the mapping that had it poisoned: \
                 {other:?}, expected a fault at {PG:#x} (its hwpoison entry survives PUNCH_HOLE)"
            )))
        }
    }
    let fresh = cx.hv.gmem_mmap(g, 2 * PG, true).or_fail("second mmap")?;
    fresh.read(PG, &mut b).map_err(|e| {
        fail(format!(
            "host read of the punched page through a new mapping: {e}"
        ))
    })?;
    ensure!(
        b == [0],
        "new mapping after PUNCH_HOLE read {:#x}, expected 0",
        b[0]
    );
    cx.hv
        .gmem_madvise(map, PG, PG, Advice::DontNeed)
        .or_fail("MADV_DONTNEED of the poisoned page's entry")?;
    b = [0xff];
    map.read(PG, &mut b)
        .map_err(|e| fail(format!("host read after PUNCH_HOLE and MADV_DONTNEED: {e}")))?;
    ensure!(
        b == [0],
        "old mapping after MADV_DONTNEED read {:#x}, expected 0",
        b[0]
    );
    Ok(())
}

/// H2: SW_PROTECTED VM, a private page of a guest_memfd slot, poisoned.
pub(crate) fn h2_private<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_vm_type(VmType::SwProtected)?;
    cx.require_guest_memfd()?;
    let vm = cx.create_vm(VmType::SwProtected)?;
    let shared = vm
        .create_shared(2 * PG, SharedKind::Anonymous)
        .or_fail("shared backing")?;
    let g = vm
        .create_guest_memfd(2 * PG, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(2p)")?;
    let mut r = region::<Shared<H>>(10, MEM_GUEST_MEMFD, GPA_C0, 2 * PG);
    r.gmem = GmemRef::File(&g);
    r.userspace = UserAddr::Backing {
        mem: &shared,
        offset: 0,
    };
    vm.set_user_memory_region(&r).or_fail("memslot 10")?;
    vm.set_memory_attributes(GPA_C0, 2 * PG, Attrs::PRIVATE.0, 0)
        .or_fail("KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)")?;
    let poisoned = GPA_C0 + PG;
    vm.poison_page(Gpa(poisoned))
        .or_fail("poisoning the private page")?;
    let ops = [read(GPA_C0, PG, 0), read(poisoned, PG, 0), GuestOp::Halt];
    let mut vcpu = vcpu_with(&vm, 0, &ops)?;
    let exit = next_exit(&mut vcpu)?;
    expect_hwpoison(&exit, poisoned, true)?;
    let again = next_exit(&mut vcpu)?;
    ensure!(
        again == exit,
        "re-entry after EHWPOISON: {again:?}, expected the same fault"
    );
    Ok(())
}
