//! `kicker()`: another thread makes the current or next `run` return
//! `RunError::Interrupted`; the vCPU then continues normally.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use privmem_core::{Exit, GuestOp, GuestReport, RunError, Vcpu};

#[test]
fn kick_before_run_interrupts_next_run_once() {
    let Some(hv) = kvm_or_skip("kick_before_run_interrupts_next_run_once") else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mut vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Sync { tag: 5 }, GuestOp::Halt]);

    vcpu.kicker().kick();

    assert_eq!(vcpu.run(), Err(RunError::Interrupted));
    assert_eq!(vcpu.run(), Ok(Exit::Report(GuestReport::Sync { tag: 5 })));
    assert_eq!(vcpu.run(), Ok(Exit::Hlt));
}

#[test]
fn kick_from_other_thread_is_never_lost() {
    let Some(hv) = kvm_or_skip("kick_from_other_thread_is_never_lost") else {
        return;
    };
    let size = 64 * MIB;
    let g = test_guest(&hv, size);
    // A long-running write so the kick very likely lands inside KVM_RUN.
    let ops = [
        write(0, size, 0x01),
        read(size - 4096, 4096, 0x01),
        GuestOp::Halt,
    ];
    let mut vcpu = vcpu_with(&g.vm, 0, &ops);
    let kick = vcpu.kicker();
    let kicker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        kick.kick();
    });

    let mut interrupted = 0;
    let mut exits = Vec::new();
    loop {
        match vcpu.run() {
            Err(RunError::Interrupted) => interrupted += 1,
            Ok(Exit::Hlt) => break,
            Ok(e) => exits.push(e),
            Err(e) => panic!("{e:?}"),
        }
    }
    kicker.join().unwrap();
    if interrupted == 0 {
        // The kick came after the guest halted: the next run must see it.
        assert_eq!(vcpu.run(), Err(RunError::Interrupted));
    } else {
        eprintln!("kick interrupted a running KVM_RUN ({interrupted}x)");
    }
    assert_eq!(exits, vec![Exit::Report(GuestReport::CheckPassed)]);
}
