//! Pure decoding of a `struct kvm_run` (as bytes) plus the `KVM_RUN` result
//! into [`Exit`]. Lives in the safe core so it can be unit-tested and fuzzed
//! with arbitrary contents; the KVM backend hands it a view of the real page.
//!
//! Offsets (x86-64, `include/uapi/linux/kvm.h`, measured):
//! ```text
//!   0  request_interrupt_window u8 / immediate_exit u8 / padding
//!   8  exit_reason u32
//!  14  flags u16
//!  32  exit union (256 bytes)
//!        io:           direction u8 @32, size u8 @33, port u16 @34, count u32 @36, data_offset u64 @40
//!        mmio:         phys_addr u64 @32, data [u8;8] @40, len u32 @48, is_write u8 @52
//!        hypercall:    nr u64 @32, args [u64;6] @40..88, ret u64 @88, flags u64 @96
//!        internal:     suberror u32 @32
//!        memory_fault: flags u64 @32, gpa u64 @40, size u64 @48
//! ```

use crate::exit::{DecodeError, Exit, FaultErrno, Hypercall, IoExit, MemoryFault, MmioExit};
use crate::types::Gpa;

/// `KVM_EXIT_IO`.
pub const KVM_EXIT_IO: u32 = 2;
/// `KVM_EXIT_HYPERCALL`.
pub const KVM_EXIT_HYPERCALL: u32 = 3;
/// `KVM_EXIT_HLT`.
pub const KVM_EXIT_HLT: u32 = 5;
/// `KVM_EXIT_MMIO`.
pub const KVM_EXIT_MMIO: u32 = 6;
/// `KVM_EXIT_SHUTDOWN`.
pub const KVM_EXIT_SHUTDOWN: u32 = 8;
/// `KVM_EXIT_INTERNAL_ERROR`.
pub const KVM_EXIT_INTERNAL_ERROR: u32 = 17;
/// `KVM_EXIT_MEMORY_FAULT`.
pub const KVM_EXIT_MEMORY_FAULT: u32 = 39;
/// `EFAULT`.
pub const EFAULT: i32 = 14;
/// `EHWPOISON` on x86-64.
pub const EHWPOISON: i32 = 133;

/// Offset of `exit_reason`.
pub const OFF_EXIT_REASON: usize = 8;
/// Offset of the exit union.
pub const OFF_UNION: usize = 32;
/// Offset of `hypercall.ret`.
pub const OFF_HYPERCALL_RET: usize = 88;
/// Bytes of `kvm_run` the decoder needs (header + union).
pub const RUN_HEADER_LEN: usize = 288;
/// `KVM_EXIT_HYPERCALL_MBZ` = bits 31:1.
const HYPERCALL_MBZ: u64 = 0xffff_fffe;

/// What `ioctl(KVM_RUN)` returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RunResult {
    /// Returned 0.
    Ok,
    /// Returned -1 with this errno.
    Err(i32),
}

fn u8_at(run: &[u8], off: usize) -> Result<u8, DecodeError> {
    run.get(off).copied().ok_or(DecodeError::ShortRun {
        len: run.len(),
        need: off + 1,
    })
}

fn bytes_at<const N: usize>(run: &[u8], off: usize) -> Result<[u8; N], DecodeError> {
    run.get(off..off + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::ShortRun {
            len: run.len(),
            need: off + N,
        })
}

fn u16_at(run: &[u8], off: usize) -> Result<u16, DecodeError> {
    bytes_at::<2>(run, off).map(u16::from_ne_bytes)
}

fn u32_at(run: &[u8], off: usize) -> Result<u32, DecodeError> {
    bytes_at::<4>(run, off).map(u32::from_ne_bytes)
}

fn u64_at(run: &[u8], off: usize) -> Result<u64, DecodeError> {
    bytes_at::<8>(run, off).map(u64::from_ne_bytes)
}

/// Reads `exit_reason`.
pub fn exit_reason(run: &[u8]) -> Result<u32, DecodeError> {
    u32_at(run, OFF_EXIT_REASON)
}

/// Decodes one `KVM_RUN` outcome.
///
/// The memory-fault contract (api.rst, `KVM_EXIT_MEMORY_FAULT`): `memory_fault` is
/// valid **iff** `KVM_RUN` returned -1 with errno EFAULT or EHWPOISON **and**
/// `exit_reason == 39`. Any other failure is [`DecodeError::RunFailed`] and the
/// (possibly stale) `exit_reason` is ignored. Callers must reset `exit_reason`
/// before every `KVM_RUN`, so a stale 39 is never misread.
pub fn decode_exit(result: RunResult, run: &[u8]) -> Result<Exit, DecodeError> {
    let reason = exit_reason(run)?;
    match result {
        RunResult::Err(errno) => decode_failed_run(errno, reason, run),
        RunResult::Ok => decode_ok_run(reason, run),
    }
}

fn decode_failed_run(errno: i32, reason: u32, run: &[u8]) -> Result<Exit, DecodeError> {
    let fault_errno = match errno {
        EFAULT => FaultErrno::Efault,
        EHWPOISON => FaultErrno::Ehwpoison,
        _ => return Err(DecodeError::RunFailed { errno }),
    };
    if reason != KVM_EXIT_MEMORY_FAULT {
        return Err(DecodeError::RunFailed { errno });
    }
    let flags = u64_at(run, OFF_UNION)?;
    let gpa = u64_at(run, OFF_UNION + 8)?;
    let size = u64_at(run, OFF_UNION + 16)?;
    MemoryFault::decode(flags, gpa, size, fault_errno).map(Exit::MemoryFault)
}

fn decode_ok_run(reason: u32, run: &[u8]) -> Result<Exit, DecodeError> {
    Ok(match reason {
        KVM_EXIT_IO => Exit::Io(decode_io(run)?),
        KVM_EXIT_HYPERCALL => Exit::Hypercall(decode_hypercall(run)?),
        KVM_EXIT_HLT => Exit::Hlt,
        KVM_EXIT_MMIO => Exit::Mmio(MmioExit {
            gpa: Gpa(u64_at(run, OFF_UNION)?),
            len: u8::try_from(u32_at(run, OFF_UNION + 16)?).unwrap_or(u8::MAX),
            write: u8_at(run, OFF_UNION + 20)? != 0,
        }),
        KVM_EXIT_SHUTDOWN => Exit::Shutdown,
        KVM_EXIT_INTERNAL_ERROR => Exit::InternalError {
            suberror: u32_at(run, OFF_UNION)?,
        },
        // A memory fault with KVM_RUN returning 0 breaks the contract: report it
        // as unknown rather than trusting the union.
        other => Exit::Unknown(other),
    })
}

/// Decodes `kvm_run.io`. The data lives at `data_offset` from the start of the
/// mapping; a missing or out-of-range offset reads as 0 data for `in`, and is
/// an error for `out`.
fn decode_io(run: &[u8]) -> Result<IoExit, DecodeError> {
    let write = u8_at(run, OFF_UNION)? == 1;
    let size = u8_at(run, OFF_UNION + 1)?;
    let port = u16_at(run, OFF_UNION + 2)?;
    let data_offset = u64_at(run, OFF_UNION + 8)?;
    let mut data = 0u32;
    if write {
        let off = usize::try_from(data_offset).unwrap_or(usize::MAX);
        let n = usize::from(size.min(4));
        let bytes = run.get(off..off.saturating_add(n)).filter(|b| b.len() == n);
        let bytes = bytes.ok_or(DecodeError::ShortRun {
            len: run.len(),
            need: off.saturating_add(n),
        })?;
        let mut buf = [0u8; 4];
        buf[..n].copy_from_slice(bytes);
        data = u32::from_le_bytes(buf);
    }
    Ok(IoExit {
        port,
        write,
        size,
        data,
    })
}

fn decode_hypercall(run: &[u8]) -> Result<Hypercall, DecodeError> {
    let nr = u64_at(run, OFF_UNION)?;
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = u64_at(run, OFF_UNION + 8 + 8 * i)?;
    }
    let flags = u64_at(run, OFF_UNION + 64)?;
    if flags & HYPERCALL_MBZ != 0 {
        return Err(DecodeError::HypercallFlags { nr, flags });
    }
    Ok(Hypercall::decode(nr, args))
}

/// Test and fuzz helper: builds a `kvm_run` byte image.
pub mod build {
    use super::*;

    /// A zeroed `kvm_run` image of `len` bytes (at least [`RUN_HEADER_LEN`]).
    pub fn zeroed(len: usize) -> Vec<u8> {
        vec![0; len.max(RUN_HEADER_LEN)]
    }
    /// Writes `exit_reason`.
    pub fn set_reason(run: &mut [u8], reason: u32) {
        run[OFF_EXIT_REASON..OFF_EXIT_REASON + 4].copy_from_slice(&reason.to_ne_bytes());
    }
    /// Writes a u64 into the exit union at `off` bytes from its start.
    pub fn set_union_u64(run: &mut [u8], off: usize, v: u64) {
        let at = OFF_UNION + off;
        run[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn fault_run(reason: u32, flags: u64, gpa: u64) -> Vec<u8> {
        let mut run = zeroed(4096);
        set_reason(&mut run, reason);
        set_union_u64(&mut run, 0, flags);
        set_union_u64(&mut run, 8, gpa);
        set_union_u64(&mut run, 16, 4096);
        run
    }

    #[test]
    fn decode_efault_with_reason_39_is_memory_fault() {
        let run = fault_run(KVM_EXIT_MEMORY_FAULT, 8, 0xc000_0000);
        let exit = decode_exit(RunResult::Err(EFAULT), &run).unwrap();
        assert_eq!(
            exit,
            Exit::MemoryFault(MemoryFault {
                gpa: Gpa(0xc000_0000),
                size: 4096,
                private: true,
                errno: FaultErrno::Efault
            })
        );
    }

    #[test]
    fn decode_ehwpoison_with_reason_39_is_poison_fault() {
        let run = fault_run(KVM_EXIT_MEMORY_FAULT, 0, 0x1000);
        let exit = decode_exit(RunResult::Err(EHWPOISON), &run).unwrap();
        assert!(matches!(
            exit,
            Exit::MemoryFault(MemoryFault {
                errno: FaultErrno::Ehwpoison,
                private: false,
                ..
            })
        ));
    }

    #[test]
    fn decode_efault_with_stale_reason_is_run_failure() {
        // exit_reason left over from an earlier MMIO exit: not a memory fault.
        let run = fault_run(KVM_EXIT_MMIO, 8, 0x1000);
        assert_eq!(
            decode_exit(RunResult::Err(EFAULT), &run),
            Err(DecodeError::RunFailed { errno: EFAULT })
        );
    }

    #[test]
    fn decode_other_errno_with_reason_39_is_run_failure() {
        let run = fault_run(KVM_EXIT_MEMORY_FAULT, 8, 0x1000);
        assert_eq!(
            decode_exit(RunResult::Err(4), &run),
            Err(DecodeError::RunFailed { errno: 4 })
        );
    }

    #[test]
    fn decode_reason_39_with_success_is_unknown() {
        let run = fault_run(KVM_EXIT_MEMORY_FAULT, 8, 0x1000);
        assert_eq!(decode_exit(RunResult::Ok, &run), Ok(Exit::Unknown(39)));
    }

    #[test]
    fn decode_memory_fault_unknown_flags_is_error() {
        let run = fault_run(KVM_EXIT_MEMORY_FAULT, 8 | 1, 0x1000);
        assert!(matches!(
            decode_exit(RunResult::Err(EFAULT), &run),
            Err(DecodeError::UnknownFaultFlags { .. })
        ));
    }

    #[test]
    fn decode_hypercall_map_gpa_range() {
        let mut run = zeroed(4096);
        set_reason(&mut run, KVM_EXIT_HYPERCALL);
        set_union_u64(&mut run, 0, 12);
        set_union_u64(&mut run, 8, 0x20_0000);
        set_union_u64(&mut run, 16, 512);
        set_union_u64(&mut run, 24, 0x11);
        set_union_u64(&mut run, 64, 1);
        let exit = decode_exit(RunResult::Ok, &run).unwrap();
        assert!(matches!(
            exit,
            Exit::Hypercall(Hypercall::MapGpaRange(m)) if m.to_private && m.pages == 512
        ));
    }

    #[test]
    fn decode_hypercall_mbz_flags_is_error() {
        let mut run = zeroed(4096);
        set_reason(&mut run, KVM_EXIT_HYPERCALL);
        set_union_u64(&mut run, 0, 12);
        set_union_u64(&mut run, 64, 2);
        assert!(matches!(
            decode_exit(RunResult::Ok, &run),
            Err(DecodeError::HypercallFlags { .. })
        ));
    }

    #[test]
    fn decode_io_out_reads_data_at_offset() {
        let mut run = zeroed(8192);
        set_reason(&mut run, KVM_EXIT_IO);
        run[OFF_UNION] = 1;
        run[OFF_UNION + 1] = 4;
        run[OFF_UNION + 2..OFF_UNION + 4].copy_from_slice(&0xe0u16.to_ne_bytes());
        set_union_u64(&mut run, 8, 4096);
        run[4096..4100].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let exit = decode_exit(RunResult::Ok, &run).unwrap();
        assert_eq!(
            exit,
            Exit::Io(IoExit {
                port: 0xe0,
                write: true,
                size: 4,
                data: 0xdead_beef
            })
        );
    }

    #[test]
    fn decode_io_out_with_bad_offset_is_error() {
        let mut run = zeroed(4096);
        set_reason(&mut run, KVM_EXIT_IO);
        run[OFF_UNION] = 1;
        run[OFF_UNION + 1] = 4;
        set_union_u64(&mut run, 8, u64::MAX);
        assert!(matches!(
            decode_exit(RunResult::Ok, &run),
            Err(DecodeError::ShortRun { .. })
        ));
    }

    #[test]
    fn decode_unknown_reason_is_unknown() {
        let mut run = zeroed(4096);
        set_reason(&mut run, 1234);
        assert_eq!(decode_exit(RunResult::Ok, &run), Ok(Exit::Unknown(1234)));
    }

    #[test]
    fn decode_short_buffer_is_error() {
        assert!(matches!(
            decode_exit(RunResult::Ok, &[0u8; 4]),
            Err(DecodeError::ShortRun { .. })
        ));
    }
}
