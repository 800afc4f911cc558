//! A1–A12: `guest_memfd_test.c` file semantics, for every VM type the
//! backend reports and every flag set the VM's `KVM_CAP_GUEST_MEMFD_FLAGS`
//! allows (0; MMAP; MMAP|INIT_SHARED), each test on a fresh 4-page file.

use privmem_core::backend::{FileIo, HostMemory, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use privmem_core::{Errno, GmemFlags, GuestMemfd, HostFault, Hypervisor, Vm};

use crate::ctx::{
    ensure, expect_errno, fail, gmem_flag_names, vm_gmem_flags, vm_type_name, Check, Ctx, OrFail,
    Stop,
};

/// The page size.
pub(crate) const PG: u64 = 4096;
const PUNCH: i32 = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const KEEP: i32 = FALLOC_FL_KEEP_SIZE;

/// One `__test_guest_memfd(vm, flags)` suite: a VM and a flag set.
pub(crate) struct Suite<'v, V> {
    pub(crate) vm: &'v V,
    pub(crate) flags: GmemFlags,
    /// "KVM_X86_DEFAULT_VM, flags GUEST_MEMFD_FLAG_MMAP", for reasons.
    pub(crate) label: String,
}

impl<V: Vm> Suite<'_, V> {
    /// A fresh guest_memfd of `pages` pages with the suite's flags.
    pub(crate) fn gmem(&self, pages: u64) -> Check<GuestMemfd> {
        self.vm
            .create_guest_memfd(pages * PG, self.flags)
            .or_fail(format_args!(
                "{}: KVM_CREATE_GUEST_MEMFD({pages} pages)",
                self.label
            ))
    }
}

/// The flag sets the selftest runs for a VM whose cap is `cap`.
fn flag_sets(cap: u64) -> Vec<GmemFlags> {
    let mut sets = vec![GmemFlags(0)];
    if cap & GmemFlags::MMAP.0 != 0 {
        sets.push(GmemFlags::MMAP);
    }
    if cap & GmemFlags::INIT_SHARED.0 != 0 {
        sets.push(GmemFlags::MMAP.union(GmemFlags::INIT_SHARED));
    }
    sets
}

/// Runs `f` on every suite whose flags contain `need` and avoid `avoid`.
/// Skips (naming every VM type's cap) when no suite qualifies.
pub(crate) fn for_each_suite<H: Hypervisor>(
    cx: &Ctx<'_, H>,
    need: GmemFlags,
    avoid: GmemFlags,
    mut f: impl FnMut(&Suite<'_, H::Vm>) -> Check,
) -> Check {
    cx.require_guest_memfd()?;
    let mut ran = 0;
    let mut caps = Vec::new();
    for ty in cx.vm_types() {
        let vm = cx.create_vm_raw(ty)?;
        let cap = vm_gmem_flags(&vm);
        caps.push(format!("{}={cap:#x}", vm_type_name(ty)));
        for flags in flag_sets(cap) {
            if !flags.contains(need) || flags.0 & avoid.0 != 0 {
                continue;
            }
            let label = format!("{}, flags {}", vm_type_name(ty), gmem_flag_names(flags.0));
            f(&Suite {
                vm: &vm,
                flags,
                label,
            })?;
            ran += 1;
        }
    }
    if ran > 0 {
        return Ok(());
    }
    let mut why = format!(
        "KVM_CAP_GUEST_MEMFD_FLAGS lacks {}",
        gmem_flag_names(need.0)
    );
    if avoid.0 != 0 {
        why = format!(
            "KVM_CAP_GUEST_MEMFD_FLAGS allows no flag set with {} and without {}",
            gmem_flag_names(need.0),
            gmem_flag_names(avoid.0)
        );
    }
    Err(Stop::Skip(format!("{why} ({})", caps.join(", "))))
}

/// Checks that `[off, off+len)` of `map` reads `byte` throughout.
pub(crate) fn expect_bytes<M: HostMemory>(
    map: &M,
    off: u64,
    len: u64,
    byte: u8,
    what: &str,
) -> Check {
    let mut buf = vec![0u8; len as usize];
    map.read(off, &mut buf)
        .map_err(|e| fail(format!("{what}: host read at {off:#x}: {e}")))?;
    if let Some(i) = buf.iter().position(|b| *b != byte) {
        return Err(fail(format!(
            "{what}: byte at {:#x} is {:#04x}, expected {byte:#04x}",
            off + i as u64,
            buf[i]
        )));
    }
    Ok(())
}

/// Checks that a host access failed exactly as `want` says: at that
/// offset, with that signal.
pub(crate) fn expect_host_fault(r: Result<(), HostFault>, want: HostFault, what: &str) -> Check {
    match r {
        Err(f) if f == want => Ok(()),
        Err(f) => Err(fail(format!(
            "{what}: {} at {:#x}, expected {} at {:#x}",
            f.signal, f.offset, want.signal, want.offset
        ))),
        Ok(()) => Err(fail(format!(
            "{what}: no fault, expected {} at {:#x}",
            want.signal, want.offset
        ))),
    }
}

/// A1: each single flag bit is accepted iff the VM cap has it, else EINVAL.
pub(crate) fn a1_flags<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    for ty in cx.vm_types() {
        let vm = cx.create_vm_raw(ty)?;
        let cap = vm_gmem_flags(&vm);
        for bit in 0..64 {
            let flags = GmemFlags(1 << bit);
            let r = vm.create_guest_memfd(PG, flags);
            let what = format!(
                "{}: KVM_CREATE_GUEST_MEMFD(flags bit {bit}, cap {cap:#x})",
                vm_type_name(ty)
            );
            if cap & flags.0 != 0 {
                r.or_fail(what)?;
            } else {
                expect_errno(r, Errno::EINVAL, what)?;
            }
        }
    }
    Ok(())
}

/// A2: a 1-page then a 2-page file: sizes right and stable, inodes differ.
pub(crate) fn a2_multiple<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    cx.require_guest_memfd()?;
    for ty in cx.vm_types() {
        let vm = cx.create_vm_raw(ty)?;
        let name = vm_type_name(ty);
        let g1 = vm
            .create_guest_memfd(PG, GmemFlags(0))
            .or_fail(format_args!("{name}: gmem 1p"))?;
        let s1 = cx.hv.gmem_stat(&g1).or_fail("fstat(gmem 1p)")?;
        let g2 = vm
            .create_guest_memfd(2 * PG, GmemFlags(0))
            .or_fail(format_args!("{name}: gmem 2p"))?;
        let s2 = cx.hv.gmem_stat(&g2).or_fail("fstat(gmem 2p)")?;
        let s1b = cx.hv.gmem_stat(&g1).or_fail("fstat(gmem 1p) again")?;
        ensure!(
            s1.size == PG,
            "{name}: first file st_size {:#x}, expected {PG:#x}",
            s1.size
        );
        ensure!(
            s2.size == 2 * PG,
            "{name}: second file st_size {:#x}, expected {:#x}",
            s2.size,
            2 * PG
        );
        ensure!(
            s1b.size == PG,
            "{name}: first file size changed to {:#x}",
            s1b.size
        );
        ensure!(
            s1.ino != s2.ino,
            "{name}: both files have st_ino {}",
            s1.ino
        );
    }
    Ok(())
}

/// A3: sizes 1..PAGE_SIZE-1 are EINVAL.
pub(crate) fn a3_invalid_sizes<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        for size in 1..PG {
            let r = s.vm.create_guest_memfd(size, s.flags);
            expect_errno(
                r,
                Errno::EINVAL,
                format_args!("{}: KVM_CREATE_GUEST_MEMFD(size {size})", s.label),
            )?;
        }
        Ok(())
    })
}

/// A4: read/write give EINVAL, pread/pwrite ESPIPE.
pub(crate) fn a4_file_read_write<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let want = [
        (FileIo::Read, Errno::EINVAL),
        (FileIo::Write, Errno::EINVAL),
        (FileIo::Pread, Errno::ESPIPE),
        (FileIo::Pwrite, Errno::ESPIPE),
    ];
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        for (io, errno) in want {
            let r = cx.hv.gmem_file_io(&g, io);
            expect_errno(r, errno, format_args!("{}: {io:?}", s.label))?;
        }
        Ok(())
    })
}

/// A5: write, punch page 0 (reads zero), rewrite, through a shared mmap.
pub(crate) fn a5_mmap_supported<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let need = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    for_each_suite(cx, need, GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let map = cx
            .hv
            .gmem_mmap(&g, 4 * PG, true)
            .or_fail(format_args!("{}: mmap", s.label))?;
        map.fill(0, 4 * PG, 0xaa)
            .map_err(|e| fail(format!("{}: memset 0xaa: {e}", s.label)))?;
        expect_bytes(&map, 0, 4 * PG, 0xaa, &s.label)?;
        cx.hv
            .gmem_fallocate(&g, PUNCH, 0, PG as i64)
            .or_fail("PUNCH_HOLE page 0")?;
        expect_bytes(&map, 0, PG, 0, &format!("{}: punched page 0", s.label))?;
        expect_bytes(&map, PG, 3 * PG, 0xaa, &format!("{}: pages 1-3", s.label))?;
        map.fill(0, PG, 0xaa)
            .map_err(|e| fail(format!("{}: memset page 0: {e}", s.label)))?;
        expect_bytes(
            &map,
            0,
            4 * PG,
            0xaa,
            &format!("{}: after rewrite", s.label),
        )
    })
}

/// A6: a 16-page mapping of a 4-page file faults (SIGBUS) at the file end;
/// the writes before the fault landed.
pub(crate) fn a6_fault_overflow<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let need = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    for_each_suite(cx, need, GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let map = cx
            .hv
            .gmem_mmap(&g, 16 * PG, true)
            .or_fail(format_args!("{}: mmap 16p", s.label))?;
        expect_host_fault(
            map.fill(0, 16 * PG, 0xaa),
            HostFault::bus(4 * PG),
            &format!("{}: memset(16p) over a 4p file", s.label),
        )?;
        let mut b = [0u8; 8];
        for at in [4 * PG, 4 * PG + 8, 15 * PG] {
            expect_host_fault(
                map.read(at, &mut b),
                HostFault::bus(at),
                &format!("{}: read at {at:#x}", s.label),
            )?;
        }
        expect_bytes(
            &map,
            0,
            4 * PG,
            0xaa,
            &format!("{}: writes before the fault", s.label),
        )
    })
}

/// A7: without INIT_SHARED the mapping exists but every host access
/// faults (SIGBUS), each at its own first byte.
pub(crate) fn a7_fault_private<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for_each_suite(cx, GmemFlags::MMAP, GmemFlags::INIT_SHARED, |s| {
        let g = s.gmem(4)?;
        let map = cx
            .hv
            .gmem_mmap(&g, 4 * PG, true)
            .or_fail(format_args!("{}: mmap", s.label))?;
        expect_host_fault(
            map.fill(0, 4 * PG, 0xaa),
            HostFault::bus(0),
            &format!("{}: memset of private memory", s.label),
        )?;
        let mut b = [0u8; 8];
        for at in [0, 8, PG, 3 * PG + 8] {
            expect_host_fault(
                map.read(at, &mut b),
                HostFault::bus(at),
                &format!("{}: read of private memory at {at:#x}", s.label),
            )?;
        }
        Ok(())
    })
}

/// A8: MAP_PRIVATE is EINVAL.
pub(crate) fn a8_mmap_cow<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for_each_suite(cx, GmemFlags::MMAP, GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let r = cx.hv.gmem_mmap(&g, 4 * PG, false);
        expect_errno(
            r,
            Errno::EINVAL,
            format_args!("{}: mmap(MAP_PRIVATE)", s.label),
        )
    })
}

/// A9: without MMAP, mmap is ENODEV.
pub(crate) fn a9_mmap_not_supported<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for_each_suite(cx, GmemFlags(0), GmemFlags::MMAP, |s| {
        let g = s.gmem(4)?;
        for pages in [1, 4] {
            let r = cx.hv.gmem_mmap(&g, pages * PG, true);
            expect_errno(
                r,
                Errno::ENODEV,
                format_args!("{}: mmap({pages}p, MAP_SHARED)", s.label),
            )?;
        }
        Ok(())
    })
}

/// A10: `fstat`: size 4 pages, block size one page, mode 0100600.
pub(crate) fn a10_file_size<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        let st = cx
            .hv
            .gmem_stat(&g)
            .or_fail(format_args!("{}: fstat", s.label))?;
        ensure!(
            st.size == 4 * PG,
            "{}: st_size {:#x}, expected {:#x}",
            s.label,
            st.size,
            4 * PG
        );
        ensure!(
            st.blksize == PG,
            "{}: st_blksize {}, expected {PG}",
            s.label,
            st.blksize
        );
        ensure!(
            st.mode == 0o100600,
            "{}: st_mode {:#o}, expected 0100600",
            s.label,
            st.mode
        );
        Ok(())
    })
}

/// A11: the selftest's fallocate sequence (failures are EINVAL on the host).
pub(crate) fn a11_fallocate<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let pg = PG as i64;
    let steps: [(i32, i64, i64, bool); 9] = [
        (KEEP, 0, 4 * pg, true),
        (PUNCH, pg - 1, pg, false),
        (KEEP, 4 * pg, pg, false),
        (KEEP, 5 * pg, pg, false),
        (PUNCH, 4 * pg, pg, true),
        (PUNCH, 5 * pg, pg, true),
        (PUNCH, pg, pg - 1, false),
        (PUNCH, pg, pg, true),
        (KEEP, pg, pg, true),
    ];
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        for (mode, off, len, ok) in steps {
            let r = cx.hv.gmem_fallocate(&g, mode, off, len);
            let what = format!("{}: fallocate(mode {mode:#x}, {off:#x}, {len:#x})", s.label);
            if ok {
                r.or_fail(what)?;
            } else {
                expect_errno(r, Errno::EINVAL, what)?;
            }
        }
        Ok(())
    })
}

/// A12: unaligned PUNCH_HOLE offsets/lengths are EINVAL.
pub(crate) fn a12_invalid_punch_hole<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let pg = PG as i64;
    let cases = [
        (0, 1),
        (0, pg - 1),
        (0, pg + 1),
        (1, 1),
        (1, pg - 1),
        (1, pg),
        (1, pg + 1),
        (pg, 1),
        (pg, pg - 1),
        (pg, pg + 1),
    ];
    for_each_suite(cx, GmemFlags(0), GmemFlags(0), |s| {
        let g = s.gmem(4)?;
        for (off, len) in cases {
            let r = cx.hv.gmem_fallocate(&g, PUNCH, off, len);
            expect_errno(
                r,
                Errno::EINVAL,
                format_args!("{}: PUNCH_HOLE({off:#x}, {len:#x})", s.label),
            )?;
        }
        Ok(())
    })
}
