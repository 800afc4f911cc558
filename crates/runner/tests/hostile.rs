//! Hostile guests on the model: every answer is a defined hypercall return
//! value or a stopped vCPU with a clear error, and the other vCPUs keep running.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::machine;
use privmem_core::attrmap::AttrMap;
use privmem_core::Gpa;
use privmem_model::{KernelProfile, ModelHypervisor};
use privmem_runner::handle::{ErrorKind, RunState, VcpuState};
use privmem_runner::runtime::{Machine, RunOptions};
use privmem_runner::workload;

fn run(text: &str) -> (Vec<VcpuState>, AttrMap, AttrMap) {
    let (_hv, m) = machine(text);
    let engine = m.engine.clone();
    let states = m.run(RunOptions {
        timeout: Some(Duration::from_secs(30)),
    });
    (states, engine.attr_map(), engine.vm().attributes())
}

const HEADER: &str = r#"
[vm]
type = "sw-protected"
vcpus = 2
[[slot]]
gpa = 0
size = "2MiB"
[[slot]]
gpa = "4MiB"
size = "2MiB"
"#;

/// vcpu 0 runs `ops`; vcpu 1 does honest work and must halt. Its pages
/// (in the second slot) are ones no `ops` converts: a concurrent
/// conversion of them to shared would discard its data mid-check (that
/// made `map_2m_page_size_hint_is_not_private` flaky when the bystander
/// sat inside vcpu 0's 2 MiB range).
fn with_bystander(ops: &str) -> String {
    format!(
        "{HEADER}[[vcpu]]\nops = [\n{ops}\n{{ op = \"halt\" }}]\n[[vcpu]]\nops = [\n\
         {{ op = \"map\", gpa = \"0x500000\", pages = 16, to = \"private\", expect_ret = 0 }},\n\
         {{ op = \"write\", gpa = \"0x500000\", len = 65536, byte = 0x42 }},\n\
         {{ op = \"read\", gpa = \"0x500000\", len = 65536, expect = 0x42 }},\n\
         {{ op = \"halt\" }}]\n"
    )
}

fn map_ret(gpa: &str, pages: &str, to: &str, extra: &str, ret: i64) -> String {
    format!("{{ op = \"map\", gpa = \"{gpa}\", pages = \"{pages}\", to = \"{to}\"{extra}, expect_ret = {ret} }},")
}

fn assert_all_halted(states: &[VcpuState]) {
    for s in states {
        assert_eq!(s.state, RunState::Halted, "vcpu {}: {:?}", s.index, s.error);
    }
}

#[test]
fn map_unaligned_gpa_gets_einval() {
    let (s, map, kernel) = run(&with_bystander(&map_ret("0x1001", "1", "private", "", -22)));
    assert_all_halted(&s);
    assert_eq!(map, kernel);
}

#[test]
fn map_zero_pages_gets_einval() {
    let (s, ..) = run(&with_bystander(&map_ret("0x1000", "0", "private", "", -22)));
    assert_all_halted(&s);
}

#[test]
fn map_2_pow_63_pages_gets_einval() {
    let (s, ..) = run(&with_bystander(&map_ret(
        "0x1000",
        "0x8000000000000000",
        "private",
        "",
        -22,
    )));
    assert_all_halted(&s);
}

#[test]
fn map_wrapping_range_gets_einval() {
    let (s, ..) = run(&with_bystander(&map_ret(
        "0xfffffffffffff000",
        "2",
        "shared",
        "",
        -22,
    )));
    assert_all_halted(&s);
}

#[test]
fn map_past_end_of_memory_gets_einval() {
    let (s, map, _) = run(&with_bystander(&map_ret(
        "0x1ff000", "2", "private", "", -22,
    )));
    assert_all_halted(&s);
    assert!(
        !map.is_private(Gpa(0x1ff000)),
        "a refused range must not be half-converted"
    );
}

#[test]
fn map_across_slot_gap_gets_einval() {
    let (s, map, kernel) = run(&with_bystander(&map_ret(
        "0x1ff000", "0x202", "private", "", -22,
    )));
    assert_all_halted(&s);
    assert_eq!(map, kernel);
}

#[test]
fn map_unknown_attribute_bits_get_einval() {
    let (s, ..) = run(&with_bystander(&map_ret(
        "0x1000",
        "1",
        "private",
        ", page_size = 3",
        -22,
    )));
    assert_all_halted(&s);
    let (s, ..) = run(&with_bystander(&map_ret(
        "0x1000",
        "1",
        "private",
        ", page_size = 0x100",
        -22,
    )));
    assert_all_halted(&s);
}

#[test]
fn map_2m_page_size_hint_is_not_private() {
    // libkrun's bug: bit 0 decoded as "private". Here it's only a size hint.
    let ops = format!(
        "{}\n{{ op = \"write\", gpa = \"0x1000\", len = 4096, byte = 1 }},",
        map_ret("0x0", "512", "shared", ", page_size = 1", 0)
    );
    let (s, map, _) = run(&with_bystander(&ops));
    assert_all_halted(&s);
    assert!(!map.is_private(Gpa(0)));
}

#[test]
fn fault_storm_every_page_wrong_state_is_resolved() {
    let text = r#"
[vm]
type = "coco"
memory = "8MiB"
vcpus = 2
initial = "private"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x0", len = "4MiB", byte = 0x11, access = "shared" },
  { op = "read", gpa = "0x0", len = "4MiB", expect = 0x11, access = "shared" },
  { op = "halt" },
]
[[vcpu]]
ops = [
  { op = "write", gpa = "0x400000", len = "4MiB", byte = 0x22, access = "shared" },
  { op = "write", gpa = "0x400000", len = "4MiB", byte = 0x33, access = "private" },
  { op = "read", gpa = "0x400000", len = "4MiB", expect = 0x33, access = "private" },
  { op = "halt" },
]
"#;
    let (s, map, kernel) = run(text);
    assert_all_halted(&s);
    assert_eq!(s[0].exits.memory_fault, 1024);
    assert_eq!(s[1].exits.memory_fault, 2048);
    assert_eq!(map, kernel);
    assert!(!map.is_private(Gpa(0)) && map.is_private(Gpa(0x400000)));
}

#[test]
fn two_vcpus_opposite_conversions_same_range_tight_loop() {
    let mut a = String::new();
    let mut b = String::new();
    for _ in 0..200 {
        a += "{ op = \"map\", gpa = \"0x0\", pages = 64, to = \"private\", expect_ret = 0 },\n";
        b += "{ op = \"map\", gpa = \"0x0\", pages = 64, to = \"shared\", expect_ret = 0 },\n";
    }
    let text = format!(
        "[vm]\ntype = \"sw-protected\"\nmemory = \"1MiB\"\nvcpus = 2\n[[vcpu]]\nops = [\n{a}{{ op = \"halt\" }}]\n[[vcpu]]\nops = [\n{b}{{ op = \"halt\" }}]\n"
    );
    let (s, map, kernel) = run(&text);
    assert_all_halted(&s);
    assert_eq!(map, kernel);
    // The range is whole: never half-applied.
    let pages = map.private_pages_in(privmem_core::GpaRange::new(Gpa(0), 64 * 4096).unwrap());
    assert!(
        pages == 0 || pages == 64,
        "half-applied conversion: {pages} private pages"
    );
}

#[test]
fn poisoned_page_faulted_forever_stops_once_with_hwpoison() {
    let text = r#"
[vm]
type = "coco"
memory = "2MiB"
vcpus = 2
initial = "private"
[policy]
max_repeats = 1000
[[poison]]
gpa = "0x5000"
[[vcpu]]
ops = [
  { op = "read", gpa = "0x5000", len = 4096, expect = 0, access = "private" },
  { op = "read", gpa = "0x5000", len = 4096, expect = 0, access = "private" },
  { op = "halt" },
]
[[vcpu]]
ops = [ { op = "write", gpa = "0x0", len = 4096, byte = 1, access = "private" }, { op = "halt" } ]
"#;
    let (s, ..) = run(text);
    let e = s[0].error.as_ref().expect("stopped");
    assert_eq!(e.kind, ErrorKind::Hwpoison);
    assert_eq!(e.gpa, Some(0x5000));
    assert_eq!(
        s[0].exits.memory_fault, 1,
        "EHWPOISON must stop on first sight"
    );
    assert_eq!(s[1].state, RunState::Halted);
}

#[test]
fn runtime_timeout_stops_every_vcpu_promptly() {
    // A large workload with a tiny timeout: every vCPU ends "stopped/timeout"
    // or halted, and the run returns quickly.
    let text = r#"
[vm]
type = "coco"
memory = "64MiB"
initial = "private"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x0", len = "64MiB", byte = 1, access = "shared" },
  { op = "write", gpa = "0x0", len = "64MiB", byte = 2, access = "private" },
  { op = "write", gpa = "0x0", len = "64MiB", byte = 3, access = "shared" },
  { op = "halt" },
]
"#;
    let w = workload::parse("t.toml", text).unwrap();
    let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    let m = Machine::new(hv, &w).unwrap();
    let start = Instant::now();
    let s = m.run(RunOptions {
        timeout: Some(Duration::from_millis(20)),
    });
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        s[0].state == RunState::Halted
            || s[0].error.as_ref().map(|e| e.kind) == Some(ErrorKind::Timeout)
    );
}

#[test]
fn guest_that_never_halts_is_stopped_by_timeout() {
    let text = r#"
[vm]
type = "coco"
memory = "1MiB"
vcpus = 2
[[vcpu]]
ops = [ { op = "spin" } ]
[[vcpu]]
ops = [ { op = "write", gpa = "0x0", len = 4096, byte = 1 }, { op = "halt" } ]
"#;
    let (_hv, m) = common::machine(text);
    let start = Instant::now();
    let s = m.run(RunOptions {
        timeout: Some(Duration::from_millis(200)),
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        s[0].error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Timeout)
    );
    assert_eq!(s[1].state, RunState::Halted);
}
