//! Soak: two vCPUs run random writes, checks, explicit conversions both ways
//! and implicit faults on a coco VM (model backend) against a per-page oracle.
//!
//! CI runs `PRIVMEM_SOAK_OPS` (default 20 000) ops per vCPU; the long run is
//! `PRIVMEM_SOAK_OPS=500000 cargo test --release -p privmem-core --test soak`
//! (a million ops in all).

use std::sync::Arc;
use std::time::{Duration, Instant};

use privmem_core::attrmap::AttrMap;
use privmem_core::backend::{Access, GuestOp};
use privmem_core::exit::MAP_GPA_RANGE_ENCRYPTED;
use privmem_core::{Gpa, GpaRange, VmType};
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::{Machine, RunOptions};
use privmem_runner::workload::{Implicit, Policy, SlotSpec, Workload};

const PAGES: u64 = 512;

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The oracle's view of one page.
#[derive(Clone, Copy, Default)]
struct Page {
    private: bool,
    private_byte: u8,
    shared_byte: u8,
}

impl Page {
    /// Converts (with discard): the side no longer in use is freed.
    fn convert(&mut self, to_private: bool) {
        if self.private != to_private {
            if to_private {
                self.shared_byte = 0;
            } else {
                self.private_byte = 0;
            }
            self.private = to_private;
        }
    }
    fn byte(&self) -> u8 {
        if self.private {
            self.private_byte
        } else {
            self.shared_byte
        }
    }
}

fn access(private: bool) -> Access {
    if private {
        Access::Private
    } else {
        Access::Shared
    }
}

/// Generates `n` ops for the vCPU owning pages `page % 2 == owner`.
fn program(rng: &mut Rng, pages: &mut [Page], owner: u64, n: usize) -> Vec<GuestOp> {
    let mut ops = Vec::with_capacity(n + 1);
    for _ in 0..n {
        let page = rng.below(PAGES / 2) * 2 + owner;
        let gpa = Gpa(page * 4096);
        let p = &mut pages[page as usize];
        let private = rng.below(2) == 0;
        match rng.below(4) {
            0 => {
                let byte = (rng.below(255) + 1) as u8;
                p.convert(private);
                if private {
                    p.private_byte = byte;
                } else {
                    p.shared_byte = byte;
                }
                ops.push(GuestOp::Write {
                    gpa,
                    len: 4096,
                    byte,
                    access: access(private),
                });
            }
            1 | 2 => {
                p.convert(private);
                ops.push(GuestOp::Read {
                    gpa,
                    len: 4096,
                    expect: p.byte(),
                    access: access(private),
                });
            }
            _ => {
                p.convert(private);
                let attrs = if private { MAP_GPA_RANGE_ENCRYPTED } else { 0 };
                ops.push(GuestOp::Map {
                    gpa: gpa.raw(),
                    pages: 1,
                    attrs,
                    expect_ret: Some(0),
                });
            }
        }
    }
    ops.push(GuestOp::Halt);
    ops
}

#[test]
fn soak_two_vcpus_random_ops_match_oracle() {
    let per_vcpu: usize = std::env::var("PRIVMEM_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed = 0x5eed_0000_0000_0001u64;
    let mut rng = Rng(seed);
    let mut pages = vec![Page::default(); PAGES as usize];
    let vcpus = vec![
        program(&mut rng, &mut pages, 0, per_vcpu),
        program(&mut rng, &mut pages, 1, per_vcpu),
    ];
    let range = GpaRange::new(Gpa(0), PAGES * 4096).unwrap();
    let w = Workload {
        vm_type: VmType::Coco,
        initial_private: false,
        policy: Policy {
            implicit: Implicit::Convert,
            discard: true,
            max_repeats: 3,
        },
        slots: vec![SlotSpec {
            range,
            guest_memfd: true,
            close_guest_memfd: false,
        }],
        poison: vec![],
        vcpus,
    };
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let m = Machine::new(hv, &w).expect("setup");
    let engine = m.engine.clone();
    let start = Instant::now();
    let states = m.run(RunOptions {
        timeout: Some(Duration::from_secs(110)),
    });
    let elapsed = start.elapsed();
    for s in &states {
        assert_eq!(
            s.state,
            RunState::Halted,
            "seed {seed:#x}: vcpu {} {:?}",
            s.index,
            s.error
        );
    }
    let mut oracle = AttrMap::new();
    for (i, p) in pages.iter().enumerate() {
        oracle.set(
            GpaRange::new(Gpa(i as u64 * 4096), 4096).unwrap(),
            p.private,
        );
    }
    assert_eq!(engine.attr_map(), oracle);
    assert_eq!(engine.vm().attributes(), oracle);
    let faults: u64 = states.iter().map(|s| s.exits.memory_fault).sum();
    let checks: u64 = states.iter().map(|s| s.checks.passed).sum();
    eprintln!(
        "soak: {} ops in {:.2?} ({:.0} ops/s); {faults} implicit faults, {checks} checks passed",
        2 * per_vcpu,
        elapsed,
        (2 * per_vcpu) as f64 / elapsed.as_secs_f64()
    );
}
