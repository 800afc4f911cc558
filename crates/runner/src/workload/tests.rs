//! Parser tests: good files, and bad ones naming the key.

use super::*;
use privmem_core::types::{Gpa, VmType};
use privmem_core::GuestOp;

const GOOD: &str = r#"
[vm]
type = "coco"
memory = "64MiB"
vcpus = 2
initial = "private"

[policy]
implicit = "convert"
discard = true
max_repeats = 3

[[poison]]
gpa = "0x300000"

[[vcpu]]
ops = [
  { op = "write", gpa = "0x100000", len = 4096, byte = 0xab, access = "private" },
  { op = "read",  gpa = "0x100000", len = 4096, expect = 0xab, access = "private" },
  { op = "map",   gpa = "0x100000", pages = 1, to = "shared", expect_ret = 0 },
  { op = "sync",  tag = 1 },
  { op = "halt" },
]
"#;

fn key_of(e: WorkloadError) -> String {
    match e {
        WorkloadError::Key { key, .. } => key,
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn parse_good_workload() {
    let w = parse("w.toml", GOOD).unwrap();
    assert_eq!(w.vm_type, VmType::Coco);
    assert!(w.initial_private);
    assert_eq!(w.vcpus.len(), 2);
    assert_eq!(w.vcpus[0].len(), 5);
    assert_eq!(w.vcpus[1], vec![GuestOp::Halt]);
    assert_eq!(w.slots[0].range.len(), 64 << 20);
    assert_eq!(w.poison, vec![Gpa(0x300000)]);
    assert!(matches!(
        w.vcpus[0][2],
        GuestOp::Map {
            attrs: 0,
            expect_ret: Some(0),
            ..
        }
    ));
}

#[test]
fn parse_unknown_key_names_it() {
    let e = parse("w.toml", "[vm]\nmemory = 4096\nbogus = 1\n").unwrap_err();
    assert_eq!(key_of(e), "vm.bogus");
}

#[test]
fn parse_negative_number_is_error() {
    let e = parse("w.toml", "[vm]\nmemory = -4096\n").unwrap_err();
    assert_eq!(key_of(e), "vm.memory");
}

#[test]
fn parse_overflowing_size_is_error() {
    let e = parse("w.toml", "[vm]\nmemory = \"16777216TiB\"\n").unwrap_err();
    assert_eq!(key_of(e), "vm.memory");
}

#[test]
fn parse_2_pow_64_bytes_is_error() {
    let e = parse("w.toml", "[vm]\nmemory = \"18446744073709551616\"\n").unwrap_err();
    assert_eq!(key_of(e), "vm.memory");
}

#[test]
fn parse_huge_memory_beyond_52_bits_is_error() {
    let e = parse("w.toml", "[vm]\nmemory = \"0xfffffffffffff000\"\n").unwrap_err();
    assert_eq!(key_of(e), "vm.memory");
}

#[test]
fn parse_op_outside_memory_is_error() {
    let text = "[vm]\nmemory = \"1MiB\"\n[[vcpu]]\nops = [{ op = \"write\", gpa = \"0x100000\", len = 1, byte = 1 }]\n";
    assert_eq!(
        key_of(parse("w.toml", text).unwrap_err()),
        "vcpu[0].ops[0].gpa"
    );
}

#[test]
fn parse_default_vm_private_initial_is_error() {
    let e = parse("w.toml", "[vm]\nmemory = 4096\ninitial = \"private\"\n").unwrap_err();
    assert_eq!(key_of(e), "vm.initial");
}

#[test]
fn parse_bad_toml_is_toml_error() {
    assert!(matches!(
        parse("w.toml", "[vm"),
        Err(WorkloadError::Toml { .. })
    ));
}

#[test]
fn parse_overlapping_slots_is_error() {
    let text = "[vm]\n[[slot]]\ngpa=0\nsize=8192\n[[slot]]\ngpa=4096\nsize=4096\n";
    assert_eq!(key_of(parse("w.toml", text).unwrap_err()), "slot");
}

#[test]
fn parse_op_across_slot_gap_is_error() {
    let text = "[vm]\n[[slot]]\ngpa=0\nsize=4096\n[[slot]]\ngpa=8192\nsize=4096\n[[vcpu]]\nops=[{op=\"read\",gpa=0,len=12288,expect=0}]\n";
    assert_eq!(
        key_of(parse("w.toml", text).unwrap_err()),
        "vcpu[0].ops[0].gpa"
    );
}

#[test]
fn parse_byte_out_of_range_is_error() {
    let text = "[vm]\nmemory=4096\n[[vcpu]]\nops=[{op=\"write\",gpa=0,len=1,byte=256}]\n";
    assert_eq!(
        key_of(parse("w.toml", text).unwrap_err()),
        "vcpu[0].ops[0].byte"
    );
}

#[test]
fn parse_size_suffixes() {
    assert_eq!(parse_size("4KiB"), Ok(4096));
    assert_eq!(parse_size("2MiB"), Ok(2 << 20));
    assert_eq!(parse_size("0x1000"), Ok(4096));
    assert!(parse_size("-1").is_err());
    assert!(parse_size("1XB").is_err());
}
