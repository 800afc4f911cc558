//! Shared helpers for the real-KVM integration tests.
#![allow(dead_code)]

use privmem_core::backend::{
    SharedKind, SharedMemory, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MEM_GUEST_MEMFD,
};
use privmem_core::{
    Cap, Exit, GmemFlags, GmemRef, GuestMemfd, GuestOp, HostMemory, Hypervisor, Region, RegionApi,
    RunError, UserAddr, Vcpu, Vm, VmType,
};
use privmem_kvm::{
    sigrtmin, KickSignal, KvmHypervisor, KvmMapping, KvmOptions, KvmShared, KvmVcpu, KvmVm,
};

pub const MIB: u64 = 1 << 20;

/// The options the tests open KVM with: the host's ([`KvmOptions::probe`])
/// with a `SIGRTMIN` kick, as the CLI uses.
pub fn test_options() -> KvmOptions {
    KvmOptions::probe().with_kick(KickSignal::Install(sigrtmin()))
}

/// Opens /dev/kvm with [`test_options`], or prints a visible skip and
/// returns `None`. With `REQUIRE_KVM=1` a missing /dev/kvm is a failure
/// instead.
pub fn kvm_or_skip(test: &str) -> Option<KvmHypervisor> {
    kvm_with_or_skip(test, test_options())
}

/// [`kvm_or_skip`] with `options`.
pub fn kvm_with_or_skip(test: &str, options: KvmOptions) -> Option<KvmHypervisor> {
    match KvmHypervisor::open(options) {
        Ok(h) => Some(h),
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1");
            }
            skip(&format!("{test}: /dev/kvm unavailable ({e})"));
            None
        }
    }
}

/// A default VM with one slot of `size` bytes at GPA 0 (slot 0): an
/// `MMAP|INIT_SHARED` guest_memfd as its only memory where the host has
/// guest_memfd, else a memfd behind `userspace_addr` (hosts whose KVM is
/// built without `CONFIG_KVM_GUEST_MEMFD`). Either way the host sees the
/// guest's bytes through [`TestGuest::host`] and discards with
/// [`TestGuest::punch`].
pub struct TestGuest {
    pub vm: KvmVm,
    pub size: u64,
    mem: Backing,
}

enum Backing {
    Gmem { file: GuestMemfd, map: KvmMapping },
    Memfd(KvmShared),
}

/// Like [`kvm_or_skip`], and also skips (visibly, even with
/// `REQUIRE_KVM=1`: no test can add a capability the host's kernel lacks)
/// when the host has no `MMAP|INIT_SHARED` guest_memfd.
pub fn shared_gmem_or_skip(test: &str) -> Option<KvmHypervisor> {
    let hv = kvm_or_skip(test)?;
    if hv.has_shared_gmem() {
        return Some(hv);
    }
    skip(&format!(
        "{test}: host KVM has no MMAP|INIT_SHARED guest_memfd (KVM_CAP_GUEST_MEMFD={}, KVM_CAP_GUEST_MEMFD_FLAGS={})",
        hv.check_extension(Cap::GuestMemfd).unwrap_or(0),
        hv.check_extension(Cap::GuestMemfdFlags).unwrap_or(0)
    ));
    None
}

/// Where skips are recorded for `scripts/test` to print after the run
/// (libtest hides a passing test's stderr).
pub const SKIP_LOG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped.txt");

/// A visible skip: on stderr, and appended to [`SKIP_LOG`].
pub fn skip(line: &str) {
    use std::io::Write as _;
    eprintln!("SKIP: {line}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIP_LOG);
    if let Ok(mut f) = log {
        // One write per line: concurrent tests append whole lines.
        let _ = f.write_all(format!("SKIP: {line}\n").as_bytes());
    }
}

pub fn test_guest(hv: &KvmHypervisor, size: u64) -> TestGuest {
    let vm = hv.create_vm(VmType::Default).expect("create vm");
    let mem = if hv.has_shared_gmem() {
        let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
        let file = vm.create_guest_memfd(size, flags).expect("create gmem");
        add_gmem_slot(&vm, 0, 0, size, &file);
        let map = hv.gmem_mmap(&file, size, true).expect("mmap gmem");
        Backing::Gmem { file, map }
    } else {
        let mem = vm.create_shared(size, SharedKind::Memfd).expect("memfd");
        add_memfd_slot(&vm, 0, 0, &mem);
        Backing::Memfd(mem)
    };
    TestGuest { vm, size, mem }
}

impl TestGuest {
    /// The host's view of the guest's memory (offset = GPA).
    pub fn host(&self) -> &dyn HostMemory {
        match &self.mem {
            Backing::Gmem { map, .. } => map,
            Backing::Memfd(mem) => mem,
        }
    }

    /// `fallocate(PUNCH_HOLE)` of `[offset, offset + len)` of the backing.
    pub fn punch(&self, hv: &KvmHypervisor, offset: u64, len: u64) {
        match &self.mem {
            Backing::Gmem { file, .. } => {
                let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                hv.gmem_fallocate(file, mode, offset as i64, len as i64)
                    .expect("punch gmem");
            }
            Backing::Memfd(mem) => mem.discard(offset, len).expect("punch memfd"),
        }
    }
}

pub fn add_memfd_slot(vm: &KvmVm, slot: u32, gpa: u64, mem: &KvmShared) {
    let region: Region<'_, KvmShared> = Region {
        api: RegionApi::V2,
        slot,
        flags: 0,
        gpa,
        size: mem.len(),
        userspace: UserAddr::Backing { mem, offset: 0 },
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    };
    vm.set_user_memory_region(&region)
        .expect("set memory region");
}

pub fn add_gmem_slot(vm: &KvmVm, slot: u32, gpa: u64, size: u64, gmem: &GuestMemfd) {
    let region: Region<'_, KvmShared> = Region {
        api: RegionApi::V2,
        slot,
        flags: MEM_GUEST_MEMFD,
        gpa,
        size,
        userspace: UserAddr::Raw(0),
        gmem: GmemRef::File(gmem),
        gmem_offset: 0,
    };
    vm.set_user_memory_region(&region)
        .expect("set memory region");
}

/// A vCPU with `ops` loaded.
pub fn vcpu_with(vm: &KvmVm, index: u32, ops: &[GuestOp]) -> KvmVcpu {
    let mut vcpu = vm.create_vcpu(index).expect("create vcpu");
    vcpu.load_program(ops).expect("load program");
    vcpu
}

/// Runs until `Hlt`, returning every other exit on the way (at most 10000).
pub fn run_to_hlt(vcpu: &mut KvmVcpu) -> Vec<Exit> {
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        match vcpu.run() {
            Ok(Exit::Hlt) => return seen,
            Ok(e @ (Exit::Shutdown | Exit::InternalError { .. } | Exit::Unknown(_))) => {
                panic!("unexpected exit {e:?} after {seen:?}")
            }
            Ok(e) => seen.push(e),
            Err(RunError::Interrupted | RunError::Again) => {}
            Err(e) => panic!("run failed: {e:?} after {seen:?}"),
        }
    }
    panic!("no hlt after 10000 exits: {seen:?}");
}

/// The next exit that is not an interruption.
pub fn vcpu_next(vcpu: &mut KvmVcpu) -> Exit {
    loop {
        match vcpu.run() {
            Ok(e) => return e,
            Err(RunError::Interrupted | RunError::Again) => {}
            Err(e) => panic!("run failed: {e:?}"),
        }
    }
}

pub fn write(gpa: u64, len: u64, byte: u8) -> GuestOp {
    GuestOp::Write {
        gpa: privmem_core::Gpa(gpa),
        len,
        byte,
        access: privmem_core::Access::Shared,
    }
}

pub fn read(gpa: u64, len: u64, expect: u8) -> GuestOp {
    GuestOp::Read {
        gpa: privmem_core::Gpa(gpa),
        len,
        expect,
        access: privmem_core::Access::Shared,
    }
}
