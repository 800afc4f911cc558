//! C1–C5: `x86/private_mem_conversions_test.c`.
//!
//! A SW_PROTECTED VM with `KVM_CAP_EXIT_HYPERCALL`, one guest_memfd of
//! 4 MiB per vCPU bound by `-m` memslots from slot 10 at 4 GiB, each with a
//! shared backing. The guest converts with `KVM_HC_MAP_GPA_RANGE`, passing
//! the selftest's private attribute bits (SET_ATTRIBUTES=1, SHARED=2,
//! DO_FALLOCATE=4) raw; the host does exactly what the selftest's host does:
//! fallocate the gmem range behind `[gpa, gpa+size)` (PUNCH_HOLE when going
//! shared), set the attribute, complete with 0. `sync` ops ask the host to
//! check (and for "shared" syncs rewrite) the shared backing. Each case runs
//! with 1 vCPU/1 slot and with 2 vCPUs (threads)/2 slots.

use privmem_core::backend::{GmemRef, HostMemory, SharedKind, UserAddr, FALLOC_FL_KEEP_SIZE};
use privmem_core::backend::{FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD};
use privmem_core::{Attrs, Exit, GmemFlags, GuestMemfd, GuestOp, GuestReport, Hypervisor};
use privmem_core::{Vcpu, Vm, VmType};

use super::gmem::PG;
use super::gmem_guest::{read, write};
use crate::ctx::{ensure, fail, region, Check, Ctx, OrFail, Shared};
use crate::guest::{drive, map_args, unexpected, vcpu_with, Next, Watchdog, RUN_TIMEOUT};

const M2: u64 = 2 << 20;
/// First GPA of the test memory.
const BASE: u64 = 1 << 32;
/// `PER_CPU_DATA_SIZE`: what each vCPU touches.
const DATA_SIZE: u64 = M2 + PG;
/// Memory per vCPU: `align_up(2 MiB + 4 KiB, 2 MiB)`.
const PER_CPU_SIZE: u64 = 2 * M2;
/// The selftest's private `map_gpa_range` attribute bits.
const SET_ATTRIBUTES: u64 = 1;
const MAP_SHARED: u64 = 2;
const DO_FALLOCATE: u64 = 4;
/// `test_ranges`: (offset, size) within a vCPU's region.
const RANGES: [(u64, u64); 5] = [(0, PG), (0, M2), (PG, PG), (PG, M2), (M2, PG)];
/// Patterns.
const DEF_P: u8 = 0xaa;
const INIT_P: u8 = 0xcc;
const P1: u8 = 0x11;
const P2: u8 = 0x22;
const P3: u8 = 0x33;
const P4: u8 = 0x44;

/// `-n` vCPUs and `-m` memslots.
#[derive(Clone, Copy, Debug)]
struct Variant {
    vcpus: u32,
    slots: u32,
}

const VARIANTS: [Variant; 2] = [
    Variant { vcpus: 1, slots: 1 },
    Variant { vcpus: 2, slots: 2 },
];

/// A host-side check the guest asks for with a `sync` op.
#[derive(Clone, Copy, Debug)]
enum SyncCheck {
    /// The shared backing holds `cur`; then the host writes `new`.
    Shared {
        gpa: u64,
        size: u64,
        cur: u8,
        new: u8,
    },
    /// The shared backing still holds `cur` (private writes are invisible).
    Private { gpa: u64, size: u64, cur: u8 },
}

/// A guest program and the sync checks its tags refer to.
#[derive(Default)]
struct Program {
    ops: Vec<GuestOp>,
    syncs: Vec<SyncCheck>,
}

impl Program {
    fn memset(&mut self, gpa: u64, size: u64, byte: u8) {
        self.ops.push(write(gpa, size, byte));
    }
    fn memcmp(&mut self, gpa: u64, size: u64, byte: u8) {
        self.ops.push(read(gpa, size, byte));
    }
    fn hypercall(&mut self, gpa: u64, size: u64, attrs: u64) {
        self.ops.push(GuestOp::Map {
            gpa,
            pages: size / PG,
            attrs,
            expect_ret: Some(0),
        });
    }
    fn map(&mut self, gpa: u64, size: u64, shared: bool, fallocate: bool) {
        let mut attrs = SET_ATTRIBUTES;
        if shared {
            attrs |= MAP_SHARED;
        }
        if fallocate {
            attrs |= DO_FALLOCATE;
        }
        self.hypercall(gpa, size, attrs);
    }
    fn punch_hole(&mut self, gpa: u64, size: u64) {
        self.hypercall(gpa, size, MAP_SHARED | DO_FALLOCATE);
    }
    fn sync(&mut self, check: SyncCheck) {
        self.ops.push(GuestOp::Sync {
            tag: self.syncs.len() as u64,
        });
        self.syncs.push(check);
    }
    fn sync_shared(&mut self, gpa: u64, size: u64, cur: u8, new: u8) {
        self.sync(SyncCheck::Shared {
            gpa,
            size,
            cur,
            new,
        });
    }
    fn sync_private(&mut self, gpa: u64, size: u64, cur: u8) {
        self.sync(SyncCheck::Private { gpa, size, cur });
    }
}

/// `guest_test_explicit_conversion(base, do_fallocate)`.
fn explicit_conversion(p: &mut Program, base: u64, do_fallocate: bool) {
    p.memset(base, DATA_SIZE, DEF_P);
    p.memcmp(base, DATA_SIZE, DEF_P);
    p.sync_shared(base, DATA_SIZE, DEF_P, INIT_P);
    p.memcmp(base, DATA_SIZE, INIT_P);
    for (off, size) in RANGES {
        let gpa = base + off;
        p.memset(gpa, size, P1);
        p.map(gpa, size, false, do_fallocate);
        if size > PG {
            p.memset(gpa, PG, P2);
        } else {
            p.memset(gpa, size, P2);
            p.sync_private(gpa, size, P1);
            p.memcmp(gpa, size, P2);
            if gpa > base {
                p.memcmp(base, gpa - base, INIT_P);
            }
            if gpa + size < base + DATA_SIZE {
                p.memcmp(gpa + size, base + DATA_SIZE - (gpa + size), INIT_P);
            }
            for j in (0..size).step_by(PG as usize) {
                if (j / PG) & 1 == 1 {
                    p.map(gpa + j, PG, true, do_fallocate);
                    p.sync_shared(gpa + j, PG, P1, P3);
                    p.memcmp(gpa + j, PG, P3);
                } else {
                    p.sync_private(gpa + j, PG, P1);
                }
            }
        }
        p.map(gpa, size, true, do_fallocate);
        p.memset(gpa, size, P3);
        p.sync_shared(gpa, size, P3, P4);
        p.memcmp(gpa, size, P4);
        p.memset(gpa, size, INIT_P);
        p.map(base, DATA_SIZE, true, true);
    }
}

/// `guest_test_punch_hole(base, precise)`.
fn punch_hole_test(p: &mut Program, base: u64, precise: bool) {
    p.map(base, DATA_SIZE, false, false);
    for (off, size) in RANGES {
        let gpa = base + off;
        p.punch_hole(base, DATA_SIZE);
        if precise {
            p.memset(gpa, size, INIT_P);
            p.memcmp(gpa, size, INIT_P);
        } else {
            p.memset(base, DATA_SIZE, INIT_P);
            p.memcmp(base, DATA_SIZE, INIT_P);
        }
        p.punch_hole(gpa, size);
        p.memcmp(gpa, size, 0);
    }
}

/// The VM, its guest_memfd, the shared backing and the slot layout.
struct Setup<H: Hypervisor> {
    vm: H::Vm,
    gmem: GuestMemfd,
    shared: Shared<H>,
    /// (gpa, size, offset): the same offset in the gmem and the backing.
    slots: Vec<(u64, u64, u64)>,
}

fn setup<H: Hypervisor>(cx: &Ctx<'_, H>, v: Variant) -> Check<Setup<H>> {
    cx.require_vm_type(VmType::SwProtected)?;
    cx.require_guest_memfd()?;
    cx.require_map_gpa_exit()?;
    let vm = cx.create_vm(VmType::SwProtected)?;
    vm.enable_exit_hypercall(1 << 12)
        .or_fail("KVM_ENABLE_CAP(EXIT_HYPERCALL)")?;
    let total = PER_CPU_SIZE * u64::from(v.vcpus);
    let gmem = vm
        .create_guest_memfd(total, GmemFlags(0))
        .or_fail("KVM_CREATE_GUEST_MEMFD")?;
    let shared = vm
        .create_shared(total, SharedKind::Anonymous)
        .or_fail("shared backing")?;
    let slot_size = total / u64::from(v.slots);
    let mut slots = Vec::new();
    for i in 0..v.slots {
        let off = u64::from(i) * slot_size;
        let mut r = region::<Shared<H>>(10 + i, MEM_GUEST_MEMFD, BASE + off, slot_size);
        r.userspace = UserAddr::Backing {
            mem: &shared,
            offset: off,
        };
        r.gmem = GmemRef::File(&gmem);
        r.gmem_offset = off;
        vm.set_user_memory_region(&r)
            .or_fail(format_args!("memslot {}", 10 + i))?;
        slots.push((BASE + off, slot_size, off));
    }
    Ok(Setup {
        vm,
        gmem,
        shared,
        slots,
    })
}

impl<H: Hypervisor> Setup<H> {
    /// The pieces `(offset, len)` of the backing behind `[gpa, gpa+size)`.
    fn pieces(&self, gpa: u64, size: u64) -> Check<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut covered = 0;
        for &(sgpa, ssize, soff) in &self.slots {
            let start = gpa.max(sgpa);
            let end = (gpa + size).min(sgpa + ssize);
            if start < end {
                out.push((soff + (start - sgpa), end - start));
                covered += end - start;
            }
        }
        ensure!(
            covered == size,
            "[{gpa:#x}, +{size:#x}) is not covered by guest_memfd memslots"
        );
        Ok(out)
    }

    /// `handle_exit_hypercall`.
    fn map_gpa_range(&self, hv: &H, gpa: u64, size: u64, attrs: u64) -> Check {
        let shared = attrs & MAP_SHARED != 0;
        if attrs & DO_FALLOCATE != 0 {
            let mode = FALLOC_FL_KEEP_SIZE | if shared { FALLOC_FL_PUNCH_HOLE } else { 0 };
            for (off, len) in self.pieces(gpa, size)? {
                hv.gmem_fallocate(&self.gmem, mode, off as i64, len as i64)
                    .or_fail(format_args!(
                        "fallocate(mode {mode:#x}, {off:#x}, {len:#x})"
                    ))?;
            }
        }
        if attrs & SET_ATTRIBUTES != 0 {
            let a = if shared {
                Attrs::SHARED
            } else {
                Attrs::PRIVATE
            };
            self.vm
                .set_memory_attributes(gpa, size, a.0, 0)
                .or_fail(format_args!(
                    "KVM_SET_MEMORY_ATTRIBUTES({gpa:#x}, {size:#x}, {:#x})",
                    a.0
                ))?;
        }
        Ok(())
    }

    /// A sync: check the shared backing, and rewrite it for shared syncs.
    fn sync(&self, check: SyncCheck) -> Check {
        let (gpa, size, cur, new) = match check {
            SyncCheck::Shared {
                gpa,
                size,
                cur,
                new,
            } => (gpa, size, cur, Some(new)),
            SyncCheck::Private { gpa, size, cur } => (gpa, size, cur, None),
        };
        for (off, len) in self.pieces(gpa, size)? {
            let mut buf = vec![0u8; len as usize];
            self.shared
                .read(off, &mut buf)
                .map_err(|e| fail(format!("host read of the shared backing: {e}")))?;
            if let Some(i) = buf.iter().position(|b| *b != cur) {
                return Err(fail(format!(
                    "{check:?}: shared backing at GPA {:#x} holds {:#04x}, expected {cur:#04x}",
                    gpa + i as u64,
                    buf[i]
                )));
            }
            if let Some(new) = new {
                self.shared
                    .fill(off, len, new)
                    .map_err(|e| fail(format!("host memset of the shared backing: {e}")))?;
            }
        }
        Ok(())
    }

    /// The host's side of one exit.
    fn on_exit<V: Vcpu>(&self, hv: &H, p: &Program, vcpu: &mut V, exit: Exit) -> Check<Next> {
        match exit {
            Exit::Hypercall(h) => {
                let (gpa, pages, attrs) =
                    map_args(&h).ok_or_else(|| unexpected(vcpu.index(), &exit))?;
                self.map_gpa_range(hv, gpa, pages * PG, attrs)?;
                vcpu.complete_hypercall(0).or_fail("complete_hypercall")?;
            }
            Exit::Report(GuestReport::Sync { tag }) => {
                let check = p
                    .syncs
                    .get(tag as usize)
                    .ok_or_else(|| unexpected(vcpu.index(), &exit))?;
                self.sync(*check)?;
            }
            other => return Err(unexpected(vcpu.index(), &other)),
        }
        Ok(Next::Continue)
    }
}

/// Runs one program per vCPU, each on its own thread.
fn run_guests<H: Hypervisor>(cx: &Ctx<'_, H>, st: &Setup<H>, programs: &[Program]) -> Check {
    let mut vcpus = Vec::new();
    for (i, p) in programs.iter().enumerate() {
        vcpus.push(vcpu_with(&st.vm, i as u32, &p.ops)?);
    }
    let dog = Watchdog::start(vcpus.iter().map(|v| v.kicker()).collect(), RUN_TIMEOUT);
    let results: Vec<Check> = std::thread::scope(|s| {
        let dog = &dog;
        let handles: Vec<_> = vcpus
            .into_iter()
            .zip(programs)
            .map(|(mut v, p)| {
                s.spawn(move || drive(&mut v, dog, |v, e| st.on_exit(cx.hv, p, v, e)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail("vcpu thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Builds each vCPU's program with `build(program, base)`.
fn programs(v: Variant, build: impl Fn(&mut Program, u64)) -> Vec<Program> {
    (0..u64::from(v.vcpus))
        .map(|i| {
            let mut p = Program::default();
            build(&mut p, BASE + i * PER_CPU_SIZE);
            p.ops.push(GuestOp::Halt);
            p
        })
        .collect()
}

/// Runs `build` in every variant.
fn run_case<H: Hypervisor>(cx: &Ctx<'_, H>, build: impl Fn(&mut Program, u64) + Copy) -> Check {
    for v in VARIANTS {
        let st = setup(cx, v)?;
        run_guests(cx, &st, &programs(v, build)).map_err(|e| with_variant(e, v))?;
    }
    Ok(())
}

fn with_variant(e: crate::ctx::Stop, v: Variant) -> crate::ctx::Stop {
    match e {
        crate::ctx::Stop::Fail(r) => fail(format!("-n {} -m {}: {r}", v.vcpus, v.slots)),
        skip => skip,
    }
}

/// C1: explicit conversions, no fallocate.
pub(crate) fn c1<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    run_case(cx, |p, base| explicit_conversion(p, base, false))
}

/// C2: explicit conversions, every conversion also fallocates.
pub(crate) fn c2<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    run_case(cx, |p, base| explicit_conversion(p, base, true))
}

/// C3: punch holes with the whole region faulted in.
pub(crate) fn c3<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    run_case(cx, |p, base| punch_hole_test(p, base, false))
}

/// C4: punch holes with only the target range faulted in.
pub(crate) fn c4<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    run_case(cx, |p, base| punch_hole_test(p, base, true))
}

/// C5: after the whole guest ran, free the VM; the guest_memfd keeps it
/// alive, so PUNCH_HOLE and allocate over the whole file still succeed.
pub(crate) fn c5<H: Hypervisor>(cx: &Ctx<'_, H>) -> Check {
    let v = VARIANTS[0];
    let st = setup(cx, v)?;
    let all = |p: &mut Program, base: u64| {
        explicit_conversion(p, base, false);
        explicit_conversion(p, base, true);
        punch_hole_test(p, base, false);
        punch_hole_test(p, base, true);
    };
    run_guests(cx, &st, &programs(v, all))?;
    let Setup {
        vm, gmem, shared, ..
    } = st;
    drop(shared);
    drop(vm);
    let size = gmem.size() as i64;
    cx.hv
        .gmem_fallocate(&gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)
        .or_fail("PUNCH_HOLE after the VM was freed")?;
    cx.hv
        .gmem_fallocate(&gmem, FALLOC_FL_KEEP_SIZE, 0, size)
        .or_fail("allocate after the VM was freed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_core::Gpa;

    #[test]
    fn conversion_program_touches_only_its_region() {
        let mut p = Program::default();
        explicit_conversion(&mut p, BASE, true);
        punch_hole_test(&mut p, BASE, true);
        for op in &p.ops {
            let (gpa, len) = match *op {
                GuestOp::Write { gpa, len, .. } | GuestOp::Read { gpa, len, .. } => (gpa, len),
                GuestOp::Map { gpa, pages, .. } => (Gpa(gpa), pages * PG),
                _ => continue,
            };
            assert!(
                gpa.raw() >= BASE && gpa.raw() + len <= BASE + DATA_SIZE,
                "{op:?}"
            );
        }
    }
}
