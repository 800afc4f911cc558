//! Micro benchmarks of the per-exit work privmem adds on top of `KVM_RUN`:
//! decoding a `kvm_run` image (`privmem_core::abi::decode_exit`) and deciding
//! (`handle::handle_exit`, over `privmem_core::decide`).
//!
//! `cargo bench -p privmem-runner --bench exit`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use privmem_core::abi::{self, build, RunResult, KVM_EXIT_IO, KVM_EXIT_MEMORY_FAULT};
use privmem_core::decide::FaultPolicy;
use privmem_core::exit::{Exit, FaultErrno, GuestReport, MemoryFault, MEMORY_EXIT_FLAG_PRIVATE};
use privmem_core::Gpa;
use privmem_runner::handle::{handle_exit, VcpuState};

/// A `kvm_run` image of a 4-byte `out` to port 0xd0 with data at 288.
fn io_image() -> Vec<u8> {
    let mut run = build::zeroed(4096);
    build::set_reason(&mut run, KVM_EXIT_IO);
    // direction out (1), size 4, port 0xd0, count 1, data_offset 288.
    build::set_union_u64(&mut run, 0, 1 | (4 << 8) | (0xd0 << 16) | (1 << 32));
    build::set_union_u64(&mut run, 8, 288);
    run[288..292].copy_from_slice(&7u32.to_le_bytes());
    run
}

/// A `kvm_run` image of a private memory fault.
fn fault_image() -> Vec<u8> {
    let mut run = build::zeroed(4096);
    build::set_reason(&mut run, KVM_EXIT_MEMORY_FAULT);
    build::set_union_u64(&mut run, 0, MEMORY_EXIT_FLAG_PRIVATE);
    build::set_union_u64(&mut run, 8, 0x10_0000);
    build::set_union_u64(&mut run, 16, 4096);
    run
}

fn bench(c: &mut Criterion) {
    let io = io_image();
    assert!(matches!(
        abi::decode_exit(RunResult::Ok, &io),
        Ok(Exit::Io(_))
    ));
    c.bench_function("decode_exit/io", |b| {
        b.iter(|| abi::decode_exit(RunResult::Ok, black_box(&io)))
    });
    let fault = fault_image();
    let efault = RunResult::Err(abi::EFAULT);
    assert!(matches!(
        abi::decode_exit(efault, &fault),
        Ok(Exit::MemoryFault(_))
    ));
    c.bench_function("decode_exit/memory_fault", |b| {
        b.iter(|| abi::decode_exit(efault, black_box(&fault)))
    });

    let policy = FaultPolicy::default();
    let sync = Exit::Report(GuestReport::Sync { tag: 7 });
    c.bench_function("handle_exit/sync", |b| {
        b.iter_batched_ref(
            || VcpuState::new(0, policy.max_repeats),
            |st| {
                for _ in 0..1000 {
                    black_box(handle_exit(st, &policy, black_box(&sync)));
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let mut addr = 0u64;
    c.bench_function("handle_exit/memory_fault", |b| {
        let mut st = VcpuState::new(0, policy.max_repeats);
        b.iter(|| {
            // A different page each time: the repeat guard never fires.
            addr = addr.wrapping_add(4096);
            let f = Exit::MemoryFault(MemoryFault {
                gpa: Gpa(addr),
                size: 4096,
                private: true,
                errno: FaultErrno::Efault,
            });
            handle_exit(&mut st, &policy, black_box(&f))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
