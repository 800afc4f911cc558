//! K1–K4: kernel behaviours privmem found (`docs/findings/`), each pinned
//! to what the rig measured on Debian's 6.12.118 and 7.3.4
//! ([`crate::findings::FINDINGS`]). A kernel that changes one (a fix)
//! fails its case, naming the kernel whose measurement it no longer
//! matches, instead of the model silently diverging.
//!
//! The expectation is picked by the backend's kernel: the model's profile,
//! or the running kernel's release on KVM (the nearest measured series:
//! 6.12 up to 6.12, 7.3 from 7.3 on); a kernel between the two (6.18, the
//! PVM hosts) was not measured and skips, naming its release.

use std::any::Any;

use privmem_core::backend::{GmemRef, SharedKind, UserAddr, MEM_GUEST_MEMFD};
use privmem_core::{Attrs, Errno, Exit, FaultErrno, GmemFlags, Gpa, GuestOp, GuestReport};
use privmem_core::{Hypervisor, MemoryFault, MmioExit, Vcpu, Vm, VmType};
use privmem_model::{InjectOp, ModelHypervisor};

use super::gmem::PG;
use super::gmem_guest::write;
use crate::ctx::{ensure, expect_errno, fail, region, Check, Ctx, OrFail, Shared, Stop};
use crate::findings::{kernel_release, series_of, Series};
use crate::guest::{next_exit, vcpu_with};

pub(crate) const M1: u64 = 1 << 20;

/// The series `cx`'s backend is held to; skips for an unmeasured kernel.
/// Cases check what they need from the backend first, so a backend that
/// lacks it skips naming the capability.
pub(crate) fn series<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check<Series> {
    let release = kernel_release(cx.hv);
    series_of(&release).ok_or_else(|| {
        Stop::Skip(format!(
            "kernel {release} was not measured (the findings were measured on 6.12.118 and 7.3.4)"
        ))
    })
}

/// Prefixes a failure with the kernel measurement it contradicts.
pub(crate) fn against(s: Series, r: Check) -> Check {
    r.map_err(|e| match e {
        Stop::Fail(m) => Stop::Fail(format!(
            "differs from what {} did in the rig: {m}",
            s.measured()
        )),
        other => other,
    })
}

// ---- K1: the stale MMIO SPTE of a private slotless gfn ----------------

/// The slotless gfn under test (the D cases' 0xc0000000).
const K1_GPA: u64 = 0xc000_0000;
/// An unrelated memslot's GPA, added to change the memslot generation.
const K1_OTHER_GPA: u64 = 0x1_0000_0000;

/// What one guest access to the gfn gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Mmio,
    Fault { private: bool },
}

/// A guest write of one byte to the gfn. The case writes where the
/// reproducer reads: the fault path is the same, and a write needs no
/// completion data (privmem's KVM backend completes MMIO reads with
/// all-ones, the model with zeros).
fn k1_write() -> GuestOp {
    write(K1_GPA, 1, 0x5a)
}

/// Runs `vcpu` to its next exit and classifies it as the write of
/// `K1_GPA`: an MMIO exit (run on to the next sync or halt: KVM completes
/// the write on re-entry) or a memory fault there.
fn k1_access<V: Vcpu>(vcpu: &mut V, what: &str) -> Check<Seen> {
    let exit = next_exit(vcpu)?;
    match exit {
        Exit::Mmio(MmioExit { gpa, write, .. }) if gpa == Gpa(K1_GPA) && write => loop {
            match next_exit(vcpu)? {
                Exit::Mmio(m) if m.gpa.raw() >> 12 == K1_GPA >> 12 && m.write => {}
                Exit::Report(GuestReport::Sync { .. }) | Exit::Hlt => return Ok(Seen::Mmio),
                other => return Err(fail(format!("{what}: after the MMIO exit: {other:?}"))),
            }
        },
        Exit::MemoryFault(f) => {
            let want = MemoryFault {
                gpa: Gpa(K1_GPA),
                size: PG,
                private: f.private,
                errno: FaultErrno::Efault,
            };
            ensure!(
                f == want,
                "{what}: memory fault {f:?}, expected one for gpa {K1_GPA:#x}, 4 KiB, EFAULT"
            );
            Ok(Seen::Fault { private: f.private })
        }
        other => Err(fail(format!("{what}: unexpected exit {other:?}"))),
    }
}

fn set_private<V: Vm>(vm: &V, private: bool) -> Check {
    let a = if private {
        Attrs::PRIVATE
    } else {
        Attrs::SHARED
    };
    vm.set_memory_attributes(K1_GPA, PG, a.0, 0)
        .or_fail(format_args!(
            "KVM_SET_MEMORY_ATTRIBUTES({K1_GPA:#x}, 4 KiB, {:#x})",
            a.0
        ))
}

/// K1 (`mmio-stale-spte`): on a sw-protected VM, a gfn without a memslot
/// that the guest accessed once while shared (an MMIO SPTE) and that is then
/// made private does not fault as private: while the SPTE is current the
/// access is emulated MMIO, after any memslot change it faults as *shared*.
/// A never-accessed private slotless gfn faults as private (the control).
/// 6.12.118 and 7.3.4 behave alike (`kvm_mmu_page_fault`).
pub(crate) fn k1_mmio_stale_spte<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_vm_type(VmType::SwProtected)?;
    let s = series(cx)?;
    against(s, k1_body(cx))
}

fn k1_body<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    // Control: private, never accessed.
    let a = cx.create_vm(VmType::SwProtected)?;
    set_private(&a, true)?;
    let mut va = vcpu_with(&a, 0, &[k1_write(), GuestOp::Halt])?;
    let control = k1_access(&mut va, "control (never accessed)")?;
    ensure!(
        control == (Seen::Fault { private: true }),
        "control: a private slotless gfn never accessed gave {control:?}, expected a private memory fault"
    );

    let b = cx.create_vm(VmType::SwProtected)?;
    let ops = [
        k1_write(),
        GuestOp::Sync { tag: 1 },
        k1_write(),
        GuestOp::Halt,
    ];
    let mut vb = vcpu_with(&b, 0, &ops)?;
    let first = k1_access(&mut vb, "first write (shared, no memslot)")?;
    ensure!(
        first == Seen::Mmio,
        "the first shared write of the slotless gfn gave {first:?}, expected MMIO"
    );
    set_private(&b, true)?;
    let live = k1_access(&mut vb, "write after KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)")?;
    ensure!(
        live == Seen::Mmio,
        "the private gfn with a current MMIO SPTE gave {live:?}; measured: MMIO (emulated, \
         not a private fault)"
    );
    // Any memslot change makes the SPTE's generation stale.
    let other = b
        .create_shared(M1, SharedKind::Anonymous)
        .or_fail("shared backing of the unrelated memslot")?;
    let mut r = region::<Shared<H>>(1, 0, K1_OTHER_GPA, M1);
    r.userspace = UserAddr::Backing {
        mem: &other,
        offset: 0,
    };
    b.set_user_memory_region(&r)
        .or_fail("an unrelated memslot (memslot generation bump)")?;
    vb.load_program(&[k1_write(), GuestOp::Halt])
        .or_fail("load_program")?;
    let stale = k1_access(&mut vb, "write after a memslot change")?;
    ensure!(
        stale == (Seen::Fault { private: false }),
        "the private gfn with a stale MMIO SPTE gave {stale:?}; measured: a shared memory fault \
         (flags 0)"
    );
    Ok(())
}

// ---- K2: overlapping guest_memfd bindings -----------------------------

/// K2 (`gmem-bind-overlap`): a memslot bound to a guest_memfd range that
/// another memslot holds (the same range, or half of it) is refused with
/// EEXIST, from the memslot commit phase, on 6.12.118 and 7.3.4 (6.12.117
/// gave EINVAL from `kvm_gmem_bind`); the refused slot does not exist
/// afterwards.
pub(crate) fn k2_gmem_bind_overlap<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let vm = cx.gmem_slot_vm()?;
    let s = series(cx)?;
    against(s, k2_body::<H>(&vm))
}

fn k2_body<H: Hypervisor>(vm: &H::Vm) -> Check {
    let g = vm
        .create_guest_memfd(8 * M1, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD(8 MiB)")?;
    let shared = vm
        .create_shared(8 * M1, SharedKind::Anonymous)
        .or_fail("shared backing")?;
    let bind = |slot: u32, gpa: u64, hva_off: u64, off: u64| {
        let mut r = region::<Shared<H>>(slot, MEM_GUEST_MEMFD, gpa, 2 * M1);
        r.userspace = UserAddr::Backing {
            mem: &shared,
            offset: hva_off,
        };
        r.gmem = GmemRef::File(&g);
        r.gmem_offset = off;
        vm.set_user_memory_region(&r)
    };
    bind(0, 256 * M1, 0, 2 * M1).or_fail("slot 0: gpa 256 MiB, file offset 2 MiB")?;
    expect_errno(
        bind(1, 512 * M1, 2 * M1, 2 * M1),
        Errno::EEXIST,
        "slot 1 over slot 0's file range (the same 2 MiB)",
    )?;
    expect_errno(
        bind(1, 512 * M1, 2 * M1, 3 * M1),
        Errno::EEXIST,
        "slot 1 over half of slot 0's file range",
    )?;
    bind(1, 512 * M1, 2 * M1, 4 * M1)
        .or_fail("slot 1 at a disjoint file range (the refused slot 1 must not exist)")
}

// ---- K4: a shared attribute set reserves memory for every gfn -----------

/// The private page inside the cleared range.
const K4_PRIVATE_GPA: u64 = 0x10_0000;
/// The bounded range K4 clears: 2^32 bytes, 2^20 gfns. 6.12 reserves an
/// xarray slot for each (~9 MiB of nodes, freed again by the end of the
/// call); the rig's 2^40 needed ~2.4 GB and ended in the OOM killer.
const K4_RANGE: u64 = 1 << 32;
/// Slab growth (KiB) that counts as a per-gfn reservation of `K4_RANGE`.
const K4_RESERVED_KIB: i64 = 4 * 1024;
/// Slab growth (KiB) below which nothing was reserved.
const K4_QUIET_KIB: i64 = 1024;
/// Runs per kernel measurement: the smallest peak counts (other
/// processes' allocations only add to the sample).
const K4_RUNS: usize = 3;

/// `Slab:` of /proc/meminfo, in KiB.
fn slab_kib() -> Check<i64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| fail(format!("read /proc/meminfo: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| fail("/proc/meminfo has no Slab line"))
}

/// One clear of `K4_RANGE` over a private page on a new VM: its result and
/// the peak Slab growth (KiB) sampled while it ran (and shortly after: the
/// xarray frees its nodes through RCU).
fn k4_clear_once<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check<(Result<(), Errno>, i64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let vm = cx.create_vm(VmType::SwProtected)?;
    vm.set_memory_attributes(K4_PRIVATE_GPA, PG, Attrs::PRIVATE.0, 0)
        .or_fail("KVM_SET_MEMORY_ATTRIBUTES(one page, PRIVATE)")?;
    let base = slab_kib()?;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0i64;
            let mut after = 0;
            while after < 10 {
                if done.load(Ordering::Acquire) {
                    after += 1;
                }
                peak = peak.max(slab_kib()? - base);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(peak)
        });
        let r = vm.set_memory_attributes(0, K4_RANGE, Attrs::SHARED.0, 0);
        done.store(true, Ordering::Release);
        let peak = sampler
            .join()
            .unwrap_or_else(|_| Err(fail("the Slab sampler panicked")))?;
        let r = match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e
                .errno()
                .ok_or_else(|| fail(format!("KVM_SET_MEMORY_ATTRIBUTES(2^32, 0): {e}")))?),
        };
        Ok((r, peak))
    })
}

/// K4 on a kernel: the smallest peak Slab growth over `K4_RUNS` clears.
fn k4_kernel<H: Hypervisor>(cx: &Ctx<'_, H>, s: Series) -> Check {
    let mut peaks = Vec::new();
    for _ in 0..K4_RUNS {
        let (r, peak) = k4_clear_once(cx)?;
        if let Err(e) = r {
            return Err(fail(format!(
                "KVM_SET_MEMORY_ATTRIBUTES(0, 2^32, shared) over one private page failed with {e}"
            )));
        }
        peaks.push(peak);
    }
    let least = peaks.iter().copied().min().unwrap_or(0);
    match s {
        Series::V6_12 => ensure!(
            least >= K4_RESERVED_KIB,
            "clearing 2^20 gfns grew Slab by only {peaks:?} KiB; measured: a reservation per \
             gfn (~9 MiB), at least {K4_RESERVED_KIB} KiB"
        ),
        Series::V7_3 => ensure!(
            least < K4_QUIET_KIB,
            "clearing 2^20 gfns grew Slab by {peaks:?} KiB; measured: no reservation (under \
             {K4_QUIET_KIB} KiB)"
        ),
    }
    Ok(())
}

/// K4 (`attr-shared-reserve`): `KVM_SET_MEMORY_ATTRIBUTES` to shared over a
/// range with one private page reserves an xarray entry for every gfn of
/// the range on 6.12.118 (2^40 bytes exhausted the rig's memory), and
/// nothing on 7.3.4, which only reserves when setting. Bounded here to
/// 2^32 bytes. On KVM the reservation shows as Slab growth during the
/// call. The model allocates no kernel memory: its profiles express the
/// reservation as the point where a clear can fail with ENOMEM
/// (`xa_reserve`), which an injected failure probes.
pub(crate) fn k4_attr_shared_reserve<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_vm_type(VmType::SwProtected)?;
    let s = series(cx)?;
    let any: &dyn Any = cx.hv;
    match any.downcast_ref::<ModelHypervisor>() {
        Some(model) => against(s, k4_model(cx, model, s)),
        None => against(s, k4_kernel(cx, s)),
    }
}

/// K4 on the model: an ENOMEM armed at the reservation fires for the clear
/// on 6.12 and not on 7.3.
fn k4_model<H: Hypervisor>(cx: &Ctx<'_, H>, model: &ModelHypervisor, s: Series) -> Check {
    let vm = cx.create_vm(VmType::SwProtected)?;
    vm.set_memory_attributes(K4_PRIVATE_GPA, PG, Attrs::PRIVATE.0, 0)
        .or_fail("KVM_SET_MEMORY_ATTRIBUTES(one page, PRIVATE)")?;
    model.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    let r = vm.set_memory_attributes(0, K4_RANGE, Attrs::SHARED.0, 0);
    model.clear_injections();
    match s {
        Series::V6_12 => expect_errno(
            r,
            Errno::ENOMEM,
            "the clear with an ENOMEM armed at xa_reserve (measured: 6.12 reserves per gfn)",
        ),
        Series::V7_3 => r.or_fail(
            "the clear with an ENOMEM armed at xa_reserve (measured: 7.3 reserves nothing \
             when clearing)",
        ),
    }
}
