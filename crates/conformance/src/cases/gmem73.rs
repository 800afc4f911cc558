//! A14–A20: what Linux 7.3's `guest_memfd_test.c` added: the flags each VM
//! type's `KVM_CAP_GUEST_MEMFD_FLAGS` allows, the file's `mmap` checks,
//! host faults past the file and on private files at the exact byte,
//! `invalid_binding`, `collapse` and `mbind`. Each runs for every VM type
//! and flag set the selftest runs, and skips where the kernel has no
//! guest_memfd flags (6.12) or no guest_memfd at all.

use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::backend::{GmemRef, HostMemory, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use privmem_core::memops::{MPOL_BIND, MPOL_DEFAULT, MPOL_INTERLEAVE};
use privmem_core::{Advice, BackendError, Cap, Errno, GmemFlags, Hypervisor, MemPolicy};
use privmem_core::{MmapOptions, MmapProt, MmapSharing, Vm};

use super::gmem::{expect_bytes, for_each_suite, Suite, PG};
use crate::ctx::{delete, ensure, expect_errno, fail, gmem_flag_names, region, vm_gmem_flags};
use crate::ctx::{vm_type_name, Check, Ctx, OrFail, Shared, Stop};

const MMAP: GmemFlags = GmemFlags::MMAP;
const MMAP_SHARED: GmemFlags = GmemFlags(GmemFlags::MMAP.0 | GmemFlags::INIT_SHARED.0);
const PRIVATE_ATTR: u64 = 1 << 3;

/// Skips unless the kernel knows guest_memfd flags and `MMAP` among them
/// (6.12 reads `KVM_CAP_GUEST_MEMFD_FLAGS` as 0: its guest_memfd cannot be
/// mapped, which A9 checks).
fn require_gmem_mmap<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    if cx.caps.gmem_flags & MMAP.0 != 0 {
        return Ok(());
    }
    Err(Stop::Skip(format!(
        "KVM_CAP_GUEST_MEMFD_FLAGS={:#x} lacks GUEST_MEMFD_FLAG_MMAP (a kernel before guest_memfd mmap, e.g. 6.12)",
        cx.caps.gmem_flags
    )))
}

/// A14: `KVM_CAP_GUEST_MEMFD_FLAGS` per VM type: MMAP always, INIT_SHARED
/// exactly where the VM has no private memory (`kvm_arch_supports_gmem_init_shared`);
/// MMAP|INIT_SHARED at system scope. Each combination of the two flags is
/// created iff the VM's cap has it, else EINVAL.
pub(crate) fn a14_flags_per_vm_type<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    ensure!(
        cx.caps.gmem_flags == MMAP_SHARED.0,
        "system-scope KVM_CAP_GUEST_MEMFD_FLAGS={:#x}, expected {:#x} (MMAP|INIT_SHARED)",
        cx.caps.gmem_flags,
        MMAP_SHARED.0
    );
    for ty in cx.vm_types() {
        let vm = cx.create_vm_raw(ty)?;
        let name = vm_type_name(ty);
        let cap = vm_gmem_flags(&vm);
        let private = vm.check_extension(Cap::MemoryAttributes).unwrap_or(0) & PRIVATE_ATTR != 0;
        let want = if private { MMAP.0 } else { MMAP_SHARED.0 };
        ensure!(
            cap == want,
            "{name}: KVM_CAP_GUEST_MEMFD_FLAGS={cap:#x}, expected {want:#x} ({})",
            if private {
                "private memory: MMAP only"
            } else {
                "no private memory: MMAP|INIT_SHARED"
            }
        );
        for flags in [MMAP, GmemFlags::INIT_SHARED, MMAP_SHARED] {
            let r = vm.create_guest_memfd(PG, flags);
            let what = format!(
                "{name}: KVM_CREATE_GUEST_MEMFD({})",
                gmem_flag_names(flags.0)
            );
            if flags.0 & !cap == 0 {
                r.or_fail(what)?;
            } else {
                expect_errno(r, Errno::EINVAL, what)?;
            }
        }
    }
    Ok(())
}

fn mmap_opts(prot: MmapProt, sharing: MmapSharing) -> MmapOptions {
    MmapOptions { prot, sharing }
}

/// A15: the file's `mmap` checks, in 7.3's order: PROT_EXEC is EPERM for
/// every file (the guest_memfd filesystem is noexec), then a file without
/// MMAP is ENODEV, then MAP_PRIVATE is EINVAL (`mmap_cow`); a shared
/// mapping four times longer than the file succeeds.
pub(crate) fn a15_mmap_checks<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let mapped = s.flags.contains(MMAP);
        let m = |o| cx.hv.gmem_mmap_with(&g, 4 * PG, o);
        let exec = mmap_opts(MmapProt::ReadWriteExec, MmapSharing::Shared);
        expect_errno(
            m(exec),
            Errno::EPERM,
            format_args!("{}: mmap(PROT_EXEC, MAP_SHARED)", s.label),
        )?;
        let exec_cow = mmap_opts(MmapProt::ReadWriteExec, MmapSharing::Private);
        expect_errno(
            m(exec_cow),
            Errno::EPERM,
            format_args!("{}: mmap(PROT_EXEC, MAP_PRIVATE)", s.label),
        )?;
        let cow = mmap_opts(MmapProt::ReadWrite, MmapSharing::Private);
        let cow_errno = if mapped { Errno::EINVAL } else { Errno::ENODEV };
        expect_errno(
            m(cow),
            cow_errno,
            format_args!("{}: mmap(MAP_PRIVATE)", s.label),
        )?;
        let long = cx.hv.gmem_mmap_with(&g, 16 * PG, MmapOptions::SHARED_RW);
        if mapped {
            let map = long.or_fail(format_args!("{}: mmap(16p) of a 4p file", s.label))?;
            ensure!(
                map.len() == 16 * PG,
                "{}: mapping length {:#x}",
                s.label,
                map.len()
            );
            Ok(())
        } else {
            expect_errno(
                long,
                Errno::ENODEV,
                format_args!("{}: mmap(MAP_SHARED) without MMAP", s.label),
            )
        }
    })
}

/// Checks that a host access faulted exactly at `at`.
fn expect_fault_at(r: Result<(), privmem_core::HostFault>, at: u64, what: &str) -> Check {
    match r {
        Err(f) if f.offset == at => Ok(()),
        Err(f) => Err(fail(format!(
            "{what}: faulted at {:#x}, expected {at:#x}",
            f.offset
        ))),
        Ok(()) => Err(fail(format!(
            "{what}: did not fault (expected SIGBUS at {at:#x})"
        ))),
    }
}

/// A16 `fault_overflow`: on a 16-page mapping of a 4-page MMAP|INIT_SHARED
/// file, a write over all of it lands the first 4 pages and faults at the
/// file's end; every access past it faults at its own first byte.
pub(crate) fn a16_fault_overflow<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    for_each_suite(cx, MMAP_SHARED, GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let map = cx
            .hv
            .gmem_mmap(&g, 16 * PG, true)
            .or_fail(format_args!("{}: mmap(16p)", s.label))?;
        expect_fault_at(
            map.fill(0, 16 * PG, 0xaa),
            4 * PG,
            &format!("{}: memset(16p)", s.label),
        )?;
        expect_bytes(
            &map,
            0,
            4 * PG,
            0xaa,
            &format!("{}: the writes before the fault", s.label),
        )?;
        let mut b = [0u8; 8];
        for page in 4..16 {
            let at = page * PG + 8;
            expect_fault_at(
                map.read(at, &mut b),
                at,
                &format!("{}: read at {at:#x}", s.label),
            )?;
            expect_fault_at(
                map.write(at, &b),
                at,
                &format!("{}: write at {at:#x}", s.label),
            )?;
        }
        Ok(())
    })
}

/// A17 `fault_private`: a MMAP file without INIT_SHARED maps, and every
/// host access to it faults at its own first byte.
pub(crate) fn a17_fault_private<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    for_each_suite(cx, MMAP, GmemFlags::INIT_SHARED, |s| {
        let g = s.gmem(4)?;
        let map = cx
            .hv
            .gmem_mmap(&g, 4 * PG, true)
            .or_fail(format_args!("{}: mmap", s.label))?;
        expect_fault_at(
            map.fill(0, 4 * PG, 0xaa),
            0,
            &format!("{}: memset", s.label),
        )?;
        let mut b = [0u8; 8];
        for at in [0, PG + 7, 3 * PG] {
            expect_fault_at(
                map.read(at, &mut b),
                at,
                &format!("{}: read at {at:#x}", s.label),
            )?;
            expect_fault_at(
                map.write(at, &b),
                at,
                &format!("{}: write at {at:#x}", s.label),
            )?;
        }
        Ok(())
    })
}

/// `ALIGN_DOWN(INT64_MAX, PAGE_SIZE)`.
const HUGE_OFFSET: u64 = i64::MAX as u64 & !(PG - 1);
/// Where A18 binds (the selftests' slot 10 GPA).
const GPA_C0: u64 = 0xc000_0000;

/// A18 `invalid_binding`: binding a page at file offset
/// ALIGN_DOWN(INT64_MAX) (`offset + size` overflows `loff_t`) is EINVAL;
/// where the VM binds guest_memfd at all, the same page at offset 0 binds.
pub(crate) fn a18_invalid_binding<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    if cx.caps.gmem_flags == 0 {
        // In 6.12's kvm_gmem_bind `offset + size` is a signed sum that
        // wraps for this offset; whether 6.12.118 rejects it is unverified.
        return Err(Stop::Skip(
            "KVM_CAP_GUEST_MEMFD_FLAGS=0 (a 6.12-era kernel): invalid_binding is a 7.3 selftest, \
             and 6.12's answer to it is not pinned"
                .into(),
        ));
    }
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let bind = |offset| {
            let mut r = region::<Shared<H>>(10, MEM_GUEST_MEMFD, GPA_C0, PG);
            r.gmem = GmemRef::File(&g);
            r.gmem_offset = offset;
            s.vm.set_user_memory_region(&r)
        };
        expect_errno(
            bind(HUGE_OFFSET),
            Errno::EINVAL,
            format_args!("{}: offset {HUGE_OFFSET:#x}", s.label),
        )?;
        if s.vm.check_extension(Cap::GuestMemfd).unwrap_or(0) != 0 {
            bind(0).or_fail(format_args!("{}: offset 0", s.label))?;
            s.vm.set_user_memory_region(&delete::<Shared<H>>(10))
                .or_fail(format_args!("{}: delete slot 10", s.label))?;
        }
        Ok(())
    })
}

/// Skips on `ENOSYS` (a kernel without the syscall's config); other
/// results pass through.
fn unless_enosys<T>(r: Result<T, BackendError>, what: &str) -> Check<Result<T, BackendError>> {
    match r {
        Err(e) if e.errno() == Some(Errno::ENOSYS) => Err(Stop::Skip(format!("{what}: ENOSYS"))),
        r => Ok(r),
    }
}

/// A19 `collapse`: on a 2 MiB MMAP|INIT_SHARED file, `MADV_HUGEPAGE` is
/// fine, `MADV_COLLAPSE` is EINVAL (guest_memfd never gets a huge page),
/// and `MADV_DONTNEED` then re-reading keeps every byte.
pub(crate) fn a19_collapse<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    let m2 = 512 * PG;
    for_each_suite(cx, MMAP_SHARED, GmemFlags(0), |s| {
        let g = s.gmem(512)?;
        let map = cx
            .hv
            .gmem_mmap(&g, m2, true)
            .or_fail(format_args!("{}: mmap(2 MiB)", s.label))?;
        map.fill(0, m2, 0x3c)
            .map_err(|e| fail(format!("{}: memset: {e}", s.label)))?;
        let advise = |a: Advice| cx.hv.gmem_madvise(&map, 0, m2, a);
        unless_enosys(advise(Advice::HugePage), "madvise(MADV_HUGEPAGE)")?
            .or_fail(format_args!("{}: MADV_HUGEPAGE", s.label))?;
        expect_errno(
            advise(Advice::Collapse),
            Errno::EINVAL,
            format_args!("{}: MADV_COLLAPSE", s.label),
        )?;
        advise(Advice::DontNeed).or_fail(format_args!("{}: MADV_DONTNEED", s.label))?;
        expect_bytes(
            &map,
            0,
            m2,
            0x3c,
            &format!("{}: re-faulted after MADV_DONTNEED", s.label),
        )
    })
}

/// Checks `get_mempolicy` at `offset` of `map`.
fn expect_policy<H: Hypervisor>(
    cx: &Ctx<'_, H>,
    map: &H::Mapping,
    offset: u64,
    want: MemPolicy,
    what: &str,
) -> Check {
    let got = cx
        .hv
        .gmem_get_mempolicy(map, offset)
        .or_fail(format_args!("{what}: get_mempolicy({offset:#x})"))?;
    ensure!(
        got == want,
        "{what}: get_mempolicy({offset:#x}) = {got:?}, expected {want:?}"
    );
    Ok(())
}

/// A20 `mbind`: INTERLEAVE and BIND on node 0 read back through
/// `get_mempolicy(MPOL_F_ADDR)`, DEFAULT resets, mode 999 is EINVAL; the
/// policy belongs to the file offset, so it outlives the mapping and a
/// PUNCH_HOLE (7.3's shared policy on the guest_memfd inode).
pub(crate) fn a20_mbind<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    require_gmem_mmap(cx)?;
    for_each_suite(cx, MMAP, GmemFlags(0), |s| mbind_suite(cx, s))
}

fn mbind_suite<H: Hypervisor>(cx: &Ctx<'_, H>, s: &Suite<'_, H::Vm>) -> Check {
    let g = s.gmem(4)?;
    let l = &s.label;
    let node0 = 1;
    let interleave = MemPolicy::new(MPOL_INTERLEAVE, node0);
    let bind = MemPolicy::new(MPOL_BIND, node0);
    {
        let map = cx
            .hv
            .gmem_mmap(&g, 4 * PG, true)
            .or_fail(format_args!("{l}: mmap"))?;
        let mbind = |off, len, p| cx.hv.gmem_mbind(&map, off, len, p, 0);
        unless_enosys(mbind(0, 2 * PG, interleave), "mbind")?
            .or_fail(format_args!("{l}: mbind(INTERLEAVE)"))?;
        expect_policy(cx, &map, 0, interleave, l)?;
        mbind(2 * PG, 2 * PG, bind).or_fail(format_args!("{l}: mbind(BIND)"))?;
        expect_policy(cx, &map, 2 * PG, bind, l)?;
        mbind(0, 4 * PG, MemPolicy::DEFAULT).or_fail(format_args!("{l}: mbind(DEFAULT)"))?;
        expect_policy(cx, &map, 0, MemPolicy::new(MPOL_DEFAULT, 0), l)?;
        let bad = mbind(0, PG, MemPolicy::new(999, node0));
        expect_errno(bad, Errno::EINVAL, format_args!("{l}: mbind(policy 999)"))?;
        mbind(PG, PG, bind).or_fail(format_args!("{l}: mbind(BIND) of page 1"))?;
    }
    let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    cx.hv
        .gmem_fallocate(&g, punch, 0, (4 * PG) as i64)
        .or_fail(format_args!("{l}: PUNCH_HOLE"))?;
    let again = cx
        .hv
        .gmem_mmap(&g, 4 * PG, true)
        .or_fail(format_args!("{l}: mmap again"))?;
    let after = format!("{l}: after munmap and PUNCH_HOLE");
    expect_policy(cx, &again, PG, bind, &after)?;
    expect_policy(cx, &again, 0, MemPolicy::DEFAULT, &after)
}
