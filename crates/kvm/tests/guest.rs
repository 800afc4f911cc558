//! Real guests on /dev/kvm: ops compiled to x86 and run in long mode.

mod common;

use std::thread;

use common::*;
use privmem_core::{Exit, Gpa, GuestOp, GuestReport};

#[test]
fn guest_write_pattern_is_visible_to_the_host() {
    let Some(hv) = kvm_or_skip("guest_write_pattern_is_visible_to_the_host") else {
        return;
    };
    let g = test_guest(&hv, 4 * MIB);
    let ops = [
        write(0x10_0000, 8192, 0xab),
        read(0x10_0000, 8192, 0xab),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    assert_eq!(exits, vec![Exit::Report(GuestReport::CheckPassed)]);
    let map = g.host();
    let mut buf = vec![0u8; 8192 + 2];
    map.read(0x10_0000 - 1, &mut buf).unwrap();
    assert_eq!(buf[0], 0);
    assert!(buf[1..=8192].iter().all(|b| *b == 0xab));
    assert_eq!(buf[8193], 0);
}

#[test]
fn guest_reads_zeros_in_punched_page_and_old_data_elsewhere() {
    let Some(hv) = kvm_or_skip("guest_reads_zeros_in_punched_page_and_old_data_elsewhere") else {
        return;
    };
    let g = test_guest(&hv, 4 * MIB);
    let map = g.host();
    // Host writes 3 pages at 1 MiB, then punches the middle one.
    map.fill(0x10_0000, 3 * 4096, 0x5a).unwrap();
    g.punch(&hv, 0x10_1000, 4096);
    let ops = [
        read(0x10_0000, 4096, 0x5a),
        read(0x10_1000, 4096, 0x00),
        read(0x10_2000, 4096, 0x5a),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    assert_eq!(exits, vec![Exit::Report(GuestReport::CheckPassed); 3]);
}

#[test]
fn guest_punch_after_guest_write_reads_zero() {
    let Some(hv) = kvm_or_skip("guest_punch_after_guest_write_reads_zero") else {
        return;
    };
    let g = test_guest(&hv, 4 * MIB);
    let mut vcpu = vcpu_with(
        &g.vm,
        0,
        &[
            write(0x20_0000, 8192, 0x77),
            GuestOp::Halt,
            read(0x20_0000, 4096, 0x00),
            read(0x20_1000, 4096, 0x77),
            GuestOp::Halt,
        ],
    );
    assert_eq!(run_to_hlt(&mut vcpu), vec![]);

    // The guest has the page mapped; PUNCH_HOLE must zap it.
    g.punch(&hv, 0x20_0000, 4096);

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::CheckPassed); 2]
    );
}

#[test]
fn guest_two_vcpus_fill_and_check_their_own_halves() {
    let Some(hv) = kvm_or_skip("guest_two_vcpus_fill_and_check_their_own_halves") else {
        return;
    };
    let g = test_guest(&hv, 8 * MIB);
    let half = 4 * MIB;
    let handles: Vec<_> = (0..2u32)
        .map(|i| {
            let base = u64::from(i) * half;
            let byte = 0x10 + i as u8;
            let ops = [
                write(base, half, byte),
                read(base, half, byte),
                GuestOp::Halt,
            ];
            let mut vcpu = vcpu_with(&g.vm, i, &ops);
            thread::spawn(move || run_to_hlt(&mut vcpu))
        })
        .collect();

    for h in handles {
        assert_eq!(
            h.join().unwrap(),
            vec![Exit::Report(GuestReport::CheckPassed)]
        );
    }
    let map = g.host();
    let mut b = [0u8; 2];
    map.read(half - 1, &mut b).unwrap();
    assert_eq!(b, [0x10, 0x11]);
}

#[test]
fn guest_failed_check_reports_exact_address_and_bytes() {
    let Some(hv) = kvm_or_skip("guest_failed_check_reports_exact_address_and_bytes") else {
        return;
    };
    let g = test_guest(&hv, 4 * MIB);
    let map = g.host();
    // One bad byte in the middle of a qword, 3 qwords + 5 bytes into the range.
    let bad = 0x30_0000 + 29;
    let ops = [
        write(0x30_0000, 100, 0xee),
        GuestOp::Sync { tag: 1 },
        read(0x30_0000, 100, 0xee),
        GuestOp::Sync { tag: 2 },
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);
    assert_eq!(
        vcpu_next(&mut vcpu),
        Exit::Report(GuestReport::Sync { tag: 1 })
    );
    map.write(bad, &[0x42]).unwrap();

    let exits = run_to_hlt(&mut vcpu);

    let failed = GuestReport::CheckFailed {
        gpa: Gpa(bad),
        seen: 0x42,
        expected: 0xee,
    };
    assert_eq!(exits, vec![Exit::Report(failed)]);
    // The guest halts forever: no Sync 2 ever comes.
    assert_eq!(run_to_hlt(&mut vcpu), vec![]);
}

#[test]
fn guest_failed_check_in_tail_bytes_reports_address() {
    let Some(hv) = kvm_or_skip("guest_failed_check_in_tail_bytes_reports_address") else {
        return;
    };
    let g = test_guest(&hv, 4 * MIB);
    // 13 bytes: one qword + 5 tail bytes; last byte never written (0).
    let ops = [
        write(0x1001, 12, 0x99),
        read(0x1001, 13, 0x99),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    let failed = GuestReport::CheckFailed {
        gpa: Gpa(0x1001 + 12),
        seen: 0,
        expected: 0x99,
    };
    assert_eq!(exits, vec![Exit::Report(failed)]);
}

#[test]
fn guest_touches_page_near_top_of_64gib_sparse_slot() {
    let Some(hv) = kvm_or_skip("guest_touches_page_near_top_of_64gib_sparse_slot") else {
        return;
    };
    let size = 64 << 30;
    let g = test_guest(&hv, size);
    let top_page = size - 2 * 4096;
    let ops = [
        write(top_page, 4096, 0xc3),
        read(top_page, 4096, 0xc3),
        read(top_page + 4096, 4096, 0),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let exits = run_to_hlt(&mut vcpu);

    assert_eq!(exits, vec![Exit::Report(GuestReport::CheckPassed); 2]);
    let (area_gpa, _) = vcpu.runtime_area().unwrap();
    assert!(
        area_gpa >= size,
        "runtime area {area_gpa:#x} inside workload memory"
    );
    let map = g.host();
    let mut b = [0u8; 1];
    map.read(top_page + 4095, &mut b).unwrap();
    assert_eq!(b, [0xc3]);
}

#[test]
fn guest_sync_reports_tag() {
    let Some(hv) = kvm_or_skip("guest_sync_reports_tag") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let tag = 0xdead_beef_0bad_f00d;
    let mut vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Sync { tag }, GuestOp::Halt]);

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::Sync { tag })]
    );
}

#[test]
fn guest_sync_tags_at_the_32_bit_boundary_are_exact() {
    let Some(hv) = kvm_or_skip("guest_sync_tags_at_the_32_bit_boundary_are_exact") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    // u32::MAX travels as port data; u32::MAX + 1 through RBX.
    let tags = [0, u64::from(u32::MAX), u64::from(u32::MAX) + 1];
    let mut ops: Vec<GuestOp> = tags.iter().map(|&tag| GuestOp::Sync { tag }).collect();
    ops.push(GuestOp::Halt);
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    let want: Vec<Exit> = tags
        .iter()
        .map(|&tag| Exit::Report(GuestReport::Sync { tag }))
        .collect();
    assert_eq!(run_to_hlt(&mut vcpu), want);
}

#[test]
fn guest_access_without_memslot_is_mmio_exit() {
    let Some(hv) = kvm_or_skip("guest_access_without_memslot_is_mmio_exit") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    // 1 GiB has no memslot: a shared access there is MMIO (docs/semantics/fault-path.md, step 2).
    let mut vcpu = vcpu_with(&g.vm, 0, &[write(1 << 30, 1, 0x11), GuestOp::Halt]);

    let exit = vcpu_next(&mut vcpu);

    assert!(matches!(exit, Exit::Mmio(m) if m.gpa == Gpa(1 << 30) && m.write));
}

#[test]
fn guest_mmio_read_completes_with_all_ones() {
    let Some(hv) = kvm_or_skip("guest_mmio_read_completes_with_all_ones") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    // Write then read 8 bytes where no memslot exists: two MMIO exits. The
    // read must not see the write's data left in kvm_run.mmio.data.
    let ops = [
        write(1 << 30, 8, 0x01),
        read(1 << 30, 8, 0xff),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);

    assert!(matches!(vcpu_next(&mut vcpu), Exit::Mmio(m) if m.write));
    assert!(matches!(vcpu_next(&mut vcpu), Exit::Mmio(m) if !m.write));

    assert_eq!(
        run_to_hlt(&mut vcpu),
        vec![Exit::Report(GuestReport::CheckPassed)]
    );
}
