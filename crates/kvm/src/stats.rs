//! KVM binary statistics (`KVM_GET_STATS_FD`, api.rst 4.133) for
//! diagnostics: per-vCPU counters such as `exits`, `pf_fixed`,
//! `insn_emulation` or `io_exits`.

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use privmem_core::{BackendError, Errno};

use crate::sys::get_stats_fd;

/// Size of `struct kvm_stats_header`.
const HEADER_LEN: usize = size_of::<kvm_stats_header>();
/// Size of `struct kvm_stats_desc` without its name.
const DESC_LEN: usize = size_of::<kvm_stats_desc>();

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn pread_all(file: &File, off: usize, len: usize) -> Result<Vec<u8>, BackendError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off as u64)
        .map_err(|e| BackendError::os("pread(kvm stats)", Errno::from_io(&e)))?;
    Ok(buf)
}

/// Reads every statistic of a VM or vCPU fd as `(name, first value)`.
pub(crate) fn read_stats(fd: BorrowedFd<'_>) -> Result<Vec<(String, u64)>, BackendError> {
    let sfd = File::from(get_stats_fd(fd)?);
    let hdr = pread_all(&sfd, 0, HEADER_LEN)?;
    let bad = || BackendError::invalid("KVM_GET_STATS_FD", "malformed stats header");
    let field = |off| u32_at(&hdr, off).map(|v| v as usize).ok_or_else(bad);
    let name_size = field(offset_of!(kvm_stats_header, name_size))?;
    let num_desc = field(offset_of!(kvm_stats_header, num_desc))?;
    let desc_offset = field(offset_of!(kvm_stats_header, desc_offset))?;
    let data_offset = field(offset_of!(kvm_stats_header, data_offset))?;
    let stride = DESC_LEN + name_size;
    let total = stride.checked_mul(num_desc).ok_or_else(bad)?;
    let descs = pread_all(&sfd, desc_offset, total)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(stride) {
        let offset = u32_at(d, offset_of!(kvm_stats_desc, offset)).ok_or_else(bad)? as usize;
        let name = &d[DESC_LEN..];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let at = data_offset.checked_add(offset).ok_or_else(bad)?;
        let value = pread_all(&sfd, at, 8)?;
        let value = u64::from_ne_bytes(value.try_into().map_err(|_| bad())?);
        out.push((String::from_utf8_lossy(&name[..end]).into_owned(), value));
    }
    Ok(out)
}
