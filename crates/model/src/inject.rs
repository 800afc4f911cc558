//! Fault injection: make the Nth next call of a named operation fail with a
//! chosen errno.
//!
//! An injected failure fires at the point where the real kernel could fail
//! for that reason: after the operation's argument validation (so invalid
//! arguments still get their own errno and do not consume the injection),
//! before any state changes (so a failed call changes nothing, as the kernel
//! guarantees for e.g. `xa_reserve` failures in `KVM_SET_MEMORY_ATTRIBUTES`).
//! For `Run`, it fires on entry, before any guest work; for
//! `PreFaultSlotChange`, at the page it names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use privmem_core::Errno;

/// An operation whose failure can be injected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum InjectOp {
    /// `fallocate` on a guest_memfd (e.g. ENOMEM, EIO, EINTR).
    Fallocate,
    /// `KVM_SET_MEMORY_ATTRIBUTES` (e.g. ENOMEM).
    SetMemoryAttributes,
    /// `KVM_SET_USER_MEMORY_REGION{,2}` (e.g. ENOMEM).
    SetUserMemoryRegion,
    /// `KVM_CREATE_GUEST_MEMFD` (e.g. ENOMEM, EMFILE).
    CreateGuestMemfd,
    /// `KVM_RUN`: EINTR → `RunError::Interrupted`, EAGAIN → `RunError::Again`,
    /// anything else → `RunError::Backend`.
    Run,
    /// `mmap` of a guest_memfd (e.g. ENOMEM).
    Mmap,
    /// Discarding a VM-created shared backing (`fallocate(PUNCH_HOLE)` on
    /// its memfd; e.g. EIO), as a conversion to private does.
    DiscardShared,
    /// `KVM_PRE_FAULT_MEMORY`: the memslot under the nth pre-faulted page
    /// that lies in a memslot is being deleted or moved underneath the
    /// call (`KVM_MEMSLOT_INVALID`), and stays so until the call returns.
    /// The profile decides the outcome, not the armed errno (ignored):
    /// 7.3 EAGAIN (0 if earlier pages were mapped), 6.12 a retry loop that
    /// only a kick (a signal) ends, with EINTR.
    PreFaultSlotChange,
}

#[derive(Debug)]
struct Pending {
    op: InjectOp,
    remaining: u32,
    errno: Errno,
}

/// The injection table, shared by a hypervisor and everything it creates.
#[derive(Debug, Default)]
pub(crate) struct Injector {
    armed: AtomicBool,
    pending: Mutex<Vec<Pending>>,
}

impl Injector {
    /// Arms a failure of the `nth` next call (1 = the next one) of `op`.
    pub(crate) fn arm(&self, op: InjectOp, nth: u32, errno: Errno) {
        let mut p = self.pending.lock().expect("injector lock");
        p.push(Pending {
            op,
            remaining: nth.max(1),
            errno,
        });
        self.armed.store(true, Ordering::Release);
    }

    /// Clears every armed failure.
    pub(crate) fn clear(&self) {
        self.pending.lock().expect("injector lock").clear();
        self.armed.store(false, Ordering::Release);
    }

    /// Counts one call of `op`; returns the errno if this call must fail.
    /// Every armed entry for `op` counts the call; the first to reach zero fires.
    pub(crate) fn check(&self, op: InjectOp) -> Option<Errno> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut p = self.pending.lock().expect("injector lock");
        let mut fired = None;
        for e in p.iter_mut().filter(|e| e.op == op) {
            e.remaining -= 1;
            if e.remaining == 0 && fired.is_none() {
                fired = Some(e.errno);
            }
        }
        p.retain(|e| e.remaining > 0);
        if p.is_empty() {
            self.armed.store(false, Ordering::Release);
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_fires_on_nth_call_only() {
        let inj = Injector::default();
        inj.arm(InjectOp::Fallocate, 2, Errno::ENOMEM);
        assert_eq!(inj.check(InjectOp::Fallocate), None);
        assert_eq!(inj.check(InjectOp::Fallocate), Some(Errno::ENOMEM));
        assert_eq!(inj.check(InjectOp::Fallocate), None);
    }

    #[test]
    fn injector_ignores_other_ops() {
        let inj = Injector::default();
        inj.arm(InjectOp::Run, 1, Errno::EINTR);
        assert_eq!(inj.check(InjectOp::Fallocate), None);
        assert_eq!(inj.check(InjectOp::Run), Some(Errno::EINTR));
    }

    #[test]
    fn injector_clear_disarms() {
        let inj = Injector::default();
        inj.arm(InjectOp::Run, 1, Errno::EINTR);
        inj.clear();
        assert_eq!(inj.check(InjectOp::Run), None);
    }
}
