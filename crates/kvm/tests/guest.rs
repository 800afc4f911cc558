//! Real guests on /dev/kvm: ops compiled to x86 and run in long mode.

mod common;

use common::*;
use privmem_core::{Access, Exit, Gpa, GuestOp, GuestReport, HostMemory, Hypervisor};

fn write(gpa: u64, len: u64, byte: u8) -> GuestOp {
    GuestOp::Write {
        gpa: Gpa(gpa),
        len,
        byte,
        access: Access::Shared,
    }
}

fn read(gpa: u64, len: u64, expect: u8) -> GuestOp {
    GuestOp::Read {
        gpa: Gpa(gpa),
        len,
        expect,
        access: Access::Shared,
    }
}

#[test]
fn guest_write_pattern_is_visible_through_gmem_mapping() {
    let Some(hv) = kvm_or_skip("guest_write_pattern_is_visible_through_gmem_mapping") else {
        return;
    };
    let g = gmem_guest(&hv, 4 * MIB);
    let ops = [
        write(0x10_0000, 8192, 0xab),
        read(0x10_0000, 8192, 0xab),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    assert_eq!(exits, vec![Exit::Report(GuestReport::CheckPassed)]);
    let map = hv.gmem_mmap(&g.gmem, g.size, true).unwrap();
    let mut buf = vec![0u8; 8192 + 2];
    map.read(0x10_0000 - 1, &mut buf).unwrap();
    assert_eq!(buf[0], 0);
    assert!(buf[1..=8192].iter().all(|b| *b == 0xab));
    assert_eq!(buf[8193], 0);
}
