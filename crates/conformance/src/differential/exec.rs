//! Executes a [`Sequence`] on one backend and records one [`Res`] per step.
//!
//! Both backends see exactly the same calls. Where privmem's own wrappers
//! (not the kernel) would refuse an argument differently on the two
//! backends, the step is not applicable on both (a shared backing that is
//! too small for the slot). Guest accesses to a memslot whose
//! `userspace_addr` is a raw value are dropped from `Run` steps (except on
//! default VMs' guest_memfd slots): with nothing mapped there the outcome
//! depends on the host MMU (MMIO under PVM, a bare EFAULT with TDP), not on
//! the kernel's rules. Nor is an attribute set of more than 1 GiB that
//! changes anything run: the kernel's per-page storage makes its outcome a
//! matter of the host's memory.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use privmem_core::attrmap::AttrMap;
use privmem_core::backend::{
    GmemRef, HostMemory, Region, RegionApi, SharedKind, UserAddr, MEM_GUEST_MEMFD,
};
use privmem_core::{
    Access, BackendError, Exit, GmemFlags, Gpa, GuestMemfd, GuestOp, GuestReport, HostFault,
    Hypervisor,
};
use privmem_core::{GpaRange, RunError, Vcpu, Vm, VmType};

use super::ops::{GmemSel, GuestSpec, Op, RegionOp, Sequence, Target, UserSel, VmSel};
use crate::ctx::Shared;
use crate::guest::{map_args, Watchdog};

/// Size of each sequence's shared backing.
const SHARED_SIZE: u64 = 8 << 20;
/// Most exits one `Run` step records.
const MAX_EXITS: usize = 32;
/// How long a `Run` step may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// What a guest `map` whose exit is left uncompleted expects: no kernel
/// gives it (not 0, a completion value, -1000 or -22), so the guest always
/// reports the RAX it got.
const UNCOMPLETED: i64 = 0x5eed_0bad;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const PRIVATE: u64 = 1 << 3;
/// Largest attribute set a step makes that changes anything: 1 GiB (the
/// kernel's per-page xarray needs ~10 bytes per 4 KiB page, ~2.5 MiB for
/// 1 GiB).
const MAX_ATTR_SET: u64 = 1 << 30;

/// What one step produced.
#[derive(Clone, PartialEq, Eq)]
pub enum Res {
    /// Success.
    Ok,
    /// Success with a value (a capability).
    Value(u64),
    /// `fstat`: size, mode, block size.
    Stat(u64, u32, u64),
    /// Bytes read, run-length encoded as (byte, count).
    Bytes(Vec<(u8, u64)>),
    /// The call failed with an errno.
    Err(i32),
    /// privmem refused the arguments before reaching the kernel.
    Refused,
    /// The backend does not support the call.
    Unsupported,
    /// A host access faulted: where, and with which signal.
    HostFault(HostFault),
    /// Nothing to operate on (no such file or mapping yet).
    NotApplicable,
    /// A guest run: its exits, in order.
    Exits(Vec<ExitSum>),
}

impl fmt::Debug for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Res::Ok => f.write_str("ok"),
            Res::Value(v) => write!(f, "ok({v:#x})"),
            Res::Stat(size, mode, blk) => {
                write!(f, "stat(size {size:#x}, mode {mode:#o}, blksize {blk})")
            }
            Res::Bytes(runs) => {
                let parts: Vec<String> =
                    runs.iter().map(|(b, n)| format!("{b:#04x}x{n}")).collect();
                write!(f, "bytes[{}]", parts.join(" "))
            }
            Res::Err(e) => write!(f, "{}", privmem_core::Errno(*e)),
            Res::Refused => f.write_str("refused by privmem"),
            Res::Unsupported => f.write_str("unsupported"),
            Res::HostFault(h) => write!(f, "{} at {:#x}", h.signal, h.offset),
            Res::NotApplicable => f.write_str("n/a"),
            Res::Exits(e) => write!(f, "{e:x?}"),
        }
    }
}

/// A guest exit, reduced to what both backends must agree on. MMIO exits
/// keep only the page and direction: how a guest instruction splits an
/// access is the CPU's business, not the kernel's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitSum {
    /// `KVM_EXIT_MEMORY_FAULT`.
    Fault {
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// Private flag.
        private: bool,
        /// errno.
        errno: i32,
    },
    /// `KVM_EXIT_MMIO` on this page.
    Mmio {
        /// Page.
        page: u64,
        /// Write.
        write: bool,
    },
    /// `KVM_EXIT_HYPERCALL` (`KVM_HC_MAP_GPA_RANGE`).
    Hypercall {
        /// a0.
        gpa: u64,
        /// a1.
        pages: u64,
        /// a2.
        attrs: u64,
    },
    /// A read passed.
    CheckPassed,
    /// A `map` returned something else than the host completed it with:
    /// what the guest got in RAX (the guest stops there).
    Ret {
        /// a0.
        gpa: u64,
        /// RAX.
        ret: i64,
    },
    /// A read saw a wrong byte.
    CheckFailed {
        /// Where.
        gpa: u64,
        /// Seen.
        seen: u8,
        /// Expected.
        expected: u8,
    },
    /// `KVM_EXIT_HLT`.
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`.
    Shutdown,
    /// Any other exit.
    Other(u32),
    /// `KVM_RUN` failed without a decodable exit (errno, or 0 if unknown).
    RunFailed(i32),
    /// The guest did not stop within the step's timeout.
    Timeout,
}

fn res_err(e: &BackendError) -> Res {
    match e {
        BackendError::Os { errno, .. } => Res::Err(errno.0),
        BackendError::Unsupported { .. } => Res::Unsupported,
        BackendError::Invalid { .. } => Res::Refused,
    }
}

fn res_of<T>(r: Result<T, BackendError>) -> Res {
    r.map_or_else(|e| res_err(&e), |_| Res::Ok)
}

fn rle(buf: &[u8]) -> Vec<(u8, u64)> {
    let mut out: Vec<(u8, u64)> = Vec::new();
    for &b in buf {
        match out.last_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// The range and target of a `KVM_SET_MEMORY_ATTRIBUTES` the kernel
/// accepts on a VM with private memory (flags 0, attributes 0 or PRIVATE, a
/// nonempty page-aligned range that does not wrap), else `None`.
fn attr_set(addr: u64, size: u64, attrs: u64, flags: u64) -> Option<(GpaRange, bool)> {
    if flags != 0 || (attrs != 0 && attrs != PRIVATE) {
        return None;
    }
    let range = GpaRange::new_pages(Gpa(addr), size).ok()?;
    Some((range, attrs == PRIVATE))
}

/// A live memslot, as far as `Run` steps need to know.
#[derive(Clone, Copy, Debug)]
struct ShadowSlot {
    gpa: u64,
    size: u64,
    raw_hva: bool,
    gmem: bool,
}

/// One backend's state while a sequence runs.
struct World<'h, H: Hypervisor> {
    hv: &'h H,
    vm_type: VmType,
    vm: H::Vm,
    other: H::Vm,
    gmems: Vec<Option<GuestMemfd>>,
    maps: Vec<Option<H::Mapping>>,
    shared: Shared<H>,
    memfd: OwnedFd,
    slots: BTreeMap<u32, ShadowSlot>,
    /// The main VM's private pages after the successful attribute sets so
    /// far (identical on both backends up to the first difference).
    attrs: AttrMap,
    next_vcpu: u32,
}

impl<'h, H: Hypervisor> World<'h, H> {
    fn new(hv: &'h H, vm_type: VmType) -> Result<Self, String> {
        let vm = hv
            .create_vm(vm_type)
            .map_err(|e| format!("{}: create_vm: {e}", hv.name()))?;
        let other = hv
            .create_vm(vm_type)
            .map_err(|e| format!("{}: create_vm: {e}", hv.name()))?;
        let shared = vm
            .create_shared(SHARED_SIZE, SharedKind::Anonymous)
            .map_err(|e| format!("{}: create_shared: {e}", hv.name()))?;
        let memfd =
            rustix::fs::memfd_create("privmem-differential", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| format!("memfd_create: {e}"))?;
        Ok(World {
            hv,
            vm_type,
            vm,
            other,
            gmems: Vec::new(),
            maps: Vec::new(),
            shared,
            memfd,
            slots: BTreeMap::new(),
            attrs: AttrMap::new(),
            next_vcpu: 0,
        })
    }

    fn gmem(&self, i: usize) -> Option<&GuestMemfd> {
        let n = self.gmems.len();
        (n > 0).then(|| self.gmems[i % n].as_ref()).flatten()
    }

    fn map(&self, i: usize) -> Option<&H::Mapping> {
        let n = self.maps.len();
        (n > 0).then(|| self.maps[i % n].as_ref()).flatten()
    }

    fn step(&mut self, op: &Op) -> Res {
        match op {
            Op::CreateGmem { vm, size, flags } => self.create_gmem(*vm, *size, *flags),
            Op::CloseGmem { gmem } => {
                let n = self.gmems.len();
                match (n > 0).then(|| self.gmems[gmem % n].take()).flatten() {
                    Some(_) => Res::Ok,
                    None => Res::NotApplicable,
                }
            }
            Op::Fallocate {
                gmem,
                mode,
                offset,
                len,
            } => self.gmem(*gmem).map_or(Res::NotApplicable, |g| {
                res_of(self.hv.gmem_fallocate(g, *mode, *offset, *len))
            }),
            Op::Stat { gmem } => {
                self.gmem(*gmem)
                    .map_or(Res::NotApplicable, |g| match self.hv.gmem_stat(g) {
                        Ok(st) => Res::Stat(st.size, st.mode, st.blksize),
                        Err(e) => res_err(&e),
                    })
            }
            Op::FileIo { gmem, io } => self
                .gmem(*gmem)
                .map_or(Res::NotApplicable, |g| res_of(self.hv.gmem_file_io(g, *io))),
            Op::Truncate { gmem, len } => self.gmem(*gmem).map_or(Res::NotApplicable, |g| {
                res_of(self.hv.gmem_truncate(g, *len))
            }),
            Op::Mmap { gmem, len, shared } => self.mmap(*gmem, *len, *shared),
            Op::Unmap { map } => {
                let n = self.maps.len();
                match (n > 0).then(|| self.maps[map % n].take()).flatten() {
                    Some(_) => Res::Ok,
                    None => Res::NotApplicable,
                }
            }
            Op::HostRead { map, offset, len } => self.host_read(*map, *offset, *len),
            Op::HostWrite {
                map,
                offset,
                len,
                byte,
            } => self.map(*map).map_or(Res::NotApplicable, |m| {
                m.fill(*offset, *len, *byte)
                    .map_or_else(Res::HostFault, |()| Res::Ok)
            }),
            Op::SharedRead { offset, len } => {
                let mut buf = vec![0u8; *len as usize];
                match self.shared.read(*offset, &mut buf) {
                    Ok(()) => Res::Bytes(rle(&buf)),
                    Err(f) => Res::HostFault(f),
                }
            }
            Op::SetRegion(r) => self.set_region(r),
            Op::SetAttributes {
                addr,
                size,
                attrs,
                flags,
            } => {
                let set = attr_set(*addr, *size, *attrs, *flags);
                if set.is_some_and(|(r, p)| self.attribute_set_needs_host_memory(r, p)) {
                    return Res::NotApplicable;
                }
                let res = res_of(self.vm.set_memory_attributes(*addr, *size, *attrs, *flags));
                if let (Res::Ok, Some((range, private))) = (&res, set) {
                    self.attrs.set(range, private);
                }
                res
            }
            Op::EnableExitHypercall { mask } => res_of(self.vm.enable_exit_hypercall(*mask)),
            Op::CheckExtension { cap } => self
                .vm
                .check_extension(*cap)
                .map_or_else(|e| res_err(&e), Res::Value),
            Op::Run { ops } => self.run(ops),
        }
    }

    /// True for a valid `KVM_SET_MEMORY_ATTRIBUTES` of more than
    /// [`MAX_ATTR_SET`] bytes on a VM with private memory that changes any
    /// page. Unless the whole range already has the attributes
    /// (`kvm_range_has_memory_attributes`), the kernel `xa_reserve`s every
    /// gfn before storing (~10 bytes of kernel memory each, shared sets
    /// included), so such a call ends in ENOMEM or the OOM killer depending
    /// on the machine's memory (a private set panicked the rig's 4 GiB
    /// kernel; a shared set over 2^40 bytes with one private page grew its
    /// slab by 20 MB/s until the OOM killer ended privmem); the model's range
    /// map does not care. Its outcome is the host's, not the kernel rules',
    /// so neither backend runs it.
    fn attribute_set_needs_host_memory(&self, range: GpaRange, private: bool) -> bool {
        self.vm_type.has_private_mem()
            && range.len() > MAX_ATTR_SET
            && !self.attrs.is_uniform(range, private)
    }

    fn create_gmem(&mut self, vm: VmSel, size: u64, flags: u64) -> Res {
        let vm = match vm {
            VmSel::Main => &self.vm,
            VmSel::Other => &self.other,
        };
        match vm.create_guest_memfd(size, GmemFlags(flags)) {
            Ok(g) => {
                self.gmems.push(Some(g));
                Res::Ok
            }
            Err(e) => res_err(&e),
        }
    }

    fn mmap(&mut self, gmem: usize, len: u64, shared: bool) -> Res {
        let Some(g) = self.gmem(gmem) else {
            return Res::NotApplicable;
        };
        match self.hv.gmem_mmap(g, len, shared) {
            Ok(m) => {
                self.maps.push(Some(m));
                Res::Ok
            }
            Err(e) => res_err(&e),
        }
    }

    fn host_read(&self, map: usize, offset: u64, len: u64) -> Res {
        let Some(m) = self.map(map) else {
            return Res::NotApplicable;
        };
        let mut buf = vec![0u8; len as usize];
        match m.read(offset, &mut buf) {
            Ok(()) => Res::Bytes(rle(&buf)),
            Err(f) => Res::HostFault(f),
        }
    }

    fn set_region(&mut self, r: &RegionOp) -> Res {
        let userspace = match r.user {
            UserSel::Raw(v) => UserAddr::Raw(v),
            UserSel::Backing(off) => {
                if off.checked_add(r.size).is_none_or(|end| end > SHARED_SIZE) {
                    return Res::NotApplicable;
                }
                UserAddr::Backing {
                    mem: &self.shared,
                    offset: off,
                }
            }
        };
        let gmem = match r.gmem {
            // Ignored by the kernel without KVM_MEM_GUEST_MEMFD.
            _ if r.flags & MEM_GUEST_MEMFD == 0 => GmemRef::Raw(-1),
            // No such file (none created yet, or closed): the kernel gets
            // fd -1, as a VMM passing a stale handle would send.
            GmemSel::File(i) => self.gmem(i).map_or(GmemRef::Raw(-1), GmemRef::File),
            GmemSel::Memfd => GmemRef::Fd(self.memfd.as_fd()),
            GmemSel::Raw(fd) => GmemRef::Raw(fd),
        };
        let region = Region {
            api: if r.v1 { RegionApi::V1 } else { RegionApi::V2 },
            slot: r.slot,
            flags: r.flags,
            gpa: r.gpa,
            size: r.size,
            userspace,
            gmem,
            gmem_offset: r.gmem_offset,
        };
        let res = res_of(self.vm.set_user_memory_region(&region));
        if res == Res::Ok {
            self.shadow_region(r);
        }
        res
    }

    fn shadow_region(&mut self, r: &RegionOp) {
        if r.size == 0 {
            self.slots.remove(&r.slot);
            return;
        }
        let slot = ShadowSlot {
            gpa: r.gpa,
            size: r.size,
            raw_hva: matches!(r.user, UserSel::Raw(_)),
            gmem: r.flags & MEM_GUEST_MEMFD != 0,
        };
        self.slots.insert(r.slot, slot);
    }

    /// False for accesses whose outcome depends on the host MMU (see the
    /// module docs).
    fn host_independent(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        !self.slots.values().any(|s| {
            let hit = gpa < s.gpa.saturating_add(s.size) && s.gpa < end;
            hit && s.raw_hva && !(s.gmem && self.vm_type == VmType::Default)
        })
    }

    /// The GPA a guest access targets.
    fn resolve(&self, at: Target) -> u64 {
        match at {
            Target::Gpa(gpa) => gpa,
            Target::Slot(n, off) => {
                let live: Vec<&ShadowSlot> = self.slots.values().collect();
                match live.get(n % live.len().max(1)) {
                    Some(s) => s.gpa + off % s.size,
                    None => off,
                }
            }
        }
    }

    /// The guest program of a `Run` step: its accesses in order, then its
    /// `map`s (a `map` changes no kernel state, and a guest that gets an
    /// unexpected RAX stops; last, it cannot hide the accesses), then `hlt`.
    fn guest_ops(&self, specs: &[GuestSpec]) -> Vec<GuestOp> {
        let access = |p: bool| if p { Access::Private } else { Access::Shared };
        let maps_last = specs
            .iter()
            .filter(|s| !matches!(s, GuestSpec::Map { .. }))
            .chain(specs.iter().filter(|s| matches!(s, GuestSpec::Map { .. })));
        let mut ops: Vec<GuestOp> = maps_last
            .filter_map(|s| match *s {
                GuestSpec::Write {
                    at,
                    len,
                    byte,
                    private,
                } => {
                    let gpa = self.resolve(at);
                    self.host_independent(gpa, len).then_some(GuestOp::Write {
                        gpa: Gpa(gpa),
                        len,
                        byte,
                        access: access(private),
                    })
                }
                GuestSpec::Read {
                    at,
                    len,
                    expect,
                    private,
                } => {
                    let gpa = self.resolve(at);
                    self.host_independent(gpa, len).then_some(GuestOp::Read {
                        gpa: Gpa(gpa),
                        len,
                        expect,
                        access: access(private),
                    })
                }
                GuestSpec::Map {
                    gpa,
                    pages,
                    attrs,
                    complete,
                } => Some(GuestOp::Map {
                    gpa,
                    pages,
                    attrs,
                    expect_ret: Some(complete.unwrap_or(UNCOMPLETED)),
                }),
            })
            .collect();
        ops.push(GuestOp::Halt);
        ops
    }

    fn run(&mut self, specs: &[GuestSpec]) -> Res {
        let ops = self.guest_ops(specs);
        let index = self.next_vcpu;
        self.next_vcpu += 1;
        let mut vcpu = match self.vm.create_vcpu(index) {
            Ok(v) => v,
            Err(e) => return res_err(&e),
        };
        if let Err(e) = vcpu.load_program(&ops) {
            return res_err(&e);
        }
        let completions = specs
            .iter()
            .filter_map(|s| match *s {
                GuestSpec::Map { complete, .. } => Some(complete),
                _ => None,
            })
            .collect();
        let dog = Watchdog::start(vec![vcpu.kicker()], RUN_TIMEOUT);
        Res::Exits(collect_exits(&mut vcpu, &dog, completions))
    }
}

/// Runs until a stopping exit, completing the n-th hypercall exit as the
/// n-th `map` says (`None`: not at all).
fn collect_exits<V: Vcpu>(
    vcpu: &mut V,
    dog: &Watchdog,
    mut completions: VecDeque<Option<i64>>,
) -> Vec<ExitSum> {
    let mut out = Vec::new();
    while out.len() < MAX_EXITS {
        let (sum, stop) = match vcpu.run() {
            Ok(exit) => summarize(&exit),
            Err(RunError::Interrupted | RunError::Again) if dog.expired() => {
                (ExitSum::Timeout, true)
            }
            Err(RunError::Interrupted | RunError::Again) => continue,
            Err(RunError::Decode(privmem_core::exit::DecodeError::RunFailed { errno })) => {
                (ExitSum::RunFailed(errno), true)
            }
            Err(_) => (ExitSum::RunFailed(0), true),
        };
        out.push(sum);
        if stop {
            break;
        }
        if matches!(sum, ExitSum::Hypercall { .. }) {
            let complete = completions.pop_front().flatten();
            if complete.is_some_and(|ret| vcpu.complete_hypercall(ret).is_err()) {
                break;
            }
        }
    }
    out
}

/// The summary of an exit, and whether the run stops there.
fn summarize(exit: &Exit) -> (ExitSum, bool) {
    match *exit {
        Exit::MemoryFault(f) => (
            ExitSum::Fault {
                gpa: f.gpa.raw(),
                size: f.size,
                private: f.private,
                errno: f.errno.errno(),
            },
            true,
        ),
        Exit::Mmio(m) => (
            ExitSum::Mmio {
                page: m.gpa.page_base().raw(),
                write: m.write,
            },
            true,
        ),
        Exit::Hypercall(h) => match map_args(&h) {
            Some((gpa, pages, attrs)) => (ExitSum::Hypercall { gpa, pages, attrs }, false),
            None => (ExitSum::Other(3), true),
        },
        Exit::Report(GuestReport::CheckPassed) => (ExitSum::CheckPassed, false),
        Exit::Report(GuestReport::CheckFailed {
            gpa,
            seen,
            expected,
        }) => (
            ExitSum::CheckFailed {
                gpa: gpa.raw(),
                seen,
                expected,
            },
            true,
        ),
        Exit::Hlt => (ExitSum::Hlt, true),
        Exit::Shutdown => (ExitSum::Shutdown, true),
        Exit::InternalError { .. } => (ExitSum::Other(17), true),
        Exit::Io(_) => (ExitSum::Other(2), true),
        Exit::Report(GuestReport::RetMismatch { gpa, ret, .. }) => (
            ExitSum::Ret {
                gpa: gpa.raw(),
                ret,
            },
            true,
        ),
        Exit::Report(_) => (ExitSum::Other(2), true),
        Exit::Unknown(r) => (ExitSum::Other(r), true),
    }
}

/// One backend's results for a sequence.
pub(crate) struct Executed {
    /// One result per step.
    pub(crate) res: Vec<Res>,
    /// Per step: the backend answered with privmem's own emulation
    /// ([`Hypervisor::emulations`]), not the kernel.
    pub(crate) emulated: Vec<bool>,
}

/// Runs `seq` on `hv`: one result per step, and whether privmem emulated it.
pub(crate) fn execute<H: Hypervisor>(hv: &H, seq: &Sequence) -> Result<Executed, String> {
    let mut world = World::new(hv, seq.vm_type)?;
    let mut out = Executed {
        res: Vec::with_capacity(seq.ops.len()),
        emulated: Vec::with_capacity(seq.ops.len()),
    };
    for op in &seq.ops {
        let before = hv.emulations();
        out.res.push(world.step(op));
        out.emulated.push(!hv.emulations().since(before).is_empty());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_groups_runs() {
        assert_eq!(rle(&[0, 0, 0xaa, 0, 0]), vec![(0, 2), (0xaa, 1), (0, 2)]);
        assert!(rle(&[]).is_empty());
    }

    #[test]
    fn mmio_summary_keeps_only_page_and_direction() {
        let exit = Exit::Mmio(privmem_core::MmioExit {
            gpa: Gpa(0x1234),
            len: 1,
            write: true,
        });
        assert_eq!(
            summarize(&exit),
            (
                ExitSum::Mmio {
                    page: 0x1000,
                    write: true
                },
                true
            )
        );
    }
}
