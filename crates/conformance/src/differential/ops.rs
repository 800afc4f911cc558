//! The operations a differential sequence is made of, and the proptest
//! strategies that generate them: mostly edge values (zero, unaligned,
//! wrapping, beyond the end) mixed with good ones so that later steps have
//! files, mappings and memslots to work on.

use std::fmt;

use privmem_core::backend::{
    FileIo, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
};
use privmem_core::backend::{MEM_GUEST_MEMFD, MEM_LOG_DIRTY_PAGES, MEM_READONLY};
use privmem_core::{Cap, VmType};
use proptest::prelude::*;
use proptest::sample::select;

const PG: u64 = 4096;
const M2: u64 = 2 << 20;
/// A page-aligned value whose end wraps the address space.
const TOP: u64 = !0xfff;

/// Which of the sequence's two VMs an operation targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmSel {
    /// The VM under test.
    Main,
    /// A second VM of the same type (for "another VM's guest_memfd").
    Other,
}

/// `userspace_addr` of a memslot request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserSel {
    /// A raw value: 0 (NULL, accepted) or an unaligned one (EINVAL).
    Raw(u64),
    /// Offset into the sequence's 8 MiB shared backing.
    Backing(u64),
}

/// `guest_memfd` of a memslot request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmemSel {
    /// The n-th guest_memfd created so far (modulo the count).
    File(usize),
    /// A memfd: an open file that is not a guest_memfd.
    Memfd,
    /// A raw fd number (-1, or one that is not open).
    Raw(i32),
}

/// `KVM_SET_USER_MEMORY_REGION{,2}` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionOp {
    /// v1 ioctl instead of v2.
    pub v1: bool,
    /// Raw slot (address space in bits 31:16).
    pub slot: u32,
    /// Raw flags.
    pub flags: u32,
    /// `guest_phys_addr`.
    pub gpa: u64,
    /// `memory_size` (0 deletes).
    pub size: u64,
    /// `userspace_addr`.
    pub user: UserSel,
    /// `guest_memfd`.
    pub gmem: GmemSel,
    /// `guest_memfd_offset`.
    pub gmem_offset: u64,
}

/// Where a guest access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `offset` bytes into the n-th live memslot (modulo the count, by slot
    /// id; modulo its size), or GPA `offset` when there is none.
    Slot(usize, u64),
    /// An absolute GPA.
    Gpa(u64),
}

/// One guest operation of a `Run` step (a `halt` is appended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSpec {
    /// Write `byte` over `[at, at+len)`.
    Write {
        /// Start.
        at: Target,
        /// Length.
        len: u64,
        /// Fill byte.
        byte: u8,
        /// Private intent (ignored by default and SW_PROTECTED VMs).
        private: bool,
    },
    /// Read `[at, at+len)` expecting `expect`.
    Read {
        /// Start.
        at: Target,
        /// Length.
        len: u64,
        /// Expected byte.
        expect: u8,
        /// Private intent.
        private: bool,
    },
    /// `KVM_HC_MAP_GPA_RANGE(gpa, pages, attrs)`. The RAX the guest gets
    /// is compared: if the call exits, the host completes it with
    /// `complete` (or leaves it uncompleted: `None`, and the guest gets
    /// what the kernel leaves in `kvm_run.hypercall.ret`); a guest that
    /// gets anything but `complete` reports its RAX and stops.
    Map {
        /// a0.
        gpa: u64,
        /// a1.
        pages: u64,
        /// a2.
        attrs: u64,
        /// What the host writes to `hypercall.ret` (never -1000 or -22, the
        /// kernel's synchronous errors, so each exit pairs with its op).
        complete: Option<i64>,
    },
}

/// Values a `Run` step completes hypercall exits with: none is one of the
/// kernel's synchronous errors (-1000, -22), so a guest that got one of
/// those reports it, and the n-th exit always belongs to the n-th `map`.
pub const COMPLETIONS: [i64; 4] = [0, 1, -5, 0x7e57];

/// One step of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `KVM_CREATE_GUEST_MEMFD(size, flags)` on a VM.
    CreateGmem {
        /// Which VM.
        vm: VmSel,
        /// Size.
        size: u64,
        /// Flags.
        flags: u64,
    },
    /// Close a guest_memfd's fd (mappings keep the file).
    CloseGmem {
        /// Which file.
        gmem: usize,
    },
    /// `fallocate`.
    Fallocate {
        /// Which file.
        gmem: usize,
        /// Mode.
        mode: i32,
        /// Offset.
        offset: i64,
        /// Length.
        len: i64,
    },
    /// `fstat` (size, mode and block size are compared; inode numbers not).
    Stat {
        /// Which file.
        gmem: usize,
    },
    /// `read`/`write`/`pread`/`pwrite`/`lseek`.
    FileIo {
        /// Which file.
        gmem: usize,
        /// Which call.
        io: FileIo,
    },
    /// `ftruncate`.
    Truncate {
        /// Which file.
        gmem: usize,
        /// New length.
        len: u64,
    },
    /// `mmap` of a guest_memfd.
    Mmap {
        /// Which file.
        gmem: usize,
        /// Length.
        len: u64,
        /// `MAP_SHARED` (else `MAP_PRIVATE`).
        shared: bool,
    },
    /// `munmap`.
    Unmap {
        /// Which mapping.
        map: usize,
    },
    /// Host read through a mapping.
    HostRead {
        /// Which mapping.
        map: usize,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Host write through a mapping.
    HostWrite {
        /// Which mapping.
        map: usize,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Byte.
        byte: u8,
    },
    /// Host read of the sequence's shared backing (what `userspace_addr`
    /// slots see).
    SharedRead {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A memslot request.
    SetRegion(RegionOp),
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    SetAttributes {
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
        /// Attributes.
        attrs: u64,
        /// Flags.
        flags: u64,
    },
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, mask)`.
    EnableExitHypercall {
        /// The mask.
        mask: u64,
    },
    /// VM-scope `KVM_CHECK_EXTENSION`.
    CheckExtension {
        /// The capability.
        cap: Cap,
    },
    /// Run a small guest on a new vCPU until it halts, faults or exits to
    /// MMIO; hypercalls are completed as each `map` says.
    Run {
        /// Its operations.
        ops: Vec<GuestSpec>,
    },
}

impl Op {
    /// The operation's kind: its variant name (`SetRegion`, `Run`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateGmem { .. } => "CreateGmem",
            Op::CloseGmem { .. } => "CloseGmem",
            Op::Fallocate { .. } => "Fallocate",
            Op::Stat { .. } => "Stat",
            Op::FileIo { .. } => "FileIo",
            Op::Truncate { .. } => "Truncate",
            Op::Mmap { .. } => "Mmap",
            Op::Unmap { .. } => "Unmap",
            Op::HostRead { .. } => "HostRead",
            Op::HostWrite { .. } => "HostWrite",
            Op::SharedRead { .. } => "SharedRead",
            Op::SetRegion(_) => "SetRegion",
            Op::SetAttributes { .. } => "SetAttributes",
            Op::EnableExitHypercall { .. } => "EnableExitHypercall",
            Op::CheckExtension { .. } => "CheckExtension",
            Op::Run { .. } => "Run",
        }
    }
}

/// A generated sequence: the VM type, then the steps.
#[derive(Clone, PartialEq, Eq)]
pub struct Sequence {
    /// The type of both VMs.
    pub vm_type: VmType,
    /// The steps.
    pub ops: Vec<Op>,
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vm type {}", self.vm_type.name())?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i:2}: {op:x?}")?;
        }
        Ok(())
    }
}

/// Capabilities compared at VM scope. `KVM_CAP_VM_TYPES` is left out (the
/// model adds its own `coco` type), as is `KVM_CAP_PRE_FAULT_MEMORY`, which
/// depends on the host MMU (TDP) rather than on the kernel version.
pub const COMPARED_CAPS: [Cap; 9] = [
    Cap::UserMemory2,
    Cap::MemoryFaultInfo,
    Cap::MemoryAttributes,
    Cap::GuestMemfd,
    Cap::GuestMemfdFlags,
    Cap::ExitHypercall,
    Cap::NrMemslots,
    Cap::ReadonlyMem,
    Cap::MultiAddressSpace,
];

fn idx() -> impl Strategy<Value = usize> {
    0usize..8
}

fn gmem_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => select(vec![PG, 2 * PG, 4 * PG, M2, 2 * M2, 4 * M2]),
        1 => select(vec![0, 1, PG - 1, PG + 1, 1 << 62, TOP, 1 << 63]),
    ]
}

fn gmem_flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => select(vec![0u64, 1, 3]),
        1 => select(vec![2u64, 4, 1 << 63]),
    ]
}

fn fallocate() -> impl Strategy<Value = Op> {
    let keep = FALLOC_FL_KEEP_SIZE;
    let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    let mode = prop_oneof![
        4 => select(vec![keep, punch]),
        1 => select(vec![0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE | keep, 0x08, 0x20 | keep, 0x40]),
    ];
    let pg = PG as i64;
    let offset = prop_oneof![
        4 => select(vec![0, pg, 3 * pg, M2 as i64 - pg]),
        1 => select(vec![1, -pg, 4 * M2 as i64, 1 << 62, i64::MAX - pg + 1]),
    ];
    let len = prop_oneof![
        4 => select(vec![pg, 2 * pg, M2 as i64]),
        1 => select(vec![0, 1, -1, pg - 1, i64::MAX]),
    ];
    (idx(), mode, offset, len).prop_map(|(gmem, mode, offset, len)| Op::Fallocate {
        gmem,
        mode,
        offset,
        len,
    })
}

fn file_ops() -> impl Strategy<Value = Op> {
    let io = select(vec![
        FileIo::Read,
        FileIo::Write,
        FileIo::Pread,
        FileIo::Pwrite,
        FileIo::Lseek,
    ]);
    prop_oneof![
        idx().prop_map(|gmem| Op::CloseGmem { gmem }),
        idx().prop_map(|gmem| Op::Stat { gmem }),
        (idx(), io).prop_map(|(gmem, io)| Op::FileIo { gmem, io }),
        (idx(), select(vec![0, PG, 8 * PG])).prop_map(|(gmem, len)| Op::Truncate { gmem, len }),
    ]
}

fn mapping_ops() -> impl Strategy<Value = Op> {
    let len = select(vec![0, PG, 4 * PG, 16 * PG, M2]);
    let off = select(vec![0, PG - 4, PG, 3 * PG, 4 * PG, M2 - PG]);
    let n = select(vec![1, 8, PG, 2 * PG]);
    prop_oneof![
        3 => (idx(), len, prop::bool::weighted(0.85))
            .prop_map(|(gmem, len, shared)| Op::Mmap { gmem, len, shared }),
        1 => idx().prop_map(|map| Op::Unmap { map }),
        2 => (idx(), off.clone(), n.clone()).prop_map(|(map, offset, len)| Op::HostRead { map, offset, len }),
        2 => (idx(), off.clone(), n.clone(), select(vec![0x11u8, 0xa5]))
            .prop_map(|(map, offset, len, byte)| Op::HostWrite { map, offset, len, byte }),
        1 => (off, n).prop_map(|(offset, len)| Op::SharedRead { offset, len }),
    ]
}

/// GPAs slots and guest accesses use: a few good places and edge values.
fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => select(vec![0, PG, M2, 2 * M2, 0xc000_0000, 1 << 32, (1 << 32) + M2]),
        1 => select(vec![1, 0x800, TOP, 1 << 52]),
    ]
}

fn region() -> impl Strategy<Value = Op> {
    let slot = prop_oneof![
        6 => select(vec![0u32, 1, 2, 10, 11]),
        1 => select(vec![32763u32, 32764, 0x1_0001, u32::MAX]),
    ];
    let flags = prop_oneof![
        6 => select(vec![0, MEM_GUEST_MEMFD]),
        1 => select(vec![
            MEM_LOG_DIRTY_PAGES,
            MEM_READONLY,
            MEM_GUEST_MEMFD | MEM_LOG_DIRTY_PAGES,
            MEM_GUEST_MEMFD | MEM_READONLY,
            1 << 3,
            1 << 16,
        ]),
    ];
    let size = prop_oneof![
        3 => select(vec![0u64]),
        6 => select(vec![PG, 2 * PG, M2, 2 * M2]),
        1 => select(vec![1, PG - 1, 1 << 50, TOP]),
    ];
    let user = prop_oneof![
        6 => select(vec![0, PG, M2]).prop_map(UserSel::Backing),
        2 => Just(UserSel::Raw(0)),
        1 => select(vec![1, 0x800]).prop_map(UserSel::Raw),
        1 => Just(UserSel::Backing(0x800)),
    ];
    let gmem = prop_oneof![
        8 => idx().prop_map(GmemSel::File),
        1 => Just(GmemSel::Memfd),
        1 => select(vec![-1, 9999]).prop_map(GmemSel::Raw),
    ];
    let offset = prop_oneof![
        6 => select(vec![0, PG, M2]),
        1 => select(vec![1, 0x800, TOP, 1 << 62]),
    ];
    (
        prop::bool::weighted(0.15),
        slot,
        flags,
        gpa(),
        size,
        user,
        gmem,
        offset,
    )
        .prop_map(|(v1, slot, flags, gpa, size, user, gmem, gmem_offset)| {
            Op::SetRegion(RegionOp {
                v1,
                slot,
                flags,
                gpa,
                size,
                user,
                gmem,
                gmem_offset,
            })
        })
}

fn attributes() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        4 => select(vec![PG, 2 * PG, M2]),
        1 => select(vec![0, 1, TOP]),
    ];
    let attrs = prop_oneof![4 => select(vec![0u64, 8]), 1 => select(vec![1u64, 0x10, 1 << 63])];
    let flags = prop_oneof![9 => Just(0u64), 1 => Just(1u64)];
    (gpa(), size, attrs, flags).prop_map(|(addr, size, attrs, flags)| Op::SetAttributes {
        addr,
        size,
        attrs,
        flags,
    })
}

/// A guest access target: mostly inside a live memslot, sometimes at a
/// fixed GPA (only physically addressable ones: the KVM backend's guest
/// needs page tables for what it touches). Always 8-byte aligned: a single
/// guest load that straddles a page is split differently by a CPU and by
/// the model's interpreter, which is not the kernel's business.
fn target() -> impl Strategy<Value = Target> {
    let off = select(vec![0, 8, PG - 8, PG, M2 - 8]);
    let abs = select(vec![0, PG, M2, 0xc000_0000, 1 << 32, 1 << 36]);
    prop_oneof![
        4 => (idx(), off).prop_map(|(n, o)| Target::Slot(n, o)),
        1 => abs.prop_map(Target::Gpa),
    ]
}

fn guest_spec() -> impl Strategy<Value = GuestSpec> {
    let len = select(vec![8, PG, 2 * PG]);
    prop_oneof![
        3 => (target(), len.clone(), select(vec![0x11u8, 0x5a]), any::<bool>())
            .prop_map(|(at, len, byte, private)| GuestSpec::Write { at, len, byte, private }),
        3 => (target(), len, select(vec![0u8, 0x11, 0x5a, 0xa5]), any::<bool>())
            .prop_map(|(at, len, expect, private)| GuestSpec::Read { at, len, expect, private }),
        2 => (
            gpa(),
            select(vec![0, 1, 2, 512, u64::MAX]),
            select(vec![0u64, 0x10, 1, 0x11, 0x7]),
            prop_oneof![4 => select(COMPLETIONS.to_vec()).prop_map(Some), 1 => Just(None)],
        )
            .prop_map(|(gpa, pages, attrs, complete)| GuestSpec::Map { gpa, pages, attrs, complete }),
    ]
}

/// Operations that set the stage: a good guest_memfd, a good memslot, a
/// mapping.
fn setup_op() -> impl Strategy<Value = Op> {
    let create =
        (select(vec![4 * PG, M2, 2 * M2]), select(vec![0u64, 1, 3])).prop_map(|(size, flags)| {
            Op::CreateGmem {
                vm: VmSel::Main,
                size,
                flags,
            }
        });
    let user = prop_oneof![3 => select(vec![0, M2]).prop_map(UserSel::Backing), 1 => Just(UserSel::Raw(0))];
    let slot = (
        select(vec![0u32, 1, 10]),
        select(vec![0, MEM_GUEST_MEMFD]),
        select(vec![0, M2, 1 << 32]),
        user,
    )
        .prop_map(|(slot, flags, gpa, user)| {
            Op::SetRegion(RegionOp {
                v1: false,
                slot,
                flags,
                gpa,
                size: M2,
                user,
                gmem: GmemSel::File(0),
                gmem_offset: 0,
            })
        });
    prop_oneof![
        3 => create,
        3 => slot,
        1 => Just(Op::EnableExitHypercall { mask: 1 << 12 }),
        2 => idx().prop_map(|gmem| Op::Mmap { gmem, len: 4 * PG, shared: true }),
        2 => (select(vec![0, M2, 1 << 32]), select(vec![0u64, 8]))
            .prop_map(|(addr, attrs)| Op::SetAttributes { addr, size: M2, attrs, flags: 0 }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let create =
        (prop::bool::weighted(0.15), gmem_size(), gmem_flags()).prop_map(|(other, size, flags)| {
            Op::CreateGmem {
                vm: if other { VmSel::Other } else { VmSel::Main },
                size,
                flags,
            }
        });
    prop_oneof![
        5 => create,
        3 => fallocate(),
        2 => file_ops(),
        4 => mapping_ops(),
        7 => region(),
        2 => attributes(),
        1 => select(vec![0u64, 1 << 12, 1 << 11, u64::MAX]).prop_map(|mask| Op::EnableExitHypercall { mask }),
        1 => select(COMPARED_CAPS.to_vec()).prop_map(|cap| Op::CheckExtension { cap }),
        4 => prop::collection::vec(guest_spec(), 1..=4).prop_map(|ops| Op::Run { ops }),
    ]
}

/// Sequences of at most `max_steps` operations on a VM of one of
/// `types`: up to 3 setup operations, then anything.
pub fn sequence(types: Vec<VmType>, max_steps: usize) -> impl Strategy<Value = Sequence> {
    let max = max_steps.max(4);
    let setup = prop::collection::vec(setup_op(), 0..=3);
    let body = prop::collection::vec(op(), 1..=max - 3);
    (select(types), setup, body).prop_map(|(vm_type, mut ops, body)| {
        ops.extend(body);
        Sequence { vm_type, ops }
    })
}
