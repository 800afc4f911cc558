//! Host probing: which hypercall transport guest code must use.

use privmem_core::{Cap, Quirks};

use crate::guest::Transport;

/// Environment variable that forces the transport ("vmcall", "vmmcall" or
/// "port-io"), e.g. to exercise the port-I/O path on a hardware-virt host.
pub const TRANSPORT_ENV: &str = "PRIVMEM_HYPERCALL_TRANSPORT";

/// Environment variable forcing the guest_memfd HVA workaround on ("1") or
/// off ("0"); see [`gmem_slots_need_hva`].
pub const GMEM_HVA_ENV: &str = "PRIVMEM_GMEM_HVA";

/// True on a PVM host (the `kvm_pvm` module is loaded).
pub fn pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// True if a guest_memfd-only memslot needs `userspace_addr` to point at a
/// host mmap of the same guest_memfd range for the guest to reach it.
///
/// Measured on the PVM host (6.18.44, shadow paging): a `MMAP|INIT_SHARED`
/// gmem slot with `userspace_addr = 0` turns every guest access into
/// `KVM_EXIT_MMIO`, although upstream 6.18 serves gmem-only slots from the
/// guest_memfd and ignores `userspace_addr` (api.rst 4.142, selftest A13).
/// With the HVA of a shared mmap of the gmem the guest sees the gmem pages.
pub fn gmem_slots_need_hva() -> bool {
    match std::env::var(GMEM_HVA_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => pvm_host(),
    }
}

/// The [`Quirks`] privmem's KVM backend shows on this host: PVM, and the
/// guest_memfd HVA workaround ([`gmem_slots_need_hva`]).
pub fn host_quirks() -> Quirks {
    Quirks {
        pvm: pvm_host(),
        gmem_hva: gmem_slots_need_hva(),
    }
}

/// True if this host's KVM was built with `CONFIG_KVM_SMM`: its
/// `KVM_CAP_MULTI_ADDRESS_SPACE` at system scope is 2 or more (the
/// capability does not exist without SMM, so it reads 0, as under PVM).
/// False when `/dev/kvm` cannot be opened.
pub fn host_smm() -> bool {
    kvm_ioctls::Kvm::new().is_ok_and(|kvm| {
        crate::sys::check_extension(crate::sys::fd_of(&kvm), Cap::MultiAddressSpace.number())
            .is_ok_and(|n| n >= 2)
    })
}

/// True if this host's KVM was built with guest_memfd
/// (`CONFIG_KVM_GUEST_MEMFD`; 6.12: `CONFIG_KVM_PRIVATE_MEM`): its
/// `KVM_CAP_GUEST_MEMFD` at system scope is non-zero. Measured on a PVM
/// host (6.18.44-fc-v1252) that reads 0 and answers `KVM_CREATE_GUEST_MEMFD`
/// with `ENOTTY`, while other PVM hosts of the same version read 1.
/// False when `/dev/kvm` cannot be opened.
pub fn host_guest_memfd() -> bool {
    kvm_ioctls::Kvm::new().is_ok_and(|kvm| {
        crate::sys::check_extension(crate::sys::fd_of(&kvm), Cap::GuestMemfd.number())
            .is_ok_and(|n| n != 0)
    })
}

/// True if this host's KVM has `KVM_SET_MEMORY_ATTRIBUTES`
/// (`CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`): `KVM_CAP_MEMORY_ATTRIBUTES`
/// at system scope is non-zero (it is `KVM_MEMORY_ATTRIBUTE_PRIVATE` with
/// the option, and the capability does not exist without it, as on the
/// PVM hosts). False when `/dev/kvm` cannot be opened.
pub fn host_memory_attributes() -> bool {
    kvm_ioctls::Kvm::new().is_ok_and(|kvm| {
        crate::sys::check_extension(crate::sys::fd_of(&kvm), Cap::MemoryAttributes.number())
            .is_ok_and(|n| n != 0)
    })
}

/// True if this host's KVM can pre-fault guest memory:
/// `KVM_CAP_PRE_FAULT_MEMORY` (`tdp_enabled`; 0 with shadow paging, as
/// under PVM). False when `/dev/kvm` cannot be opened.
pub fn host_pre_fault_memory() -> bool {
    kvm_ioctls::Kvm::new().is_ok_and(|kvm| {
        crate::sys::check_extension(crate::sys::fd_of(&kvm), Cap::PreFaultMemory.number())
            .is_ok_and(|n| n != 0)
    })
}

/// Picks the transport for `KVM_HC_MAP_GPA_RANGE`.
///
/// Under PVM (software virtualization; `kvm_pvm` module loaded, or no
/// svm/vmx CPU flag) `vmcall`/`vmmcall` spin inside `KVM_RUN` and never exit
/// (kernel-semantics.md §0), so guests use port I/O and the backend emulates
/// KVM's hypercall handling. With hardware virtualization the real
/// instruction for the CPU vendor is used.
pub fn detect_transport() -> Transport {
    if let Some(t) = std::env::var(TRANSPORT_ENV).ok().as_deref().and_then(parse) {
        return t;
    }
    if pvm_host() {
        return Transport::PortIo;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    transport_from_cpuinfo(&cpuinfo)
}

fn parse(s: &str) -> Option<Transport> {
    match s {
        "vmcall" => Some(Transport::Vmcall),
        "vmmcall" => Some(Transport::Vmmcall),
        "port-io" => Some(Transport::PortIo),
        _ => None,
    }
}

/// The transport implied by the first `flags` line of `/proc/cpuinfo`.
pub fn transport_from_cpuinfo(cpuinfo: &str) -> Transport {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f)
        .unwrap_or("");
    let has = |name: &str| flags.split_whitespace().any(|f| f == name);
    if has("svm") {
        Transport::Vmmcall
    } else if has("vmx") {
        Transport::Vmcall
    } else {
        Transport::PortIo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_with_svm_uses_vmmcall() {
        let info = "flags\t\t: fpu svm lm\n";
        assert_eq!(transport_from_cpuinfo(info), Transport::Vmmcall);
    }

    #[test]
    fn cpuinfo_with_vmx_uses_vmcall() {
        assert_eq!(transport_from_cpuinfo("flags : vmx\n"), Transport::Vmcall);
    }

    #[test]
    fn cpuinfo_vmmcall_feature_flag_alone_is_port_io() {
        // AMD hosts without SVM still list the `vmmcall` feature flag.
        let info = "flags\t\t: fpu lm vmmcall hypervisor\n";
        assert_eq!(transport_from_cpuinfo(info), Transport::PortIo);
    }
}
