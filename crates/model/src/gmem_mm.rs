//! Memory-management calls on a guest_memfd mapping (Linux 7.3): `mbind`
//! and `get_mempolicy` (the file's NUMA policy, see [`crate::numa`]),
//! `madvise`, and hardware-poison injection (`MADV_HWPOISON`).
//!
//! A [`ModelGmemMapping`] maps the file from offset 0, so mapping offset n
//! is file offset n. As the KVM backend does, a range reaching past the
//! mapping is refused (`Invalid`) before any kernel check: on a real host
//! the call would act on whatever else is mapped there.

use privmem_core::error::Result;
use privmem_core::{Advice, BackendError, Errno, MemPolicy, PAGE_SIZE};

use crate::gmem::ModelGmemMapping;
use crate::gmem_ptes;
use crate::numa;

const OP_MBIND: &str = "mbind";
const OP_GET_MEMPOLICY: &str = "get_mempolicy";
const OP_MADVISE: &str = "madvise";
const OP_HWPOISON: &str = "madvise(MADV_HWPOISON)";

impl ModelGmemMapping {
    /// The backend refusal of a range past the mapping (as the KVM
    /// backend's `memops::range_in`).
    fn inside(&self, offset: u64, len: u64, op: &'static str) -> Result<()> {
        let ok = offset < self.len && offset.checked_add(len).is_some_and(|e| e <= self.len);
        if ok {
            return Ok(());
        }
        Err(BackendError::Invalid {
            op,
            why: format!(
                "{offset:#x}+{len:#x} reaches past the {:#x}-byte mapping (the kernel would act on other memory)",
                self.len
            ),
        })
    }

    /// `mbind(map + offset, len, policy.mode, &policy.nodes, 65, flags)`.
    pub(crate) fn mbind(&self, offset: u64, len: u64, policy: MemPolicy, flags: u32) -> Result<()> {
        self.inside(offset, len, OP_MBIND)?;
        let req = numa::mbind_request(offset, len, policy, flags)
            .map_err(|e| BackendError::os(OP_MBIND, e))?;
        if let Some(m) = req {
            let mut tree = self.file.policy.lock().expect("gmem policy");
            tree.set(m.first, m.end, m.policy);
        }
        Ok(())
    }

    /// `get_mempolicy(.., map + offset, MPOL_F_ADDR)`: the file page's
    /// policy, or `MPOL_DEFAULT`.
    pub(crate) fn get_mempolicy(&self, offset: u64) -> Result<MemPolicy> {
        self.inside(offset, 1, OP_GET_MEMPOLICY)?;
        let tree = self.file.policy.lock().expect("gmem policy");
        Ok(tree.get(offset / PAGE_SIZE).unwrap_or(MemPolicy::DEFAULT))
    }

    /// `madvise(map + offset, len, advice)`: `MADV_COLLAPSE` is EINVAL (a
    /// guest_memfd VMA never allows a huge page), the others succeed (a
    /// shared file mapping's `MADV_DONTNEED` drops only page-table entries:
    /// the next touch sees the same bytes). An unaligned start is EINVAL.
    pub(crate) fn madvise(&self, offset: u64, len: u64, advice: Advice) -> Result<()> {
        self.inside(offset, len, OP_MADVISE)?;
        let err = |e| Err(BackendError::os(OP_MADVISE, e));
        if !offset.is_multiple_of(PAGE_SIZE) {
            return err(Errno::EINVAL);
        }
        let Some(len) = privmem_core::types::checked_align_up(len, PAGE_SIZE) else {
            return err(Errno::EINVAL);
        };
        if len == 0 {
            return Ok(());
        }
        if advice == Advice::Collapse {
            return err(Errno::EINVAL);
        }
        if advice == Advice::DontNeed {
            let end = offset.saturating_add(len).min(self.len) / PAGE_SIZE;
            gmem_ptes::lock(&self.ptes).zap_all(offset / PAGE_SIZE, end);
        }
        Ok(())
    }

    /// `madvise(map + offset, PAGE_SIZE, MADV_HWPOISON)`: the page must be
    /// faultable from the host (`get_user_pages_fast`, which faults it into
    /// this mapping): inside the file, in an `INIT_SHARED` file; otherwise
    /// EFAULT. Then `memory_failure` → `kvm_gmem_error_folio` keeps the
    /// folio, poisoned, and this mapping's entry becomes a hwpoison entry.
    pub(crate) fn poison(&self, offset: u64) -> Result<()> {
        self.inside(offset, PAGE_SIZE, OP_HWPOISON)?;
        let err = |e| Err(BackendError::os(OP_HWPOISON, e));
        if !offset.is_multiple_of(PAGE_SIZE) {
            return err(Errno::EINVAL);
        }
        if offset >= self.file.size() || !self.file.init_shared() {
            return err(Errno::EFAULT);
        }
        let pg = offset / PAGE_SIZE;
        gmem_ptes::lock(&self.ptes).fault_in(pg, pg + 1);
        self.file.poison_page(pg);
        Ok(())
    }
}
