//! Host probing, each function saying what it reads: PVM (`/sys`), the
//! CPU's virtualization extensions (`cpuid`), SMM and guest_memfd support
//! (`KVM_CHECK_EXTENSION` on a fresh `/dev/kvm`). Nothing here reads the
//! environment; [`crate::KvmHypervisor::open`] calls none of it.

use privmem_core::Cap;

use crate::guest::Transport;

/// True on a PVM host: the `kvm_pvm` module is loaded (reads whether
/// `/sys/module/kvm_pvm` exists). PVM is software virtualization: guest
/// faults of default VMs are served through `userspace_addr` only, and
/// `vmcall`/`vmmcall` never exit.
pub fn pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
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

/// The hypercall transport for this CPU, from the `cpuid` instruction (no
/// file is read): `vmmcall` with SVM, `vmcall` with VMX, and the port-I/O
/// transport (emulated by the backend) with neither, as under PVM, where
/// `vmcall`/`vmmcall` spin inside `KVM_RUN` and never exit
/// (docs/semantics/host-quirks.md, "Other facts about these hosts").
pub fn transport_from_cpuid() -> Transport {
    // CPUID.1:ECX bit 5 is VMX, CPUID.80000001h:ECX bit 2 is SVM.
    let vmx = std::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0;
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    let svm = max_ext >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    transport_for(CpuVirt { vmx, svm })
}

/// The hardware virtualization extensions a CPU reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuVirt {
    /// Intel VMX.
    pub vmx: bool,
    /// AMD SVM.
    pub svm: bool,
}

/// The transport for a CPU with `virt` (SVM wins if both are reported).
pub fn transport_for(virt: CpuVirt) -> Transport {
    if virt.svm {
        Transport::Vmmcall
    } else if virt.vmx {
        Transport::Vmcall
    } else {
        Transport::PortIo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svm_uses_vmmcall() {
        let virt = CpuVirt {
            svm: true,
            ..CpuVirt::default()
        };
        assert_eq!(transport_for(virt), Transport::Vmmcall);
    }

    #[test]
    fn vmx_uses_vmcall() {
        let virt = CpuVirt {
            vmx: true,
            ..CpuVirt::default()
        };
        assert_eq!(transport_for(virt), Transport::Vmcall);
    }

    #[test]
    fn no_virtualization_is_port_io() {
        assert_eq!(transport_for(CpuVirt::default()), Transport::PortIo);
    }
}
