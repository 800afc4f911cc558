//! `map` of ranges outside guest memory (the workload contract): wholly
//! outside, to shared returns 0 (QEMU ignores a TDX firmware's conversions
//! of its MMIO ranges to shared) and to private returns -22; partly outside
//! returns -22 either way, even when the pages inside already have the
//! attribute asked for. Nothing is converted in any of these cases.

use std::time::Duration;

mod common;
use common::machine;
use privmem_core::{Gpa, GpaRange};
use privmem_runner::handle::RunState;
use privmem_runner::runtime::RunOptions;

/// Two 1 MiB slots with a 1 MiB gap between them, everything shared.
const TWO_SLOTS: &str = r#"
[vm]
type = "sw-protected"
initial = "shared"
[[slot]]
gpa = 0
size = "1MiB"
[[slot]]
gpa = "2MiB"
size = "1MiB"
"#;

fn map(gpa: u64, pages: u64, to: &str, ret: i64) -> String {
    format!(
        "{{ op = \"map\", gpa = \"{gpa:#x}\", pages = {pages}, to = \"{to}\", expect_ret = {ret} }}, "
    )
}

/// Runs one vCPU with `ops` on `header`; every `expect_ret` must hold, and
/// the attribute map must end all shared and equal to the kernel's.
fn run_all_shared(header: &str, ops: &[String]) {
    let text = format!(
        "{header}[[vcpu]]\nops = [ {}{{ op = \"halt\" }} ]\n",
        ops.concat()
    );
    let (_hv, m) = machine(&text);
    let engine = m.engine.clone();
    let states = m.run(RunOptions {
        timeout: Some(Duration::from_secs(30)),
    });
    let st = &states[0];
    assert_eq!(st.state, RunState::Halted, "{:?}", st.error);
    assert_eq!(st.checks.failed, 0);
    let map = engine.attr_map();
    let all = GpaRange::new(Gpa(0), 1 << 30).unwrap();
    assert_eq!(map.private_pages_in(all), 0, "nothing may become private");
    assert_eq!(map, engine.vm().attributes());
    assert_eq!(engine.stats().explicit, 0, "no conversion happened");
}

#[test]
fn map_wholly_outside_memory_to_shared_is_0_and_to_private_is_einval() {
    run_all_shared(
        TWO_SLOTS,
        &[
            // In the gap between the slots.
            map(0x100000, 1, "shared", 0),
            map(0x100000, 256, "shared", 0),
            map(0x100000, 1, "private", -22),
            // Above all memory (where a TDX firmware's 32-bit MMIO would be).
            map(0xc000_0000, 16, "shared", 0),
            map(0xc000_0000, 16, "private", -22),
        ],
    );
}

#[test]
fn map_partly_outside_memory_is_einval_even_when_inside_is_already_shared() {
    run_all_shared(
        TWO_SLOTS,
        &[
            // Last page of slot 0 and the first of the gap.
            map(0xff000, 2, "shared", -22),
            map(0xff000, 2, "private", -22),
            // Last page of the gap and the first of slot 1.
            map(0x1ff000, 2, "shared", -22),
            // Slot 0, the whole gap and slot 1.
            map(0, 768, "shared", -22),
            // Past the end of slot 1.
            map(0x2ff000, 2, "shared", -22),
        ],
    );
}

#[test]
fn map_outside_memory_of_a_default_vm_is_0_to_shared_and_einval_to_private() {
    let header = "[vm]\ntype = \"default\"\nmemory = \"1MiB\"\n";
    run_all_shared(
        header,
        &[
            map(0x100000, 1, "shared", 0),
            map(0x100000, 1, "private", -22),
            map(0xff000, 2, "shared", -22),
            // Inside memory: shared is a no-op, private is refused.
            map(0, 1, "shared", 0),
            map(0, 1, "private", -22),
        ],
    );
}
