//! Throughput sanity check of the model's guest accesses (not a benchmark
//! with a baseline; `privmem bench` owns that). Run with
//! `cargo run --release -p privmem-model --example throughput`.

use std::time::Instant;

use privmem_core::backend::{
    Access, GmemRef, GuestOp, Hypervisor, Region, RegionApi, SharedKind, UserAddr, Vcpu, Vm,
    MEM_GUEST_MEMFD,
};
use privmem_core::{Exit, GmemFlags, Gpa, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};

const PG: u64 = 4096;

fn run(
    name: &str,
    ty: VmType,
    ops: Vec<GuestOp>,
    size: u64,
    attrs: impl Fn(&privmem_model::ModelVm),
) {
    let hv = ModelHypervisor::new(KernelProfile::V7_3);
    let vm = hv.create_vm(ty).unwrap();
    let g = vm.create_guest_memfd(size, GmemFlags(0)).unwrap();
    let mem = vm.create_shared(size, SharedKind::Memfd).unwrap();
    vm.set_user_memory_region(&Region {
        api: RegionApi::V2,
        slot: 0,
        flags: MEM_GUEST_MEMFD,
        gpa: 0,
        size,
        userspace: UserAddr::Backing {
            mem: &mem,
            offset: 0,
        },
        gmem: GmemRef::File(&g),
        gmem_offset: 0,
    })
    .unwrap();
    attrs(&vm);
    let mut v = vm.create_vcpu(0).unwrap();
    v.load_program(&ops).unwrap();
    let t = Instant::now();
    loop {
        match v.run().unwrap() {
            Exit::Hlt => break,
            Exit::Report(_) => {}
            e => panic!("{e:?}"),
        }
    }
    let dt = t.elapsed().as_secs_f64();
    let pages = v.pages_accessed();
    println!(
        "{name:40} {pages:>10} pages {dt:>8.3}s {:>12.0} pages/s",
        pages as f64 / dt
    );
}

fn main() {
    syscall_floor();
    let size = 256 << 20;
    let s = Access::Shared;
    let big = vec![
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte: 1,
            access: s,
        },
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: 1,
            access: s,
        },
    ];
    run(
        "sequential 256 MiB write+read (shared)",
        VmType::Default,
        big.clone(),
        size,
        |_| {},
    );
    let rw = vec![
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte: 1,
            access: s,
        },
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte: 1,
            access: s,
        },
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte: 1,
            access: s,
        },
        GuestOp::Write {
            gpa: Gpa(0),
            len: size,
            byte: 1,
            access: s,
        },
    ];
    run(
        "sequential 256 MiB write x4 (shared)",
        VmType::Default,
        rw,
        size,
        |_| {},
    );
    let rd = vec![
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: 0,
            access: s,
        },
        GuestOp::Read {
            gpa: Gpa(0),
            len: size,
            expect: 0,
            access: s,
        },
    ];
    run(
        "sequential 256 MiB read x2 of holes",
        VmType::Default,
        rd,
        size,
        |_| {},
    );
    run(
        "sequential 256 MiB write+read (private)",
        VmType::SwProtected,
        big,
        size,
        |vm| {
            vm.set_memory_attributes(0, 256 << 20, 8, 0).unwrap();
        },
    );
    let small: Vec<GuestOp> = (0..size / PG)
        .map(|i| GuestOp::Write {
            gpa: Gpa(i * PG),
            len: PG,
            byte: 2,
            access: s,
        })
        .collect();
    run("4 KiB write ops", VmType::Default, small, size, |_| {});
    let alt = vec![GuestOp::Write {
        gpa: Gpa(0),
        len: size,
        byte: 3,
        access: s,
    }];
    run(
        "alternating private/shared pages",
        VmType::SwProtected,
        alt,
        size,
        |vm| {
            for i in (0..(256u64 << 20) / PG).step_by(2) {
                vm.set_memory_attributes(i * PG, PG, 8, 0).unwrap();
            }
        },
    );
}

/// Raw cost of one 4 KiB pwrite/pread on the backing (the floor for
/// page-granular ops).
#[allow(dead_code)]
pub fn syscall_floor() {
    use privmem_core::backend::HostMemory;
    let mem = privmem_model::ModelShared::new(64 << 20, SharedKind::Memfd).unwrap();
    let buf = vec![1u8; PG as usize];
    for i in 0..(64 << 20) / PG {
        mem.write(i * PG, &buf).unwrap();
    }
    let t = Instant::now();
    for i in 0..(64 << 20) / PG {
        mem.write(i * PG, &buf).unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("{:40} {:>12.0} writes/s", "raw 4 KiB pwrite", 16384.0 / dt);
    let mut rb = vec![0u8; PG as usize];
    let t = Instant::now();
    for i in 0..(64 << 20) / PG {
        mem.read(i * PG, &mut rb).unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("{:40} {:>12.0} reads/s", "raw 4 KiB pread", 16384.0 / dt);
}
