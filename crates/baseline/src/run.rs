//! [`raw_run_until_hlt`]: the `exit` benchmark's baseline.

use std::os::fd::AsFd;

use privmem_core::abi::{KVM_EXIT_HLT, KVM_EXIT_IO, OFF_EXIT_REASON};
use privmem_mem::{MapError, Mapping, Share, VolatileMemory, PAGE_SIZE};
use vmm_sys_util::ioctl::ioctl;

use crate::error::BaselineError;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// Runs the vCPU behind `vcpu` (a KVM vCPU fd, e.g. a `privmem_kvm::KvmVcpu`)
/// with bare `KVM_RUN` ioctls until it halts: no decoding, no handling, only
/// a read of `exit_reason` from the vCPU's `kvm_run` page (mapped once per
/// call). Returns the number of `KVM_EXIT_IO` exits. Load the program first
/// (`privmem_core::Vcpu::load_program`).
///
/// # Errors
/// `Mem` if `kvm_run` cannot be mapped (e.g. `vcpu` is not a vCPU fd), `Run`
/// if `KVM_RUN` fails (`EINTR` is retried), `UnexpectedExit` on any exit but
/// I/O and halt, `TooManyExits` after more than `max_exits` exits.
pub fn raw_run_until_hlt(vcpu: &impl AsFd, max_exits: u64) -> Result<u64, BaselineError> {
    let fd = vcpu.as_fd();
    let run = Mapping::file(fd, 0, PAGE_SIZE, Share::Shared)?;
    let slice = run.slice(0, PAGE_SIZE)?;
    let reason = slice
        .get_ref::<u32>(OFF_EXIT_REASON)
        .map_err(|_| MapError::OutOfRange {
            op: "exit_reason",
            offset: OFF_EXIT_REASON as u64,
            len: 4,
            size: PAGE_SIZE,
        })?;
    let mut io = 0u64;
    loop {
        // SAFETY: KVM_RUN takes no argument; the kernel writes only the
        // vCPU's own `kvm_run` page, which we read with volatile loads only.
        if unsafe { ioctl(&fd, KVM_RUN()) } < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BaselineError::Run { io, source });
        }
        match reason.load() {
            KVM_EXIT_IO => io += 1,
            KVM_EXIT_HLT => return Ok(io),
            other => return Err(BaselineError::UnexpectedExit { reason: other, io }),
        }
        if io > max_exits {
            return Err(BaselineError::TooManyExits { max: max_exits });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_vcpu_is_an_error() {
        // A memfd maps fine but KVM_RUN on it is ENOTTY.
        let m = privmem_mem::Memfd::create("t", PAGE_SIZE, privmem_mem::Seal::FixedSize).unwrap();
        let e = raw_run_until_hlt(&m, 1).unwrap_err();
        assert!(
            matches!(&e, BaselineError::Run { io: 0, source } if source.raw_os_error() == Some(25)),
            "{e}"
        );
    }
}
