//! `kvm/setup`: privmem's setup of a sw-protected VM with one guest_memfd
//! slot of 1 GiB, 64 GiB and 1 TiB (`Machine::new`: capability checks,
//! `KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)`, `KVM_ENABLE_CAP` for the
//! hypercall exit, `KVM_CREATE_GUEST_MEMFD`, the shared memfd and its
//! mapping, the memslot, the engine; no vCPU, nothing made private) against
//! the same kernel calls alone (`privmem_baseline::bare_sw_protected_vm`).

use std::sync::Arc;

use anyhow::Context;
use privmem_baseline::{bare_sw_protected_vm, DevKvm};
use privmem_core::VmType;
use privmem_runner::runtime::Machine;

use super::super::util::{size_name, slot, timed, workload, GIB, TIB};
use super::super::{Ctx, Row, RowSpec, Side, Target};

/// Runs the benchmark.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    if super::private_mem_or_skip(ctx, "kvm/setup")?.is_none() {
        return Ok(Vec::new());
    }
    let Some(hv) = ctx.kvm_or_skip("kvm/setup")? else {
        return Ok(Vec::new());
    };
    let hv = Arc::new(hv);
    let dev = DevKvm::open()?;
    let sizes: &[u64] = if ctx.quick {
        &[GIB, 64 * GIB]
    } else {
        &[GIB, 64 * GIB, TIB]
    };
    let mut rows = Vec::new();
    for &size in sizes {
        let name = size_name(size);
        let label = format!("kvm/setup/{name}");
        let w = workload(VmType::SwProtected, false, vec![slot(0, size)], Vec::new());
        let s = ctx.alternate(&label, ctx.rounds(), |side| {
            let t = match side {
                Side::Baseline => {
                    let (t, vm) = timed(|| bare_sw_protected_vm(&dev, size));
                    drop(vm?);
                    t
                }
                Side::Privmem => {
                    let (t, m) = timed(|| Machine::new(hv.clone(), &w));
                    drop(m.context("privmem's sw-protected setup")?);
                    t
                }
            };
            Ok(t * 1e3)
        })?;
        rows.push(
            RowSpec {
                name: &label,
                unit: "ms",
                target: Target::RatioAtMost(1.1),
                baseline_is: "KVM_CREATE_VM(sw-protected) + KVM_ENABLE_CAP + KVM_CREATE_GUEST_MEMFD + memfd + mmap + KVM_SET_USER_MEMORY_REGION2 alone",
                note: Some(format!(
                    "real KVM, sw-protected VM, one guest_memfd + shared memfd slot of {name}, no vCPU, all shared"
                )),
            }
            .row(&s),
        );
    }
    Ok(rows)
}
