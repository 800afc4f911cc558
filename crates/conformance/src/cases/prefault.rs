//! P1: Linux 7.3's `pre_fault_memory_test.c`: `KVM_PRE_FAULT_MEMORY` over a
//! 2 MiB + 4 KiB memslot while another thread deletes and recreates it.
//!
//! For each configuration (default VM shared; SW_PROTECTED shared; and
//! SW_PROTECTED private), three pre-faults: `[0, 2M)` leaves 0 bytes,
//! `[2M, 2M+8K)` leaves 4 KiB with ENOENT, `[2M+4K, +4K)` (past the slot)
//! leaves 4 KiB with ENOENT. During each, a worker deletes the slot, and
//! recreates it once the pre-fault has given up or finished; as in the
//! selftest, EINTR/EAGAIN are retried at once and any other failure before
//! the recreation (ENOENT, EFAULT) is retried after it, and every call
//! either shrank the range or failed, never both or neither.
//!
//! A 6.12 kernel retries a pre-fault over a slot being deleted until a
//! signal arrives, and the deletion waits for the pre-fault: a watchdog
//! kicks the vCPU (a signal) once it stalls, which turns that into EINTR.
//!
//! Then, for the default VM, the slot is deleted and recreated with no
//! pre-fault running, and the vCPU pre-faults a page of it. Deleting a
//! default VM's memslot invalidates every MMU root
//! (`kvm_mmu_zap_all_fast`). 7.3's `kvm_mmu_reload` frees the obsolete
//! root and maps the page. 6.12's keeps it, so every later pre-fault on
//! that vCPU finds its fault stale and spins until a signal (EINTR,
//! nothing mapped) until a `KVM_RUN` frees the root. That is why the
//! selftest's churn cannot run on a 6.12 default VM (it never ends): there
//! its three pre-faults run as 6.12's own `pre_fault_memory_test` runs
//! them, with the slot left alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use privmem_core::backend::{GmemRef, SharedKind, UserAddr, MEM_GUEST_MEMFD};
use privmem_core::{Attrs, BackendError, Cap, Errno, GmemFlags, GuestMemfd, Hypervisor};
use privmem_core::{PreFaultRange, Vcpu, Vm, VmType};

use super::gmem::PG;
use crate::ctx::{delete, ensure, fail, region, Check, Ctx, OrFail, Shared, Stop};
use crate::guest::{Watchdog, RUN_TIMEOUT};

const SLOT: u32 = 10;
/// The selftest's slot size: 2 MiB + 4 KiB.
const TEST_SIZE: u64 = (2 << 20) + PG;
const M2: u64 = 2 << 20;
/// The slot's GPA (4 GiB; the selftest uses the top of the guest's space).
const BASE: u64 = 1 << 32;
/// How long a pre-fault may stall before the watchdog's signal.
const STALL: Duration = Duration::from_millis(500);

/// A selftest configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    DefaultShared,
    SwProtShared,
    SwProtPrivate,
}

/// The VM, the backings the slot needs, and how to (re)create the slot.
struct Setup<H: Hypervisor> {
    vm: H::Vm,
    shared: Shared<H>,
    gmem: Option<GuestMemfd>,
}

impl<H: Hypervisor> Setup<H> {
    fn add_slot(&self) -> Result<(), BackendError> {
        let flags = if self.gmem.is_some() {
            MEM_GUEST_MEMFD
        } else {
            0
        };
        let mut r = region::<Shared<H>>(SLOT, flags, BASE, TEST_SIZE);
        r.userspace = UserAddr::Backing {
            mem: &self.shared,
            offset: 0,
        };
        if let Some(g) = &self.gmem {
            r.gmem = GmemRef::File(g);
        }
        self.vm.set_user_memory_region(&r)
    }
}

fn setup<H: Hypervisor>(cx: &Ctx<'_, H>, cfg: Config) -> Check<Setup<H>> {
    let ty = match cfg {
        Config::DefaultShared => VmType::Default,
        Config::SwProtShared | Config::SwProtPrivate => VmType::SwProtected,
    };
    cx.require_vm_type(ty)?;
    let vm = cx.create_vm(ty)?;
    let shared = vm
        .create_shared(TEST_SIZE, SharedKind::Anonymous)
        .or_fail("shared backing")?;
    let gmem = match cfg {
        Config::DefaultShared => None,
        _ => Some(
            vm.create_guest_memfd(TEST_SIZE, GmemFlags(0))
                .or_fail("KVM_CREATE_GUEST_MEMFD(2 MiB + 4 KiB)")?,
        ),
    };
    let s: Setup<H> = Setup { vm, shared, gmem };
    s.add_slot().or_fail("slot 10")?;
    if cfg == Config::SwProtPrivate {
        s.vm.set_memory_attributes(BASE, TEST_SIZE, Attrs::PRIVATE.0, 0)
            .or_fail("KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)")?;
    }
    Ok(s)
}

/// P1.
pub(crate) fn p1_pre_fault_churn<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let cap = cx
        .hv
        .check_extension(Cap::PreFaultMemory)
        .or_fail("KVM_CHECK_EXTENSION(KVM_CAP_PRE_FAULT_MEMORY)")?;
    if cap == 0 {
        return Err(Stop::Skip(
            "KVM_CAP_PRE_FAULT_MEMORY=0 (no two-dimensional paging: tdp_enabled=0)".into(),
        ));
    }
    let mut skips = Vec::new();
    let mut ran = 0;
    for cfg in [
        Config::DefaultShared,
        Config::SwProtShared,
        Config::SwProtPrivate,
    ] {
        let s = match setup(cx, cfg) {
            Ok(s) => s,
            Err(Stop::Skip(r)) => {
                skips.push(format!("{cfg:?}: {r}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut vcpu = s.vm.create_vcpu(0).or_fail("KVM_CREATE_VCPU(0)")?;
        let v6_12 = cx.kernel == crate::kernels::Kernel::V6_12;
        let churn = !(v6_12 && cfg == Config::DefaultShared);
        for (off, size, left) in [(0, M2, 0), (M2, 2 * PG, PG), (TEST_SIZE, PG, PG)] {
            let what = format!("{cfg:?} [{off:#x}, +{size:#x})");
            let r = if churn {
                churn_pre_fault::<H>(&s, &mut vcpu, off, size, left)
            } else {
                plain_pre_fault(&mut vcpu, off, size, left)
            };
            r.map_err(|e| prefix(e, &what))?;
        }
        if cfg == Config::DefaultShared {
            pre_fault_after_slot_change(&s, &mut vcpu, v6_12)
                .map_err(|e| prefix(e, "DefaultShared, after the slot was recreated"))?;
        }
        ran += 1;
    }
    if ran == 0 {
        return Err(Stop::Skip(skips.join("; ")));
    }
    if skips.is_empty() {
        Ok(())
    } else {
        Err(Stop::Partial(skips.join("; ")))
    }
}

/// One `pre_fault_memory()` of 6.12's selftest: the slot left alone.
fn plain_pre_fault<V: Vcpu>(vcpu: &mut V, off: u64, size: u64, expected_left: u64) -> Check {
    let flags = Flags {
        recreate: AtomicBool::new(true),
        recreated: AtomicBool::new(true),
        ..Flags::default()
    };
    let mut range = PreFaultRange::new(BASE + off, size);
    let last = prefault_loop(vcpu, &mut range, &flags)?;
    expect_left(&range, last, expected_left)
}

/// The default VM's slot deleted and recreated with no pre-fault running;
/// then a page of it, twice. 7.3 maps it; 6.12 spins until the
/// watchdog's signal each time (EINTR, nothing mapped).
fn pre_fault_after_slot_change<H: Hypervisor>(
    s: &Setup<H>,
    vcpu: &mut <H::Vm as Vm>::Vcpu,
    v6_12: bool,
) -> Check {
    s.vm.set_user_memory_region(&delete::<Shared<H>>(SLOT))
        .or_fail("deleting slot 10")?;
    s.add_slot().or_fail("recreating slot 10")?;
    for attempt in 1..=2 {
        let mut range = PreFaultRange::new(BASE, PG);
        let start = Instant::now();
        let (r, signalled) = {
            let dog = Watchdog::start(vec![vcpu.kicker()], STALL);
            let r = vcpu.pre_fault_memory(&mut range);
            (r, dog.expired())
        };
        let errno = r.as_ref().err().and_then(BackendError::errno);
        let took = start.elapsed().as_millis();
        if v6_12 {
            ensure!(
                errno == Some(Errno::EINTR) && range.size == PG && signalled,
                "6.12, call {attempt}: expected the obsolete root to spin until the \
                 watchdog's signal (EINTR, 4 KiB left); got {r:?}, {:#x} left, \
                 signalled: {signalled}, after {took} ms",
                range.size
            );
        } else {
            ensure!(
                r.is_ok() && range.size == 0,
                "7.3, call {attempt}: expected the page mapped (a fresh root); got \
                 {r:?}, {:#x} left, signalled: {signalled}, after {took} ms",
                range.size
            );
        }
    }
    Ok(())
}

/// The selftest's final check of one `pre_fault_memory()`.
fn expect_left(range: &PreFaultRange, last: Option<Errno>, expected_left: u64) -> Check {
    ensure!(
        range.size == expected_left,
        "completed with {:#x} bytes left, expected {expected_left:#x}",
        range.size
    );
    match (expected_left, last) {
        (0, None) => Ok(()),
        (_, Some(Errno::ENOENT)) if expected_left > 0 => Ok(()),
        (_, got) => Err(fail(format!(
            "last KVM_PRE_FAULT_MEMORY gave {}, expected {}",
            got.map_or("success".into(), |e| e.to_string()),
            if expected_left == 0 {
                "success"
            } else {
                "ENOENT"
            }
        ))),
    }
}

fn prefix(e: Stop, what: &str) -> Stop {
    match e {
        Stop::Fail(r) => Stop::Fail(format!("{what}: {r}")),
        other => other,
    }
}

/// One `pre_fault_memory()` of the selftest, with the slot deleted
/// underneath and recreated.
fn churn_pre_fault<H: Hypervisor>(
    s: &Setup<H>,
    vcpu: &mut <H::Vm as Vm>::Vcpu,
    off: u64,
    size: u64,
    expected_left: u64,
) -> Check {
    let flags = Flags::default();
    let mut range = PreFaultRange::new(BASE + off, size);
    let (result, worker) = std::thread::scope(|sc| {
        let worker = sc.spawn(|| {
            flags.worker_ready.store(true, Ordering::Release);
            let deleted = s.vm.set_user_memory_region(&delete::<Shared<H>>(SLOT));
            while !flags.recreate.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            let r = deleted.and_then(|()| s.add_slot());
            flags.recreated.store(true, Ordering::Release);
            r
        });
        while !flags.worker_ready.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let result = prefault_loop(vcpu, &mut range, &flags);
        // Never leave the worker waiting, whatever happened.
        flags.recreate.store(true, Ordering::Release);
        (result, worker.join())
    });
    let worker = worker.map_err(|_| fail("the delete/recreate worker panicked"))?;
    worker.or_fail("the worker's delete and recreate of slot 10")?;
    let last = result?;
    expect_left(&range, last, expected_left)
}

/// What the pre-fault loop and the delete/recreate worker tell each other.
#[derive(Default)]
struct Flags {
    /// The worker runs (it deletes the slot at once).
    worker_ready: AtomicBool,
    /// The loop asks for the slot back.
    recreate: AtomicBool,
    /// The worker is done (the slot is back, or it failed).
    recreated: AtomicBool,
}

/// The selftest's retry loop; returns the last call's errno (`None` for
/// success). Asks for the slot back once the pre-fault has nothing more
/// to gain from its absence, and waits until it is back.
fn prefault_loop<V: Vcpu>(
    vcpu: &mut V,
    range: &mut PreFaultRange,
    flags: &Flags,
) -> Check<Option<Errno>> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut recreated = false;
    loop {
        if Instant::now() > deadline {
            return Err(fail(format!("no result within {}s", RUN_TIMEOUT.as_secs())));
        }
        let prev = range.size;
        let r = {
            let _dog = Watchdog::start(vec![vcpu.kicker()], STALL);
            vcpu.pre_fault_memory(range)
        };
        let errno = match &r {
            Ok(()) => None,
            Err(e) => Some(
                e.errno()
                    .ok_or_else(|| fail(format!("KVM_PRE_FAULT_MEMORY: {e}")))?,
            ),
        };
        ensure!(
            (range.size < prev) != errno.is_some(),
            "KVM_PRE_FAULT_MEMORY {} and left {:#x} of {prev:#x} bytes: a call either maps or fails",
            errno.map_or("succeeded".into(), |e| format!("failed with {e}")),
            range.size
        );
        if matches!(errno, Some(Errno::EINTR | Errno::EAGAIN)) {
            continue;
        }
        if !recreated {
            flags.recreate.store(true, Ordering::Release);
            recreated = true;
            // Wait for the worker, so the retry gets a stable result.
            while !flags.recreated.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    return Err(fail("slot 10 was not recreated in time"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if range.size > 0 {
                continue;
            }
        }
        if range.size == 0 || errno.is_some() {
            return Ok(errno);
        }
    }
}
