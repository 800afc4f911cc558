//! `check_extension` reports what a raw `KVM_CHECK_EXTENSION` returns, at
//! system and VM scope.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use common::*;
use privmem_core::{Cap, Hypervisor, Vm, VmType};

const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;

fn raw_probe(fd: BorrowedFd<'_>, cap: Cap) -> i32 {
    // SAFETY: KVM_CHECK_EXTENSION takes its argument by value.
    unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            KVM_CHECK_EXTENSION,
            libc::c_ulong::from(cap.number()),
        )
    }
}

#[test]
fn caps_system_scope_matches_raw_ioctl() {
    let Some(hv) = kvm_or_skip("caps_system_scope_matches_raw_ioctl") else {
        return;
    };
    let dev = std::fs::File::open("/dev/kvm").unwrap();
    for cap in Cap::ALL {
        let raw = raw_probe(dev.as_fd(), cap);
        assert_eq!(
            hv.check_extension(cap).unwrap(),
            raw as u64,
            "{}",
            cap.name()
        );
    }
}

#[test]
fn caps_vm_scope_matches_raw_ioctl() {
    let Some(hv) = kvm_or_skip("caps_vm_scope_matches_raw_ioctl") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    for cap in Cap::ALL {
        let raw = raw_probe(vm.as_fd(), cap);
        assert_eq!(
            vm.check_extension(cap).unwrap(),
            raw as u64,
            "{}",
            cap.name()
        );
    }
}

#[test]
fn caps_exit_hypercall_bit_outside_mask_is_einval() {
    let Some(hv) = kvm_or_skip("caps_exit_hypercall_bit_outside_mask_is_einval") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();

    let err = vm.enable_exit_hypercall(1 << 11).unwrap_err();

    assert_eq!(err.errno(), Some(privmem_core::Errno::EINVAL));
}

#[test]
fn caps_transport_matches_host() {
    let Some(hv) = kvm_or_skip("caps_transport_matches_host") else {
        return;
    };
    let vm = hv.create_vm(VmType::Default).unwrap();
    let t = vm.hypercall_transport();
    assert!(["vmcall", "vmmcall", "port-io"].contains(&t));
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(t, "port-io");
    }
}
