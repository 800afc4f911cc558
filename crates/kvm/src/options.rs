//! [`KvmOptions`]: what [`crate::KvmHypervisor::open`] needs to know about
//! the host and the process, as explicit values. `open` itself reads no
//! environment variable and no file, and changes no process-wide state
//! unless these options say so.

use privmem_core::Quirks;

use crate::caps;
use crate::guest::Transport;
use crate::kick::KickSignal;

/// How privmem's KVM backend runs on this host. `Default` is upstream KVM
/// with nothing emulated and no kick signal (see each field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmOptions {
    /// How the host's KVM deviates from upstream ([`Quirks::pvm`]) and the
    /// opt-in `userspace_addr` emulation ([`Quirks::gmem_hva`]). Default:
    /// none. With `gmem_hva` off, a caller's `userspace_addr` always reaches
    /// KVM unchanged.
    pub quirks: Quirks,
    /// How guest code issues `KVM_HC_MAP_GPA_RANGE`. `None` (the default)
    /// picks it: the port-I/O transport (emulated by the backend) when
    /// `quirks.pvm` is set or the CPU has neither SVM nor VMX, else
    /// `vmmcall` on SVM and `vmcall` on VMX (from the `cpuid` instruction;
    /// no file is read).
    pub transport: Option<Transport>,
    /// How a kick interrupts a vCPU thread inside `KVM_RUN`. Default:
    /// [`KickSignal::None`] (no signal handler is installed or sent).
    pub kick: KickSignal,
}

impl KvmOptions {
    /// The options this host needs, found by looking at it: reads whether
    /// `/sys/module/kvm_pvm` exists (nothing else; no environment). On a PVM
    /// host it sets `quirks.pvm` and opts into the `gmem_hva` emulation
    /// (without it a gmem-only slot with `userspace_addr = 0` is unreachable
    /// there: every access is `KVM_EXIT_MMIO`). The transport stays `None`
    /// (picked as documented on the field) and the kick stays
    /// [`KickSignal::None`]: the process decides its signals.
    pub fn probe() -> KvmOptions {
        let pvm = caps::pvm_host();
        KvmOptions {
            quirks: Quirks { pvm, gmem_hva: pvm },
            ..KvmOptions::default()
        }
    }

    /// These options with `kick`.
    #[must_use]
    pub fn with_kick(self, kick: KickSignal) -> KvmOptions {
        KvmOptions { kick, ..self }
    }

    /// These options with the transport forced to `transport`.
    #[must_use]
    pub fn with_transport(self, transport: Transport) -> KvmOptions {
        KvmOptions {
            transport: Some(transport),
            ..self
        }
    }

    /// The transport guest code will use (see [`KvmOptions::transport`]).
    pub fn resolved_transport(&self) -> Transport {
        match self.transport {
            Some(t) => t,
            None if self.quirks.pvm => Transport::PortIo,
            None => caps::transport_from_cpuid(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_upstream_without_signal() {
        let o = KvmOptions::default();
        assert!(o.quirks.is_upstream());
        assert_eq!(o.kick, KickSignal::None);
        assert_eq!(o.transport, None);
    }

    #[test]
    fn pvm_picks_port_io_unless_forced() {
        let pvm = KvmOptions {
            quirks: Quirks::PVM,
            ..KvmOptions::default()
        };
        assert_eq!(pvm.resolved_transport(), Transport::PortIo);
        let forced = pvm.with_transport(Transport::Vmcall);
        assert_eq!(forced.resolved_transport(), Transport::Vmcall);
    }
}
