//! D1–D2: `x86/private_mem_kvm_exits_test.c`: private accesses KVM cannot
//! serve exit with `KVM_EXIT_MEMORY_FAULT` (EFAULT, PRIVATE, the page at
//! 0xc0000000, 4096 bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use privmem_core::backend::{GmemRef, SharedKind, UserAddr, MEM_GUEST_MEMFD};
use privmem_core::{Attrs, Exit, FaultErrno, GmemFlags, Gpa, GuestOp, GuestReport, Hypervisor};
use privmem_core::{MemoryFault, RunError, Vcpu, Vm, VmType};

use super::gmem::PG;
use super::gmem_guest::read;
use crate::ctx::{delete, fail, region, Check, Ctx, OrFail, Shared};
use crate::guest::{next_exit, unexpected, vcpu_with, Watchdog, RUN_TIMEOUT};

/// `EXITS_TEST_GPA`.
pub(crate) const GPA_C0: u64 = 0xc000_0000;
/// `EXITS_TEST_SLOT`.
const SLOT: u32 = 10;

/// Checks that `exit` is the memory fault KVM reports for `gpa`.
pub(crate) fn expect_fault(exit: &Exit, gpa: u64, private: bool, what: &str) -> Check {
    let want = MemoryFault {
        gpa: Gpa(gpa),
        size: PG,
        private,
        errno: FaultErrno::Efault,
    };
    match exit {
        Exit::MemoryFault(f) if *f == want => Ok(()),
        other => Err(fail(format!("{what}: expected {want:?}, got {other:?}"))),
    }
}

/// A SW_PROTECTED VM with slot 10 (one page at 0xc0000000) that is private.
fn private_page_vm<H: Hypervisor>(
    cx: &Ctx<'_, H>,
    with_gmem: bool,
) -> Check<(H::Vm, Shared<H>, Option<privmem_core::GuestMemfd>)> {
    cx.require_vm_type(VmType::SwProtected)?;
    cx.require_guest_memfd()?;
    let vm = cx.create_vm(VmType::SwProtected)?;
    let shared = vm
        .create_shared(PG, SharedKind::Anonymous)
        .or_fail("shared backing")?;
    let gmem = if with_gmem {
        Some(
            vm.create_guest_memfd(PG, GmemFlags(0))
                .or_fail("KVM_CREATE_GUEST_MEMFD(1p)")?,
        )
    } else {
        None
    };
    let flags = if with_gmem { MEM_GUEST_MEMFD } else { 0 };
    let mut r = region::<Shared<H>>(SLOT, flags, GPA_C0, PG);
    r.userspace = UserAddr::Backing {
        mem: &shared,
        offset: 0,
    };
    if let Some(g) = &gmem {
        r.gmem = GmemRef::File(g);
    }
    vm.set_user_memory_region(&r).or_fail("memslot 10")?;
    vm.set_memory_attributes(GPA_C0, PG, Attrs::PRIVATE.0, 0)
        .or_fail("KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)")?;
    Ok((vm, shared, gmem))
}

/// Runs the guest's read loop until an exit other than a passed read;
/// counts passed reads in `reads`.
fn read_loop<V: Vcpu>(
    vcpu: &mut V,
    ops: &[GuestOp],
    reads: &AtomicU64,
    dog: &Watchdog,
) -> Check<Exit> {
    loop {
        match vcpu.run() {
            Ok(Exit::Report(GuestReport::CheckPassed)) => {
                reads.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Exit::Hlt) => vcpu.load_program(ops).or_fail("reload the read loop")?,
            Ok(exit) => return Ok(exit),
            Err(RunError::Interrupted | RunError::Again) if dog.expired() => {
                return Err(fail("the read loop never faulted"))
            }
            Err(RunError::Interrupted | RunError::Again) => {}
            Err(e) => return Err(fail(format!("KVM_RUN failed: {e:?}"))),
        }
    }
}

/// D1: the vCPU thread reads the private page in a loop while the main
/// thread deletes the slot: the attribute outlives the slot, so the next
/// read is a private no-slot fault.
pub(crate) fn d1_slot_deleted<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let (vm, _shared, _gmem) = private_page_vm(cx, true)?;
    let mut ops = vec![read(GPA_C0, 8, 0); 256];
    ops.push(GuestOp::Halt);
    let mut vcpu = vcpu_with(&vm, 0, &ops)?;
    let dog = Watchdog::start(vec![vcpu.kicker()], RUN_TIMEOUT);
    let reads = AtomicU64::new(0);
    let exit = std::thread::scope(|s| {
        let t = s.spawn(|| read_loop(&mut vcpu, &ops, &reads, &dog));
        let start = Instant::now();
        while reads.load(Ordering::SeqCst) == 0 && !t.is_finished() && start.elapsed() < RUN_TIMEOUT
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let deleted = vm.set_user_memory_region(&delete::<Shared<H>>(SLOT));
        let exit = t
            .join()
            .unwrap_or_else(|_| Err(fail("vcpu thread panicked")));
        deleted.or_fail("delete slot 10 while the guest reads")?;
        exit
    })?;
    if reads.load(Ordering::SeqCst) == 0 {
        return Err(fail(format!(
            "the guest never read the private page before {exit:?}"
        )));
    }
    expect_fault(&exit, GPA_C0, true, "read after the slot was deleted")
}

/// D2: a private page in a slot without guest_memfd faults as private.
pub(crate) fn d2_not_private<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let (vm, _shared, _) = private_page_vm(cx, false)?;
    let mut vcpu = vcpu_with(&vm, 0, &[read(GPA_C0, 8, 0), GuestOp::Halt])?;
    let exit = next_exit(&mut vcpu)?;
    if matches!(exit, Exit::Hlt) {
        return Err(unexpected(0, &exit));
    }
    expect_fault(
        &exit,
        GPA_C0,
        true,
        "private read of a slot without guest_memfd",
    )
}
