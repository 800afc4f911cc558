//! F26–F31: the F invariants (docs/selftests.md), implied by the kernel source but not
//! covered by a selftest. Each runs on every VM type that can show it (a
//! SW_PROTECTED VM with private pages; a 6.18 default VM with a gmem-only
//! slot) and skips when the backend has none, or visibly (even if another
//! flavor ran) when a host quirk hides the upstream behaviour (PVM).

use privmem_core::backend::{GmemRef, HostMemory, SharedKind, UserAddr, FALLOC_FL_KEEP_SIZE};
use privmem_core::backend::{FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD};
use privmem_core::exit::hc_ret;
use privmem_core::Hypervisor;
use privmem_core::{Attrs, Errno, Exit, GmemFlags, GuestMemfd, GuestOp, GuestReport, HostFault};
use privmem_core::{Vcpu, Vm, VmType};

use super::exits::{expect_fault, GPA_C0};
use super::gmem::{expect_bytes, expect_host_fault, PG};
use super::gmem_guest::{read, write};
use crate::ctx::{delete, expect_errno, fail, gmem_flag_names, region, require_gmem_flags};
use crate::ctx::{require_gmem_only_faults, require_gmem_release_visible, Check, Ctx, OrFail};
use crate::ctx::{Shared, Stop};
use crate::guest::{map_args, next_exit, run_ops, unexpected, vcpu_with, Next};

const SLOT: u32 = 10;

/// How a test page is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// SW_PROTECTED VM, guest_memfd (flags 0) slot with a shared backing,
    /// pages set private.
    Private,
    /// Default VM, guest_memfd-only slot (MMAP, plus INIT_SHARED if asked).
    GmemOnly(GmemFlags),
}

impl Flavor {
    /// "private" or "gmem-only GUEST_MEMFD_FLAG_MMAP", for reasons.
    fn name(self) -> String {
        match self {
            Flavor::Private => "private (sw-protected VM)".into(),
            Flavor::GmemOnly(f) => format!("gmem-only ({})", gmem_flag_names(f.0)),
        }
    }
}

/// A VM with slot 10 at 0xc0000000 of `pages` pages, backed per `flavor`.
struct TestVm<H: Hypervisor> {
    vm: H::Vm,
    gmem: Option<GuestMemfd>,
    _shared: Option<Shared<H>>,
}

fn test_vm<H: Hypervisor>(cx: &Ctx<'_, H>, flavor: Flavor, pages: u64) -> Check<TestVm<H>> {
    cx.require_guest_memfd()?;
    let size = pages * PG;
    let (vm, flags) = match flavor {
        Flavor::Private => {
            cx.require_vm_type(VmType::SwProtected)?;
            (cx.create_vm(VmType::SwProtected)?, GmemFlags(0))
        }
        Flavor::GmemOnly(flags) => {
            let vm = cx.create_vm(VmType::Default)?;
            require_gmem_flags(&vm, flags)?;
            (vm, flags)
        }
    };
    let gmem = vm
        .create_guest_memfd(size, flags)
        .or_fail("KVM_CREATE_GUEST_MEMFD")?;
    let shared = match flavor {
        Flavor::Private => Some(
            vm.create_shared(size, SharedKind::Anonymous)
                .or_fail("shared backing")?,
        ),
        Flavor::GmemOnly(_) => None,
    };
    let mut r = region::<Shared<H>>(SLOT, MEM_GUEST_MEMFD, GPA_C0, size);
    r.gmem = GmemRef::File(&gmem);
    if let Some(s) = &shared {
        r.userspace = UserAddr::Backing { mem: s, offset: 0 };
    }
    vm.set_user_memory_region(&r).or_fail("memslot 10")?;
    if flavor == Flavor::Private {
        vm.set_memory_attributes(GPA_C0, size, Attrs::PRIVATE.0, 0)
            .or_fail("KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)")?;
    }
    Ok(TestVm {
        vm,
        gmem: Some(gmem),
        _shared: shared,
    })
}

/// Runs `ops`, calling `on_sync(tag)` at each `sync`; other exits fail.
fn run_syncs<V: Vm>(
    vm: &V,
    index: u32,
    ops: &[GuestOp],
    mut on_sync: impl FnMut(u64) -> Check,
) -> Check {
    run_ops(vm, index, ops, |v, e| match e {
        Exit::Report(GuestReport::Sync { tag }) => on_sync(tag).map(|()| Next::Continue),
        other => Err(unexpected(v.index(), &other)),
    })
}

/// Runs `f` for every flavor in `flavors`: a pass only if every flavor
/// ran; a skip (with every distinct reason) if none did; otherwise partial,
/// naming the flavors that ran and each skipped one with its reason.
fn each_flavor(flavors: &[Flavor], mut f: impl FnMut(Flavor) -> Check) -> Check {
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for &fl in flavors {
        match f(fl) {
            Ok(()) => ran.push(fl.name()),
            Err(Stop::Skip(r)) => {
                skipped.push(format!("{} ({r})", fl.name()));
                if !reasons.contains(&r) {
                    reasons.push(r);
                }
            }
            Err(Stop::Partial(r)) => {
                ran.push(fl.name());
                skipped.push(format!("part of {} ({r})", fl.name()));
            }
            Err(Stop::Fail(r)) => return Err(fail(format!("{}: {r}", fl.name()))),
        }
    }
    if skipped.is_empty() {
        return Ok(());
    }
    if ran.is_empty() {
        return Err(Stop::Skip(reasons.join("; ")));
    }
    Err(Stop::Partial(format!(
        "ran {}; skipped {}",
        ran.join(", "),
        skipped.join("; ")
    )))
}

const MMAP: GmemFlags = GmemFlags::MMAP;
const MMAP_SHARED: GmemFlags = GmemFlags(GmemFlags::MMAP.0 | GmemFlags::INIT_SHARED.0);

/// F26: closing the last guest_memfd reference kills its bindings: the next
/// guest fault there is EFAULT with flags = privateness (PRIVATE on a
/// SW_PROTECTED VM's private page, 0 on a default VM's gmem-only slot); the
/// dead slot still deletes.
///
/// On a PVM host the gmem-only flavors skip (a visible skip naming the
/// quirk): a default VM's slot is not served from guest_memfd there, and
/// the KVM backend's mapping of a `MMAP|INIT_SHARED` file keeps it open.
pub(crate) fn f26_closed_gmem<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let flavors = [
        Flavor::Private,
        Flavor::GmemOnly(MMAP_SHARED),
        Flavor::GmemOnly(MMAP),
    ];
    each_flavor(&flavors, |fl| {
        if let Flavor::GmemOnly(flags) = fl {
            require_gmem_release_visible(cx.hv.quirks(), flags)?;
        }
        let mut t = test_vm(cx, fl, 1)?;
        let ops = [
            read(GPA_C0, 8, 0),
            GuestOp::Sync { tag: 0 },
            read(GPA_C0, 8, 0),
            GuestOp::Halt,
        ];
        let mut vcpu = vcpu_with(&t.vm, 0, &ops)?;
        let first = next_exit(&mut vcpu)?;
        if first != Exit::Report(GuestReport::Sync { tag: 0 }) {
            return Err(fail(format!("before the close: {first:?}")));
        }
        drop(t.gmem.take());
        let exit = next_exit(&mut vcpu)?;
        expect_fault(&exit, GPA_C0, fl == Flavor::Private, "read after the close")?;
        drop(vcpu);
        t.vm.set_user_memory_region(&delete::<Shared<H>>(SLOT))
            .or_fail("delete the dead slot")
    })
}

/// F27: a gmem-only slot on a default VM serves guest faults from the
/// guest_memfd: with INIT_SHARED host and guest share bytes both ways;
/// without it every host access faults (SIGBUS) and the guest still maps
/// the pages.
///
/// On a PVM host the guest side skips visibly where the KVM backend cannot
/// stand in a mapping (MMAP without INIT_SHARED): such a slot gives
/// `KVM_EXIT_MMIO` there, unlike upstream's gmem-only path.
pub(crate) fn f27_gmem_only<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    each_flavor(
        &[Flavor::GmemOnly(MMAP_SHARED), Flavor::GmemOnly(MMAP)],
        |fl| {
            let t = test_vm(cx, fl, 2)?;
            let g = t.gmem.as_ref().ok_or_else(|| fail("no guest_memfd"))?;
            let map = cx.hv.gmem_mmap(g, 2 * PG, true).or_fail("mmap")?;
            if fl == Flavor::GmemOnly(MMAP) {
                let mut b = [0u8; 8];
                expect_host_fault(
                    map.read(0, &mut b),
                    HostFault::bus(0),
                    "host read of a gmem without INIT_SHARED",
                )?;
                expect_host_fault(
                    map.fill(PG, PG, 0x44),
                    HostFault::bus(PG),
                    "host write of a gmem without INIT_SHARED",
                )?;
                require_gmem_only_faults(cx.hv.quirks(), MMAP)?;
                let ops = [
                    write(GPA_C0, 2 * PG, 0x3c),
                    read(GPA_C0, 2 * PG, 0x3c),
                    GuestOp::Halt,
                ];
                run_syncs(&t.vm, 0, &ops, |_| Ok(()))?;
                return expect_host_fault(
                    map.read(PG + 8, &mut b),
                    HostFault::bus(PG + 8),
                    "host read after the guest wrote",
                );
            }
            require_gmem_only_faults(cx.hv.quirks(), MMAP_SHARED)?;
            map.fill(0, 2 * PG, 0x11)
                .map_err(|e| fail(format!("host memset: {e}")))?;
            let ops = [
                read(GPA_C0, 2 * PG, 0x11),
                write(GPA_C0, 2 * PG, 0x22),
                GuestOp::Sync { tag: 0 },
                read(GPA_C0, 2 * PG, 0x33),
                GuestOp::Halt,
            ];
            run_syncs(&t.vm, 0, &ops, |_| {
                expect_bytes(&map, 0, 2 * PG, 0x22, "host view of the guest's write")?;
                map.fill(0, 2 * PG, 0x33)
                    .map_err(|e| fail(format!("host memset: {e}")))
            })
        },
    )
}

/// F28: PUNCH_HOLE on a bound range zaps the guest's mapping: the next
/// guest read there sees zeros; the page next to it keeps its data.
pub(crate) fn f28_punch_zaps<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    each_flavor(&[Flavor::Private, Flavor::GmemOnly(MMAP_SHARED)], |fl| {
        if let Flavor::GmemOnly(flags) = fl {
            require_gmem_only_faults(cx.hv.quirks(), flags)?;
        }
        let t = test_vm(cx, fl, 2)?;
        let g = t.gmem.as_ref().ok_or_else(|| fail("no guest_memfd"))?;
        let ops = [
            write(GPA_C0, 2 * PG, 0x5a),
            read(GPA_C0, 2 * PG, 0x5a),
            GuestOp::Sync { tag: 0 },
            read(GPA_C0, PG, 0),
            read(GPA_C0 + PG, PG, 0x5a),
            GuestOp::Halt,
        ];
        run_syncs(&t.vm, 0, &ops, |_| {
            let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
            cx.hv
                .gmem_fallocate(g, mode, 0, PG as i64)
                .or_fail("PUNCH_HOLE page 0")
        })
    })
}

/// F29: setting attributes that are already in force returns 0 and loses
/// nothing; attributes can be set where no memslot exists, and apply once
/// a slot appears (or fault as private while none does).
pub(crate) fn f29_attributes<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let t = test_vm(cx, Flavor::Private, 2)?;
    let vm = &t.vm;
    let set = |gpa: u64, size: u64, a: Attrs| {
        vm.set_memory_attributes(gpa, size, a.0, 0)
            .or_fail(format_args!(
                "KVM_SET_MEMORY_ATTRIBUTES({gpa:#x}, {size:#x}, {:#x})",
                a.0
            ))
    };
    let slotless = 0x2_0000_0000;
    set(slotless, PG, Attrs::SHARED)?;
    set(slotless, 2 * PG, Attrs::PRIVATE)?;
    set(slotless, 2 * PG, Attrs::PRIVATE)?;
    let ops = [
        write(GPA_C0, 2 * PG, 0x66),
        GuestOp::Sync { tag: 0 },
        read(GPA_C0, 2 * PG, 0x66),
        read(slotless, 8, 0),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(vm, 0, &ops)?;
    let exit = next_exit(&mut vcpu)?;
    if exit != Exit::Report(GuestReport::Sync { tag: 0 }) {
        return Err(unexpected(0, &exit));
    }
    set(GPA_C0, 2 * PG, Attrs::PRIVATE)?;
    let exit = next_exit(&mut vcpu)?;
    expect_fault(&exit, slotless, true, "private read with no memslot")?;
    let g2 = vm
        .create_guest_memfd(2 * PG, GmemFlags(0))
        .or_fail("second guest_memfd")?;
    let mut r = region::<Shared<H>>(SLOT + 1, MEM_GUEST_MEMFD, slotless, 2 * PG);
    r.gmem = GmemRef::File(&g2);
    vm.set_user_memory_region(&r)
        .or_fail("memslot 11 under the private pages")?;
    let exit = next_exit(&mut vcpu)?;
    if exit != Exit::Hlt {
        return Err(fail(format!("after the slot appeared: {exit:?}")));
    }
    Ok(())
}

/// F30: the host's `hypercall.ret` reaches the guest unchanged, and an
/// exit the host does not complete gives the guest what the kernel leaves
/// in `kvm_run.hypercall.ret`: the first exit is completed with -5 (so
/// userspace last wrote a nonzero value there), the second is not: 0 where
/// the kernel presets `ret` (6.18, 7.3), still -5 where it does not (6.12;
/// [`crate::Kernel::presets_hypercall_ret`]).
pub(crate) fn f30_hypercall_ret<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_map_gpa_exit()?;
    let vm = cx.create_vm(VmType::Default)?;
    vm.enable_exit_hypercall(1 << 12)
        .or_fail("KVM_ENABLE_CAP(EXIT_HYPERCALL)")?;
    let map = |gpa, attrs, ret| GuestOp::Map {
        gpa,
        pages: 1,
        attrs,
        expect_ret: Some(ret),
    };
    const COMPLETED: i64 = -5;
    let (uncompleted, kernel_does) = if cx.kernel.presets_hypercall_ret() {
        (0, "presets kvm_run.hypercall.ret to 0")
    } else {
        (
            COMPLETED,
            "leaves kvm_run.hypercall.ret as userspace last wrote it",
        )
    };
    let ops = [
        map(0x2000, 0, COMPLETED),
        map(0x1000, 0x10, uncompleted),
        GuestOp::Halt,
    ];
    let mut seen = Vec::new();
    run_ops(&vm, 0, &ops, |v, e| {
        let Exit::Hypercall(h) = e else {
            return Err(unexpected(v.index(), &e));
        };
        let args = map_args(&h).ok_or_else(|| unexpected(v.index(), &e))?;
        if args.0 == 0x2000 {
            v.complete_hypercall(COMPLETED)
                .or_fail("complete_hypercall(-5)")?;
        }
        seen.push(args);
        Ok(Next::Continue)
    })
    .map_err(|e| match e {
        Stop::Fail(r) => fail(format!("{r} (kernel {} {kernel_does})", cx.kernel.name())),
        other => other,
    })?;
    let want = vec![(0x2000, 1, 0), (0x1000, 1, 0x10)];
    if seen != want {
        return Err(fail(format!(
            "hypercall exits {seen:x?}, expected {want:x?}"
        )));
    }
    Ok(())
}

/// F31: without the exit enabled the guest gets -KVM_ENOSYS; an unaligned
/// GPA, zero pages or a wrapping range give -KVM_EINVAL; none of them exits.
/// `KVM_ENABLE_CAP` rejects bits outside the valid mask with EINVAL.
pub(crate) fn f31_hypercall_errors<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_map_gpa_exit()?;
    let vm = cx.create_vm(VmType::Default)?;
    let map = |gpa, pages, ret| GuestOp::Map {
        gpa,
        pages,
        attrs: 0,
        expect_ret: Some(ret),
    };
    let no_exit = |v: &mut <H::Vm as Vm>::Vcpu, e: Exit| Err(unexpected(v.index(), &e));
    run_ops(
        &vm,
        0,
        &[map(0x1000, 1, hc_ret::ENOSYS), GuestOp::Halt],
        no_exit,
    )?;
    expect_errno(
        vm.enable_exit_hypercall(1 << 11),
        Errno::EINVAL,
        "KVM_ENABLE_CAP(EXIT_HYPERCALL, bit 11)",
    )?;
    vm.enable_exit_hypercall(1 << 12)
        .or_fail("KVM_ENABLE_CAP(EXIT_HYPERCALL, bit 12)")?;
    let bad = [
        map(0x1001, 1, hc_ret::EINVAL),
        map(0x1000, 0, hc_ret::EINVAL),
        map(0x1000, u64::MAX, hc_ret::EINVAL),
        GuestOp::Halt,
    ];
    run_ops(&vm, 1, &bad, no_exit)?;
    vm.enable_exit_hypercall(0)
        .or_fail("KVM_ENABLE_CAP(EXIT_HYPERCALL, 0)")?;
    run_ops(
        &vm,
        2,
        &[map(0x1000, 1, hc_ret::ENOSYS), GuestOp::Halt],
        no_exit,
    )
}
