//! Shared helpers for the real-KVM integration tests.
#![allow(dead_code)]

use privmem_core::backend::MEM_GUEST_MEMFD;
use privmem_core::{
    Exit, GmemFlags, GmemRef, GuestMemfd, GuestOp, Hypervisor, Region, RegionApi, RunError,
    UserAddr, Vcpu, Vm, VmType,
};
use privmem_kvm::{KvmHypervisor, KvmShared, KvmVcpu, KvmVm};

pub const MIB: u64 = 1 << 20;

/// Opens /dev/kvm, or prints a visible skip and returns `None`.
/// With `REQUIRE_KVM=1` a missing /dev/kvm is a failure instead.
pub fn kvm_or_skip(test: &str) -> Option<KvmHypervisor> {
    match KvmHypervisor::open() {
        Ok(h) => Some(h),
        Err(e) => {
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: /dev/kvm unavailable ({e}) and REQUIRE_KVM=1");
            }
            eprintln!("SKIP: {test}: /dev/kvm unavailable ({e})");
            None
        }
    }
}

/// A default VM whose only memory is one MMAP|INIT_SHARED guest_memfd of
/// `size` bytes at GPA 0 (slot 0).
pub struct GmemGuest {
    pub vm: KvmVm,
    pub gmem: GuestMemfd,
    pub size: u64,
}

pub fn gmem_guest(hv: &KvmHypervisor, size: u64) -> GmemGuest {
    let vm = hv.create_vm(VmType::Default).expect("create vm");
    let flags = GmemFlags::MMAP.union(GmemFlags::INIT_SHARED);
    let gmem = vm.create_guest_memfd(size, flags).expect("create gmem");
    add_gmem_slot(&vm, 0, 0, size, &gmem);
    GmemGuest { vm, gmem, size }
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
