//! KVM binary statistics (`KVM_GET_STATS_FD`, api.rst 4.133) for
//! diagnostics: per-vCPU counters such as `exits`, `pf_fixed`,
//! `insn_emulation` or `io_exits`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use privmem_core::BackendError;

use crate::sys::os_err;

/// `KVM_GET_STATS_FD` (`_IO(KVMIO, 0xce)`).
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
/// Size of `struct kvm_stats_header`.
const HEADER_LEN: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
const DESC_LEN: usize = 16;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn pread_all(fd: &OwnedFd, off: usize, len: usize) -> Result<Vec<u8>, BackendError> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (off + done) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(os_err("pread(kvm stats)"));
        }
        done += n as usize;
    }
    Ok(buf)
}

/// Reads every statistic of a VM or vCPU fd as `(name, first value)`.
pub fn read_stats(fd: BorrowedFd<'_>) -> Result<Vec<(String, u64)>, BackendError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
    let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD, 0) };
    if raw < 0 {
        return Err(os_err("KVM_GET_STATS_FD"));
    }
    // SAFETY: the ioctl returned a fresh fd that nothing else owns.
    let sfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let hdr = pread_all(&sfd, 0, HEADER_LEN)?;
    let bad = || BackendError::Invalid {
        op: "KVM_GET_STATS_FD",
        why: "malformed stats header".into(),
    };
    let name_size = u32_at(&hdr, 4).ok_or_else(bad)? as usize;
    let num_desc = u32_at(&hdr, 8).ok_or_else(bad)? as usize;
    let desc_offset = u32_at(&hdr, 16).ok_or_else(bad)? as usize;
    let data_offset = u32_at(&hdr, 20).ok_or_else(bad)? as usize;
    let stride = DESC_LEN + name_size;
    let descs = pread_all(&sfd, desc_offset, stride * num_desc)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(stride) {
        let offset = u32_at(d, 8).ok_or_else(bad)? as usize;
        let name = &d[DESC_LEN..];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let value = pread_all(&sfd, data_offset + offset, 8)?;
        let value = u64::from_ne_bytes(value.try_into().map_err(|_| bad())?);
        out.push((String::from_utf8_lossy(&name[..end]).into_owned(), value));
    }
    Ok(out)
}
