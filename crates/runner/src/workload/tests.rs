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

[[vcpu]]
ops = [{ op = "halt" }]
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
fn parse_bad_toml_is_toml_error_with_its_line() {
    let e = parse("w.toml", "[vm]\nmemory = 4096\n[vcpu\n").unwrap_err();
    assert!(matches!(e, WorkloadError::Toml { line: 3, .. }), "{e:?}");
    assert!(e.to_string().starts_with("w.toml:3: invalid toml: "), "{e}");
}

#[test]
fn parse_overlapping_slots_is_error() {
    let text = "[vm]\n[[slot]]\ngpa=0\nsize=8192\n[[slot]]\ngpa=4096\nsize=4096\n";
    assert_eq!(key_of(parse("w.toml", text).unwrap_err()), "slot[1].gpa");
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

/// (file text, key path, line, value as quoted, a word of the reason).
const BAD: &[(&str, &str, usize, &str, &str)] = &[
    ("[vm]\nmemory = 4096\nbogus = 1\n", "vm.bogus", 3, "1", "unknown field `bogus`"),
    ("x = 1\n[vm]\nmemory = 4096\n", "x", 1, "1", "unknown field `x`"),
    ("[vm]\nmemory = true\n", "vm.memory", 2, "true", "invalid type"),
    ("[vm]\nmemory = 4096\ntype = \"tdx\"\n", "vm.type", 3, "\"tdx\"", "sw-protected"),
    ("[vm]\nmemory = -4096\n", "vm.memory", 2, "-4096", "negative"),
    ("[vm]\nmemory = \"4 PiB\"\n", "vm.memory", 2, "\"4 PiB\"", "suffix"),
    ("[vm]\nmemory = 4097\n", "vm.memory", 2, "4097", "multiple of 4 KiB"),
    ("[vm]\ntype = \"coco\"\n", "vm.memory", 1, "(missing)", "missing"),
    ("[policy]\ndiscard = true\n", "vm", 1, "(missing)", "[vm]"),
    ("[vm]\nmemory = 4096\n[policy]\nimplicit = \"ask\"\n", "policy.implicit", 4, "\"ask\"", "deny"),
    ("[vm]\nmemory = 4096\n[policy]\nmax_repeats = 0\n", "policy.max_repeats", 4, "0", "between 1"),
    ("[vm]\n[[slot]]\ngpa = 0\nsize = 8192\n[[slot]]\ngpa = 4096\nsize = 4096\n", "slot[1].gpa", 6, "4096", "overlaps slot[0] [0x0, 0x2000)"),
    ("[vm]\n[[slot]]\ngpa = 0\n", "slot[0].size", 2, "(missing)", "missing"),
    ("[vm]\n[[slot]]\nsize = 4096\nguest_memfd = false\nclose_guest_memfd = true\n", "slot[0].close_guest_memfd", 5, "true", "needs guest_memfd"),
    ("[vm]\nmemory = 4096\n[[poison]]\ngpa = \"0x2000\"\n", "poison[0].gpa", 4, "\"0x2000\"", "guest_memfd-backed"),
    ("[vm]\nmemory = 4096\nvcpus = 0\n", "vm.vcpus", 3, "0", "between 1 and 64"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [\n  { op = \"jump\" },\n]\n", "vcpu[0].ops[0].op", 5, "\"jump\"", "unknown variant `jump`"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ gpa = 0 }]\n", "vcpu[0].ops[0].op", 4, "(missing)", "missing"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1, byte = 1, colour = 1 }]\n", "vcpu[0].ops[0].colour", 4, "1", "unknown field `colour`"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1, byte = 1, expect = 1 }]\n", "vcpu[0].ops[0].expect", 4, "1", "op, gpa, len, byte, access"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1 }]\n", "vcpu[0].ops[0].byte", 4, "(missing)", "missing"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"write\", gpa = 0, len = 1, byte = 256 }]\n", "vcpu[0].ops[0].byte", 4, "256", "0..=255"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"read\", gpa = 4096, len = 1, expect = 0 }]\n", "vcpu[0].ops[0].gpa", 4, "4096", "outside guest memory"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"map\", gpa = 0, pages = 1, to = \"shared\", expect_ret = \"0\" }]\n", "vcpu[0].ops[0].expect_ret", 4, "\"0\"", "invalid type"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"map\", gpa = 0, pages = 1, to = \"both\" }]\n", "vcpu[0].ops[0].to", 4, "\"both\"", "private"),
    ("[vm]\nmemory = 4096\n[[vcpu]]\nops = 7\n", "vcpu[0].ops", 4, "7", "invalid type"),
];

#[test]
fn every_error_names_file_key_line_and_value() {
    for &(text, key, line, value, why) in BAD {
        let e = parse("bad.toml", text).expect_err(text);
        let WorkloadError::Key {
            file,
            key: k,
            line: l,
            value: v,
            why: w,
        } = &e
        else {
            panic!("{text:?}: expected a key error, got {e:?}");
        };
        assert_eq!(
            (file.as_str(), k.as_str(), *l, v.as_str()),
            ("bad.toml", key, line, value),
            "{text:?}: {e}"
        );
        assert!(w.contains(why), "{text:?}: reason {w:?} lacks {why:?}");
        let shown = e.to_string();
        let head = format!("bad.toml:{line}: key `{key}` = {value}: ");
        assert!(shown.starts_with(&head), "{shown}");
    }
}

#[test]
fn vcpus_count_differing_from_tables_names_both_numbers() {
    let three_one = "[vm]\nmemory = 4096\nvcpus = 3\n[[vcpu]]\nops = [{ op = \"halt\" }]\n";
    let e = parse("w.toml", three_one).unwrap_err();
    let shown = e.to_string();
    assert_eq!(key_of(e), "vm.vcpus");
    assert!(
        shown.contains("vcpus = 3") && shown.contains("has 1 [[vcpu]] table"),
        "{shown}"
    );
    assert!(shown.starts_with("w.toml:3: "), "{shown}");
    // More tables than vCPUs, and vCPUs with no table at all.
    let one_two = "[vm]\nmemory = 4096\nvcpus = 1\n[[vcpu]]\n[[vcpu]]\n";
    let shown = parse("w.toml", one_two).unwrap_err().to_string();
    assert!(
        shown.contains("vcpus = 1") && shown.contains("has 2 [[vcpu]] tables"),
        "{shown}"
    );
    let two_none = "[vm]\nmemory = 4096\nvcpus = 2\n";
    let shown = parse("w.toml", two_none).unwrap_err().to_string();
    assert!(
        shown.contains("vcpus = 2") && shown.contains("has 0 [[vcpu]] tables"),
        "{shown}"
    );
}

#[test]
fn vcpus_count_equal_to_tables_or_absent_is_accepted() {
    let two = "[vm]\nmemory = 4096\nvcpus = 2\n[[vcpu]]\n[[vcpu]]\nops = [{ op = \"halt\" }]\n";
    let w = parse("w.toml", two).unwrap();
    assert_eq!(w.vcpus, vec![vec![], vec![GuestOp::Halt]]);
    let none = parse("w.toml", "[vm]\nmemory = 4096\n").unwrap();
    assert_eq!(none.vcpus, vec![vec![GuestOp::Halt]]);
    let tables = "[vm]\nmemory = 4096\n[[vcpu]]\n[[vcpu]]\n[[vcpu]]\n";
    assert_eq!(parse("w.toml", tables).unwrap().vcpus.len(), 3);
}

#[test]
fn more_vcpu_tables_than_the_limit_is_error() {
    let text = format!("[vm]\nmemory = 4096\n{}", "[[vcpu]]\n".repeat(65));
    let e = parse("w.toml", &text).unwrap_err();
    assert_eq!(key_of(e), "vcpu");
}

#[test]
fn long_values_are_quoted_on_one_line_and_cut() {
    let ops = "{ op = \"halt\" },\n".repeat(40);
    let text = format!("[vm]\nmemory = 4096\n[[vcpu]]\nops = [\n{ops}]\nextra = 1\n");
    let e = parse("w.toml", &text).unwrap_err();
    let WorkloadError::Key { key, value, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(key, "vcpu[0].extra");
    assert_eq!(value, "1");
    let text =
        format!("[vm]\nmemory = 4096\n[[vcpu]]\nops = [\n{ops}]\n[[vcpu]]\nops = [\n{ops}]\n");
    let w = "[vm]\nmemory = 4096\nvcpus = 1\n".to_string() + &text[22..];
    let shown = parse("w.toml", &w).unwrap_err().to_string();
    assert!(!shown.contains('\n'), "{shown}");
}

#[test]
fn map_arguments_are_the_guests_raw_values() {
    // Outside memory, unaligned, huge: the runtime answers them, not the parser.
    let text = "[vm]\nmemory = 4096\n[[vcpu]]\nops = [{ op = \"map\", gpa = \"0xfec00001\", pages = \"0xffffffffffffffff\", to = \"private\", page_size = 7 }]\n";
    let w = parse("w.toml", text).unwrap();
    assert_eq!(
        w.vcpus[0][0],
        GuestOp::Map {
            gpa: 0xfec0_0001,
            pages: u64::MAX,
            attrs: 0x10 | 7,
            expect_ret: None
        }
    );
}
