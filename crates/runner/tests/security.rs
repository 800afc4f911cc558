//! Security and correctness of conversions, proved on the model backend
//! (where private memory exists on every host):
//! - discard = true: after private→shared the guest and the host read zeros
//!   where private data was; after shared→private the private view reads zeros;
//! - discard = false: after private→shared they read the old shared data,
//!   never the private data;
//! - a conversion the kernel rejects is never committed (map == kernel view);
//! - two vCPUs converting interleaved ranges end with the map equal to an oracle.

mod common;
use common::machine;
use privmem_core::attrmap::AttrMap;
use privmem_core::backend::HostMemory;

use privmem_core::{Errno, Gpa, GpaRange};
use privmem_model::{InjectOp, ModelHypervisor};
use privmem_runner::handle::{ErrorKind, RunState, VcpuState};
use privmem_runner::runtime::{HvEngine, RunOptions};

fn all_halted(states: &[VcpuState]) {
    for s in states {
        assert_eq!(
            s.state,
            RunState::Halted,
            "vcpu {} error {:?}",
            s.index,
            s.error
        );
    }
}

/// Reads `len` bytes of slot 0's shared backing at `off` (the host's view).
fn host_shared(engine: &HvEngine<ModelHypervisor>, off: u64, len: usize) -> Vec<u8> {
    let slots = engine.slots();
    let shared = &slots[0].shared.as_ref().expect("shared backing").mem;
    let mut buf = vec![0xeeu8; len];
    shared.read(off, &mut buf).expect("host read");
    buf
}

fn round_trip(discard: bool) -> String {
    format!(
        r#"
[vm]
type = "sw-protected"
memory = "2MiB"
[policy]
discard = {discard}
[[vcpu]]
ops = [
  {{ op = "write", gpa = "0x1000", len = 4096, byte = 0x11 }},
  {{ op = "map", gpa = "0x1000", pages = 1, to = "private", expect_ret = 0 }},
  {{ op = "write", gpa = "0x1000", len = 4096, byte = 0x22 }},
  {{ op = "read", gpa = "0x1000", len = 4096, expect = 0x22 }},
  {{ op = "map", gpa = "0x1000", pages = 1, to = "shared", expect_ret = 0 }},
  {{ op = "read", gpa = "0x1000", len = 4096, expect = {expect} }},
  {{ op = "halt" }},
]
"#,
        expect = if discard { "0x00" } else { "0x11" }
    )
}

#[test]
fn discard_private_to_shared_guest_and_host_read_zeros() {
    let (_hv, m) = machine(&round_trip(true));
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    assert_eq!(states[0].checks.passed, 2);
    let host = host_shared(&engine, 0x1000, 4096);
    assert!(host.iter().all(|&b| b == 0), "host saw {:#x}", host[0]);
}

#[test]
fn no_discard_private_to_shared_reads_old_shared_never_private() {
    let (_hv, m) = machine(&round_trip(false));
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    let host = host_shared(&engine, 0x1000, 4096);
    assert!(host.iter().all(|&b| b == 0x11), "host saw {:#x}", host[0]);
}

#[test]
fn discard_shared_to_private_private_view_reads_zeros() {
    let text = r#"
[vm]
type = "sw-protected"
memory = "2MiB"
initial = "private"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x2000", len = 4096, byte = 0x22 },
  { op = "map", gpa = "0x2000", pages = 1, to = "shared", expect_ret = 0 },
  { op = "write", gpa = "0x2000", len = 4096, byte = 0x11 },
  { op = "map", gpa = "0x2000", pages = 1, to = "private", expect_ret = 0 },
  { op = "read", gpa = "0x2000", len = 4096, expect = 0x00 },
  { op = "halt" },
]
"#;
    let (_hv, m) = machine(text);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    // The shared copy was discarded too: the host can't read the old 0x11.
    let host = host_shared(&engine, 0x2000, 4096);
    assert!(host.iter().all(|&b| b == 0));
    assert_eq!(engine.stats().discarded_shared, 1);
}

#[test]
fn coco_implicit_private_to_shared_with_discard_never_exposes_private_data() {
    let text = r#"
[vm]
type = "coco"
memory = "2MiB"
initial = "private"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x3000", len = 4096, byte = 0x5e, access = "private" },
  { op = "read", gpa = "0x3000", len = 4096, expect = 0x00, access = "shared" },
  { op = "read", gpa = "0x3000", len = 4096, expect = 0x00, access = "private" },
  { op = "halt" },
]
"#;
    let (_hv, m) = machine(text);
    let states = m.run(RunOptions::default());
    all_halted(&states);
    assert_eq!(states[0].exits.memory_fault, 2);
}

fn kernel_attrs(engine: &HvEngine<ModelHypervisor>) -> AttrMap {
    engine.vm().attributes()
}

#[test]
fn kernel_rejects_attributes_nothing_committed() {
    let text = r#"
[vm]
type = "sw-protected"
memory = "2MiB"
[[vcpu]]
ops = [
  { op = "map", gpa = "0x0", pages = 16, to = "private", expect_ret = -22 },
  { op = "map", gpa = "0x0", pages = 16, to = "private", expect_ret = 0 },
  { op = "halt" },
]
"#;
    let (hv, m) = machine(text);
    hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    let r = GpaRange::new(Gpa(0), 16 * 4096).unwrap();
    assert_eq!(engine.attr_map(), AttrMap::with_private(r));
    assert_eq!(kernel_attrs(&engine), engine.attr_map());
}

fn multislot(expect_ret: i64, after: &str) -> String {
    format!(
        r#"
[vm]
type = "sw-protected"
initial = "private"
[[slot]]
gpa = 0
size = "1MiB"
[[slot]]
gpa = "1MiB"
size = "1MiB"
[[vcpu]]
ops = [
  {{ op = "write", gpa = "0xfe000", len = 16384, byte = 0x77 }},
  {{ op = "map", gpa = "0xfe000", pages = 4, to = "shared", expect_ret = {expect_ret} }},
  {after}
  {{ op = "halt" }},
]
"#
    )
}

#[test]
fn first_discard_failure_in_multislot_conversion_rolls_back_without_data_loss() {
    let after = r#"{ op = "read", gpa = "0xfe000", len = 16384, expect = 0x77 },"#;
    let (hv, m) = machine(&multislot(-22, after));
    hv.inject_failure(InjectOp::Fallocate, 1, Errno::ENOMEM);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    let full = GpaRange::new(Gpa(0), 2 << 20).unwrap();
    assert_eq!(engine.attr_map(), AttrMap::with_private(full));
    assert_eq!(kernel_attrs(&engine), engine.attr_map());
    assert!(engine.pending_discards().is_empty());
}

#[test]
fn later_discard_failure_rolls_forward_and_retries_before_reuse() {
    // The punch of slot 0's half succeeds, slot 1's fails with EIO: the
    // conversion completes (going back would lose slot 0's data) and slot 1's
    // punch is retried when the range is converted again; the private view
    // then reads zeros, never the stale 0x77.
    let after = r#"{ op = "map", gpa = "0xfe000", pages = 4, to = "private", expect_ret = 0 },
  { op = "read", gpa = "0xfe000", len = 16384, expect = 0x00 },"#;
    let (hv, m) = machine(&multislot(0, after));
    hv.inject_failure(InjectOp::Fallocate, 2, Errno::EIO);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    assert_eq!(kernel_attrs(&engine), engine.attr_map());
    assert!(engine.pending_discards().is_empty());
    assert_eq!(engine.stats().deferred_discards, 1);
}

#[test]
fn deferred_discard_that_keeps_failing_refuses_reuse() {
    let after = r#"{ op = "map", gpa = "0xfe000", pages = 4, to = "private", expect_ret = -22 },"#;
    let (hv, m) = machine(&multislot(0, after));
    hv.inject_failure(InjectOp::Fallocate, 2, Errno::EIO);
    hv.inject_failure(InjectOp::Fallocate, 3, Errno::EIO);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    assert_eq!(kernel_attrs(&engine), engine.attr_map());
    assert_eq!(engine.pending_discards().len(), 1);
}

#[test]
fn two_vcpus_interleaved_conversions_match_oracle() {
    // vCPU i owns pages with page % 2 == i in [0, 64); each loops converting
    // its pages private, writing, checking, and converting some back.
    let mut ops = [String::new(), String::new()];
    let mut oracle = AttrMap::new();
    for round in 0..8u64 {
        for page in 0..64u64 {
            let i = (page % 2) as usize;
            let gpa = page * 4096;
            let byte = (round * 7 + page) % 251 + 1;
            ops[i] += &format!(
                "{{ op = \"map\", gpa = {gpa}, pages = 1, to = \"private\", expect_ret = 0 }},\n"
            );
            ops[i] += &format!("{{ op = \"write\", gpa = {gpa}, len = 4096, byte = {byte} }},\n");
            ops[i] += &format!("{{ op = \"read\", gpa = {gpa}, len = 4096, expect = {byte} }},\n");
            let back = (page + round) % 3 == 0;
            if back {
                ops[i] += &format!("{{ op = \"map\", gpa = {gpa}, pages = 1, to = \"shared\", expect_ret = 0 }},\n");
            }
            if round == 7 {
                oracle.set(GpaRange::new(Gpa(gpa), 4096).unwrap(), !back);
            }
        }
    }
    let text = format!(
        "[vm]\ntype = \"sw-protected\"\nmemory = \"1MiB\"\nvcpus = 2\n[[vcpu]]\nops = [\n{}{{ op = \"halt\" }}]\n[[vcpu]]\nops = [\n{}{{ op = \"halt\" }}]\n",
        ops[0], ops[1]
    );
    let (_hv, m) = machine(&text);
    let engine = m.engine.clone();
    let states = m.run(RunOptions::default());
    all_halted(&states);
    assert_eq!(engine.attr_map(), oracle);
    assert_eq!(kernel_attrs(&engine), oracle);
}

#[test]
fn fault_loop_on_closed_guest_memfd_stops_after_max_repeats() {
    let text = include_str!("../../../examples/fault-loop.toml");
    let (_hv, m) = machine(text);
    let states = m.run(RunOptions::default());
    let err = states[0].error.as_ref().expect("stopped");
    assert_eq!(err.kind, ErrorKind::FaultLoop);
    assert_eq!(states[0].exits.memory_fault, 3);
    assert_eq!(err.gpa, Some(0x1000));
}
