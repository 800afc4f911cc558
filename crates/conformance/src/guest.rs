//! Running guests: a run loop that turns guest reports and unexpected exits
//! into case failures, and a watchdog that kicks vCPUs out of `run` when a
//! case takes too long (a spinning guest must fail the case, not hang it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use privmem_core::{Exit, GuestOp, GuestReport, Kick, RunError, Vcpu, Vm};

use crate::ctx::{fail, Check, OrFail};

/// How long one guest may run before the watchdog kicks it.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most exits one `drive` handles before giving up.
const MAX_EXITS: usize = 1_000_000;

/// What the run loop does after a handled exit.
pub(crate) enum Next {
    /// Re-enter the guest.
    Continue,
    /// Stop driving (the caller has what it wanted).
    Done,
}

/// Kicks a set of vCPUs once `timeout` has passed, until dropped.
pub(crate) struct Watchdog {
    expired: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts a watchdog over `kicks`.
    pub(crate) fn start(kicks: Vec<Arc<dyn Kick>>, timeout: Duration) -> Watchdog {
        let expired = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let flag = Arc::clone(&expired);
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(timeout) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            flag.store(true, Ordering::SeqCst);
            // Keep kicking: a kick may land between two runs of a vCPU.
            loop {
                kicks.iter().for_each(|k| k.kick());
                if rx.recv_timeout(Duration::from_millis(50)) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            }
        });
        Watchdog {
            expired,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// True once the deadline passed.
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The thread only sleeps and kicks; a panic there changes nothing.
            let _ = t.join();
        }
    }
}

/// The failure for an exit a case did not expect.
pub(crate) fn unexpected(index: u32, exit: &Exit) -> crate::ctx::Stop {
    fail(format!("vcpu {index}: unexpected exit {exit:?}"))
}

/// Runs `vcpu` until it halts, handing every exit except `Hlt` and passing
/// `read` checks to `on_exit`. A failed guest check, a run error or the
/// watchdog's deadline fails the case.
pub(crate) fn drive<V: Vcpu>(
    vcpu: &mut V,
    dog: &Watchdog,
    mut on_exit: impl FnMut(&mut V, Exit) -> Check<Next>,
) -> Check {
    let index = vcpu.index();
    for _ in 0..MAX_EXITS {
        match vcpu.run() {
            Ok(Exit::Hlt) => return Ok(()),
            Ok(Exit::Report(GuestReport::CheckPassed)) => {}
            Ok(Exit::Report(GuestReport::CheckFailed {
                gpa,
                seen,
                expected,
            })) => {
                return Err(fail(format!(
                    "vcpu {index}: guest read {seen:#04x} at {gpa}, expected {expected:#04x}"
                )))
            }
            Ok(Exit::Report(GuestReport::RetMismatch { gpa, ret, expected })) => {
                return Err(fail(format!(
                    "vcpu {index}: map_gpa_range({gpa}) returned {ret} to the guest, expected {expected}"
                )))
            }
            Ok(exit) => match on_exit(vcpu, exit)? {
                Next::Continue => {}
                Next::Done => return Ok(()),
            },
            Err(RunError::Interrupted | RunError::Again) if dog.expired() => {
                return Err(fail(format!(
                    "vcpu {index}: no halt within {}s",
                    RUN_TIMEOUT.as_secs()
                )))
            }
            Err(RunError::Interrupted | RunError::Again) => {}
            Err(e) => return Err(fail(format!("vcpu {index}: KVM_RUN failed: {e:?}"))),
        }
    }
    Err(fail(format!(
        "vcpu {index}: no halt after {MAX_EXITS} exits"
    )))
}

/// Creates vCPU `index` with `ops` loaded.
pub(crate) fn vcpu_with<V: Vm>(vm: &V, index: u32, ops: &[GuestOp]) -> Check<V::Vcpu> {
    let mut vcpu = vm
        .create_vcpu(index)
        .or_fail(format_args!("KVM_CREATE_VCPU({index})"))?;
    vcpu.load_program(ops).or_fail("load_program")?;
    Ok(vcpu)
}

/// Runs `ops` on a new vCPU `index` until it halts (see [`drive`]).
pub(crate) fn run_ops<V: Vm>(
    vm: &V,
    index: u32,
    ops: &[GuestOp],
    on_exit: impl FnMut(&mut V::Vcpu, Exit) -> Check<Next>,
) -> Check {
    let mut vcpu = vcpu_with(vm, index, ops)?;
    let dog = Watchdog::start(vec![vcpu.kicker()], RUN_TIMEOUT);
    drive(&mut vcpu, &dog, on_exit)
}

/// Runs `vcpu` to its next exit other than a passed `read` check, within
/// the timeout.
pub(crate) fn next_exit<V: Vcpu>(vcpu: &mut V) -> Check<Exit> {
    let dog = Watchdog::start(vec![vcpu.kicker()], RUN_TIMEOUT);
    let mut seen = None;
    let mut keep = |_: &mut V, e: Exit| {
        seen = Some(e);
        Ok(Next::Done)
    };
    drive(vcpu, &dog, &mut keep)?;
    Ok(seen.unwrap_or(Exit::Hlt))
}

/// The raw `(gpa, npages, attrs)` of a `KVM_HC_MAP_GPA_RANGE` exit, however
/// strictly privmem decoded it; `None` for another hypercall number.
pub(crate) fn map_args(h: &privmem_core::Hypercall) -> Option<(u64, u64, u64)> {
    use privmem_core::Hypercall;
    match *h {
        // Strict decoding succeeded: `attrs()` re-encodes the raw word exactly.
        Hypercall::MapGpaRange(m) => Some((m.gpa.raw(), m.pages, m.attrs())),
        Hypercall::InvalidMapGpaRange { args, .. } => Some((args[0], args[1], args[2])),
        Hypercall::Other { .. } => None,
    }
}
