//! K3 (`prefault-slot-delete`): `KVM_PRE_FAULT_MEMORY` over a memslot
//! that another thread deletes (`Vcpu::pre_fault_memory`, and on the model
//! `InjectOp::PreFaultSlotChange`). 6.12 retries until a signal; 7.3
//! returns at once (EAGAIN, or 0 after progress).

use std::any::Any;
use std::time::Duration;

use privmem_core::backend::{SharedKind, UserAddr};
use privmem_core::{BackendError, Cap, Errno, Hypervisor, PreFaultRange, Vcpu, Vm, VmType};
use privmem_model::{InjectOp, ModelHypervisor};

use super::findings::{against, series, M1};
use crate::ctx::{delete, ensure, fail, region, Check, Ctx, OrFail, Shared, Stop};
use crate::findings::Series;
use crate::guest::Watchdog;

/// The memslot K3 pre-faults: 256 MiB at 256 MiB, as the reproducer.
const K3_GPA: u64 = 256 * M1;
const K3_SIZE: u64 = 256 * M1;
/// How long a pre-fault may run on KVM after the deletion started before
/// the case signals (kicks) it. 7.3.4 returned after 1 ms.
const K3_SIGNAL_AFTER: Duration = Duration::from_secs(3);
/// The same on the model, whose injected deletion needs no real time.
const K3_MODEL_SIGNAL_AFTER: Duration = Duration::from_millis(300);
/// Tries on KVM to start the deletion while the pre-fault still runs.
const K3_ATTEMPTS: usize = 5;

/// What one pre-fault did.
#[derive(Debug)]
struct K3Outcome {
    /// Its errno, `None` for success.
    errno: Option<Errno>,
    /// Bytes left in the range.
    left: u64,
    /// It returned only after the case's signal.
    signalled: bool,
}

/// K3 (`prefault-slot-delete`): `KVM_PRE_FAULT_MEMORY` over a memslot that
/// another thread deletes. 6.12.118 retries until a signal (and the
/// deletion waits for it); 7.3.4 returns at once, EAGAIN or 0 with the
/// range partly done. On KVM a thread deletes the slot while the pre-fault
/// runs; on the model the deletion is injected
/// ([`InjectOp::PreFaultSlotChange`]), as the model's memslot changes are
/// atomic to a pre-fault.
pub(crate) fn k3_prefault_slot_delete<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let s = series(cx)?;
    let cap = cx
        .hv
        .check_extension(Cap::PreFaultMemory)
        .or_fail("KVM_CHECK_EXTENSION(KVM_CAP_PRE_FAULT_MEMORY)")?;
    if cap == 0 {
        return Err(Stop::Skip(
            "KVM_CAP_PRE_FAULT_MEMORY=0 (no two-dimensional paging: tdp_enabled=0)".into(),
        ));
    }
    let any: &dyn Any = cx.hv;
    let outcome = match any.downcast_ref::<ModelHypervisor>() {
        Some(model) => k3_model(cx, model)?,
        None => k3_kernel(cx)?,
    };
    against(s, k3_expect(s, &outcome))
}

fn k3_expect(s: Series, o: &K3Outcome) -> Check {
    let partial = o.errno.is_none() && o.left > 0 && o.left < K3_SIZE;
    match s {
        Series::V6_12 => ensure!(
            o.signalled && (partial || (o.errno == Some(Errno::EINTR) && o.left == K3_SIZE)),
            "pre-fault over a memslot being deleted: {o:?}; measured: it returns only when \
             signalled, then 0 with the range partly done (or EINTR)"
        ),
        Series::V7_3 => ensure!(
            !o.signalled && (partial || (o.errno == Some(Errno::EAGAIN) && o.left == K3_SIZE)),
            "pre-fault over a memslot being deleted: {o:?}; measured: it returns without a \
             signal, 0 with the range partly done (or EAGAIN)"
        ),
    }
    Ok(())
}

/// A default VM with the K3 memslot (slot 0), its backing and vCPU 0.
struct K3Vm<H: Hypervisor> {
    vm: H::Vm,
    shared: Shared<H>,
    vcpu: <H::Vm as Vm>::Vcpu,
}

/// A new [`K3Vm`].
fn k3_setup<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check<K3Vm<H>> {
    let vm = cx.create_vm(VmType::Default)?;
    let shared = vm
        .create_shared(K3_SIZE, SharedKind::Anonymous)
        .or_fail("shared backing (256 MiB)")?;
    k3_add_slot::<H>(&vm, &shared)?;
    let vcpu = vm.create_vcpu(0).or_fail("KVM_CREATE_VCPU(0)")?;
    Ok(K3Vm { vm, shared, vcpu })
}

fn k3_add_slot<H: Hypervisor>(vm: &H::Vm, shared: &Shared<H>) -> Check {
    let mut r = region::<Shared<H>>(0, 0, K3_GPA, K3_SIZE);
    r.userspace = UserAddr::Backing {
        mem: shared,
        offset: 0,
    };
    vm.set_user_memory_region(&r).or_fail("memslot 0 (256 MiB)")
}

/// A pre-fault's errno (`None` for success); a backend without the call
/// skips.
fn errno_of(r: Result<(), BackendError>) -> Check<Option<Errno>> {
    match r {
        Ok(()) => Ok(None),
        Err(BackendError::Unsupported { missing, .. }) => Err(Stop::Skip(missing)),
        Err(e) => e
            .errno()
            .map(Some)
            .ok_or_else(|| fail(format!("KVM_PRE_FAULT_MEMORY: {e}"))),
    }
}

/// On the model: the slot under the third page is being deleted for the
/// rest of the call.
fn k3_model<H: Hypervisor>(cx: &Ctx<'_, H>, model: &ModelHypervisor) -> Check<K3Outcome> {
    let K3Vm {
        vm: _vm,
        shared: _shared,
        mut vcpu,
    } = k3_setup(cx)?;
    let mut range = PreFaultRange::new(K3_GPA, K3_SIZE);
    model.inject_failure(InjectOp::PreFaultSlotChange, 3, Errno::EAGAIN);
    let (r, signalled) = {
        let dog = Watchdog::start(vec![vcpu.kicker()], K3_MODEL_SIGNAL_AFTER);
        let r = vcpu.pre_fault_memory(&mut range);
        (r, dog.expired())
    };
    model.clear_injections();
    Ok(K3Outcome {
        errno: errno_of(r)?,
        left: range.size,
        signalled,
    })
}

/// On KVM: a second thread deletes the slot 20 ms into the pre-fault;
/// retried when the pre-fault finished first.
fn k3_kernel<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check<K3Outcome> {
    for _ in 0..K3_ATTEMPTS {
        let K3Vm {
            vm,
            shared,
            mut vcpu,
        } = k3_setup(cx)?;
        let kick = vcpu.kicker();
        let mut range = PreFaultRange::new(K3_GPA, K3_SIZE);
        let outcome = std::thread::scope(|sc| {
            let pf = sc.spawn(|| vcpu.pre_fault_memory(&mut range));
            std::thread::sleep(Duration::from_millis(20));
            if pf.is_finished() {
                return Ok(None);
            }
            let del = sc.spawn(|| vm.set_user_memory_region(&delete::<Shared<H>>(0)));
            let dog = Watchdog::start(vec![kick], K3_SIGNAL_AFTER);
            let r = pf
                .join()
                .map_err(|_| fail("the pre-fault thread panicked"))?;
            let signalled = dog.expired();
            drop(dog);
            del.join()
                .map_err(|_| fail("the deleting thread panicked"))?
                .or_fail("deleting memslot 0 during the pre-fault")?;
            Ok(Some((r, signalled)))
        })?;
        let Some((r, signalled)) = outcome else {
            continue;
        };
        let errno = errno_of(r)?;
        if errno.is_none() && range.size == 0 && !signalled {
            // Done before the deletion reached it: try again.
            continue;
        }
        drop(shared);
        return Ok(K3Outcome {
            errno,
            left: range.size,
            signalled,
        });
    }
    Err(fail(format!(
        "the pre-fault finished before the deletion {K3_ATTEMPTS} times"
    )))
}
