//! [`KvmKick`] and the signal it uses ([`KickSignal`]).
//!
//! A kick sets `kvm_run.immediate_exit`, so the vCPU's next `KVM_RUN`
//! returns `EINTR` at once. A vCPU thread already inside `KVM_RUN` only
//! leaves it early when a signal with a handler arrives; which signal, and
//! whether privmem may install a handler for it, is the caller's choice.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use privmem_core::{BackendError, Kick};

use crate::mem::Mmap;
use crate::sys::os_err;

/// Offset of `kvm_run.immediate_exit`.
const OFF_IMMEDIATE_EXIT: usize = 1;

/// How a kick interrupts a vCPU thread that is inside `KVM_RUN`.
///
/// VMMs use real-time signals for their own vCPU kicks (Firecracker and
/// Cloud Hypervisor use `SIGRTMIN`), so privmem never picks one by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KickSignal {
    /// No signal (the default): no handler is installed, none is sent. A
    /// kick makes the next `KVM_RUN` return at once, but a vCPU already in
    /// the guest returns only at its next exit, so a guest that never exits
    /// cannot be interrupted (a timeout cannot end it).
    #[default]
    None,
    /// privmem installs a no-op handler for this real-time signal
    /// (`SIGRTMIN..=SIGRTMAX`, see [`sigrtmin`]) in
    /// [`crate::KvmHypervisor::open`] and sends it to a vCPU thread inside
    /// `KVM_RUN`. The handler is process-wide and stays installed. `open`
    /// refuses a signal that already has a handler other than privmem's, so
    /// it never replaces one it did not install.
    Install(i32),
    /// The caller already handles this signal (a handler, not `SIG_DFL` or
    /// `SIG_IGN`, checked by [`crate::KvmHypervisor::open`]); privmem only
    /// sends it to a vCPU thread inside `KVM_RUN`. The handler must stay
    /// installed while vCPUs run.
    Caller(i32),
}

/// `SIGRTMIN` of this process's C library (glibc reserves the first few
/// real-time signals, so this is not a constant).
pub fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// The one pointer to `noop_handler` privmem installs and compares: the
/// address of a function is not unique across codegen units, the value of
/// a static is.
static NOOP_HANDLER: extern "C" fn(libc::c_int) = noop_handler;

/// The address of `noop_handler` as `sigaction.sa_sigaction` holds it.
fn noop_address() -> libc::sighandler_t {
    NOOP_HANDLER as libc::sighandler_t
}

/// The current disposition of `sig` (`SIG_DFL`, `SIG_IGN` or a handler).
fn disposition(sig: i32) -> Result<libc::sighandler_t, BackendError> {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null `act` only queries; `old` is a writable sigaction the
    // kernel fills on success.
    if unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) } < 0 {
        return Err(os_err("sigaction"));
    }
    // SAFETY: zero-initialized, and filled by a successful sigaction.
    Ok(unsafe { old.assume_init() }.sa_sigaction)
}

/// Installs `noop_handler` for `sig` (no flags, empty mask).
fn install_noop(sig: i32) -> Result<(), BackendError> {
    // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = noop_address();
    // SAFETY: `sa` is a fully initialized sigaction whose handler is an
    // async-signal-safe no-op; a signal then makes KVM_RUN return EINTR.
    let r = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if r < 0 {
        return Err(os_err("sigaction"));
    }
    Ok(())
}

impl KickSignal {
    /// Checks the signal and, for [`KickSignal::Install`], installs the
    /// handler; the signal number kicks then send.
    ///
    /// # Errors
    /// `Invalid` for a signal out of range (`Install` takes only real-time
    /// signals; `Caller` any catchable one), an `Install` signal with a
    /// foreign handler, or a `Caller` signal without a handler; `Os` if
    /// `sigaction` fails.
    pub(crate) fn prepare(self) -> Result<Option<i32>, BackendError> {
        const OP: &str = "kick signal";
        match self {
            KickSignal::None => Ok(None),
            KickSignal::Install(sig) => {
                if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
                    return Err(BackendError::invalid(
                        OP,
                        format!(
                            "signal {sig} is not a real-time signal ({}..={})",
                            libc::SIGRTMIN(),
                            libc::SIGRTMAX()
                        ),
                    ));
                }
                match disposition(sig)? {
                    h if h == noop_address() => {}
                    libc::SIG_DFL => install_noop(sig)?,
                    _ => {
                        return Err(BackendError::invalid(
                            OP,
                            format!("signal {sig} already has a handler (use KickSignal::Caller)"),
                        ))
                    }
                }
                Ok(Some(sig))
            }
            KickSignal::Caller(sig) => {
                let catchable = (1..=libc::SIGRTMAX()).contains(&sig)
                    && sig != libc::SIGKILL
                    && sig != libc::SIGSTOP;
                if !catchable {
                    return Err(BackendError::invalid(
                        OP,
                        format!("signal {sig} cannot be caught"),
                    ));
                }
                match disposition(sig)? {
                    libc::SIG_DFL | libc::SIG_IGN => Err(BackendError::invalid(
                        OP,
                        format!("signal {sig} has no handler (SIG_DFL or SIG_IGN)"),
                    )),
                    _ => Ok(Some(sig)),
                }
            }
        }
    }
}

/// `kvm_run.immediate_exit` as an atomic.
pub(crate) fn immediate_exit(run: &Mmap) -> &AtomicU8 {
    // SAFETY: offset 1 lies inside the kvm_run mapping (at least one page),
    // `AtomicU8` needs no alignment, and the returned reference cannot outlive
    // `run`. The kernel only reads this byte; all userspace access is atomic.
    unsafe { &*run.as_ptr().add(OFF_IMMEDIATE_EXIT).cast::<AtomicU8>() }
}

/// Interrupts a vCPU: sets `immediate_exit` and, with a kick signal
/// ([`KickSignal`]), signals the thread inside `run`, so the current or next
/// `KVM_RUN` returns EINTR (without a signal: the next one).
#[derive(Debug)]
pub struct KvmKick {
    run: Arc<Mmap>,
    signal: Option<i32>,
    /// The thread currently inside `run`, if any.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl KvmKick {
    pub(crate) fn new(run: Arc<Mmap>, signal: Option<i32>) -> KvmKick {
        KvmKick {
            run,
            signal,
            thread: Mutex::new(None),
        }
    }

    /// Records the calling thread as inside `KVM_RUN` (or, with `false`,
    /// as out of it).
    pub(crate) fn set_running(&self, running: bool) {
        // SAFETY: pthread_self has no preconditions.
        let t = running.then(|| unsafe { libc::pthread_self() });
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// The signal kicks send, if any.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }
}

impl Kick for KvmKick {
    fn kick(&self) {
        immediate_exit(&self.run).store(1, Ordering::SeqCst);
        let Some(sig) = self.signal else {
            return;
        };
        let guard = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = *guard {
            // SAFETY: `t` was recorded by the vCPU thread inside `run` and is
            // cleared (under this lock) before `run` returns, so the thread
            // is alive while we hold the lock; `sig` has a handler
            // (`KickSignal::prepare`).
            unsafe {
                libc::pthread_kill(t, sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_refuses_a_standard_signal() {
        let err = KickSignal::Install(libc::SIGUSR1).prepare().unwrap_err();
        assert!(matches!(err, BackendError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn caller_signal_without_handler_is_refused() {
        // SIGRTMAX - 1 is not used by the test harness.
        let sig = libc::SIGRTMAX() - 1;
        let err = KickSignal::Caller(sig).prepare().unwrap_err();
        assert!(matches!(err, BackendError::Invalid { .. }), "{err:?}");
        assert_eq!(disposition(sig).unwrap(), libc::SIG_DFL);
    }

    #[test]
    fn caller_cannot_name_sigkill() {
        assert!(KickSignal::Caller(libc::SIGKILL).prepare().is_err());
    }

    #[test]
    fn none_touches_nothing() {
        assert_eq!(KickSignal::None.prepare().unwrap(), None);
    }

    #[test]
    fn install_then_foreign_handler_refused_then_caller_accepted() {
        let sig = libc::SIGRTMAX();
        assert_eq!(KickSignal::Install(sig).prepare().unwrap(), Some(sig));
        assert_eq!(disposition(sig).unwrap(), noop_address());
        // Installing again is a no-op; the handler is privmem's own.
        assert_eq!(KickSignal::Install(sig).prepare().unwrap(), Some(sig));
        // A caller's handler (another VMM's) is never replaced.
        extern "C" fn foreign(_: libc::c_int) {}
        // SAFETY: an all-zero sigaction is valid; `foreign` is a no-op.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = foreign as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `sa` is fully initialized.
        let r = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
        assert_eq!(r, 0);
        let err = KickSignal::Install(sig).prepare().unwrap_err();
        assert!(matches!(err, BackendError::Invalid { .. }), "{err:?}");
        assert_eq!(KickSignal::Caller(sig).prepare().unwrap(), Some(sig));
    }
}
