//! Injected kernel faults (model): after each, the attribute map equals the
//! kernel's view and no data is lost.

use std::sync::atomic::AtomicBool;

mod common;
use common::machine;
use privmem_core::backend::{GmemRef, Region, RegionApi, UserAddr, Vcpu, Vm};
use privmem_core::engine::Origin;
use privmem_core::exit::Exit;
use privmem_core::{Errno, Gpa};
use privmem_model::{InjectOp, ModelShared};
use privmem_runner::handle::{ErrorKind, RunState};
use privmem_runner::runtime::{run_vcpu, RunOptions};

const RW: &str = r#"
[vm]
type = "coco"
memory = "1MiB"
initial = "private"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x1000", len = 8192, byte = 0x5a, access = "private" },
  { op = "write", gpa = "0x3000", len = 4096, byte = 0x11, access = "shared" },
  { op = "read", gpa = "0x1000", len = 8192, expect = 0x5a, access = "private" },
  { op = "read", gpa = "0x3000", len = 4096, expect = 0x11, access = "shared" },
  { op = "halt" },
]
"#;

#[test]
fn run_eintr_and_eagain_are_retried() {
    let (hv, m) = machine(RW);
    hv.inject_failure(InjectOp::Run, 1, Errno::EINTR);
    hv.inject_failure(InjectOp::Run, 3, Errno::EAGAIN);
    hv.inject_failure(InjectOp::Run, 5, Errno::EINTR);
    let engine = m.engine.clone();
    let s = m.run(RunOptions::default());
    assert_eq!(s[0].state, RunState::Halted, "{:?}", s[0].error);
    assert_eq!(s[0].checks.passed, 2);
    assert_eq!(engine.attr_map(), engine.vm().attributes());
}

#[test]
fn slot_deleted_while_vcpu_waits_at_fault_ends_defined() {
    let (_hv, m) = machine(RW);
    let (engine, mut vcpus, policy) = m.into_parts();
    let mut vcpu = vcpus.remove(0);
    // Run until the shared write faults (page 0x3000 is private).
    let fault = loop {
        match vcpu.run().expect("run") {
            Exit::MemoryFault(f) => break f,
            _ => continue,
        }
    };
    assert_eq!(fault.gpa, Gpa(0x3000));
    let delete = Region::<ModelShared> {
        api: RegionApi::V2,
        slot: 0,
        flags: 0,
        gpa: 0,
        size: 0,
        userspace: UserAddr::Raw(0),
        gmem: GmemRef::Raw(-1),
        gmem_offset: 0,
    };
    engine
        .vm()
        .set_user_memory_region(&delete)
        .expect("delete slot 0");
    let st = run_vcpu(vcpu, &engine, &policy, &AtomicBool::new(false));
    // The access can never succeed again; the guard stops it, no hang.
    assert_eq!(st.state, RunState::Stopped);
    let kind = st.error.as_ref().map(|e| e.kind);
    assert!(
        matches!(kind, Some(ErrorKind::FaultLoop | ErrorKind::Unresolvable)),
        "{:?}",
        st.error
    );
    assert_eq!(engine.attr_map(), engine.vm().attributes());
}

#[test]
fn hwpoison_page_later_punched_is_usable_and_zero() {
    let text = r#"
[vm]
type = "coco"
memory = "1MiB"
initial = "private"
[[poison]]
gpa = "0x2000"
[[vcpu]]
ops = [
  { op = "write", gpa = "0x1000", len = 4096, byte = 0x77, access = "private" },
  { op = "write", gpa = "0x2000", len = 4096, byte = 0x22, access = "private" },
  { op = "halt" },
]
"#;
    let (hv, m) = machine(text);
    let (engine, mut vcpus, policy) = m.into_parts();
    let st = run_vcpu(vcpus.remove(0), &engine, &policy, &AtomicBool::new(false));
    assert_eq!(st.error.as_ref().map(|e| e.kind), Some(ErrorKind::Hwpoison));
    // The VMM recovers the page: shared (punch, which clears the poison), then private again.
    let len = 4096;
    engine
        .convert(Gpa(0x2000), len, false, Origin::Explicit)
        .expect("to shared");
    engine
        .convert(Gpa(0x2000), len, true, Origin::Explicit)
        .expect("to private");
    let gmem = engine.slots()[0].gmem.as_ref().expect("gmem");
    let mut page = vec![0xffu8; 4096];
    hv.gmem_read(&gmem.file, 0x2000, &mut page)
        .expect("read recovered page");
    assert!(
        page.iter().all(|&b| b == 0),
        "recovered page must read zeros"
    );
    let mut kept = vec![0u8; 4096];
    hv.gmem_read(&gmem.file, 0x1000, &mut kept)
        .expect("read neighbour");
    assert!(
        kept.iter().all(|&b| b == 0x77),
        "the neighbouring page's data is kept"
    );
    assert_eq!(engine.attr_map(), engine.vm().attributes());
}
