//! The runner's pure exit handler: `handle_exit(state, policy, exit) ->
//! Decision`. It takes memory faults and hypercalls to privmem-core's
//! [`decide`](privmem_core::decide) and adds what only privmem's own guest
//! programs need: exit counters, check and sync reports, and the reasons a
//! vCPU stopped as the report names them. No I/O here, so tests feed it
//! synthetic exits (Firecracker's pattern).

use std::num::NonZeroU32;

use serde::Serialize;

use privmem_core::decide::{
    decide_fault, decide_hypercall, FaultAction, FaultPolicy, FaultStop, HypercallAction,
    RepeatGuard,
};
use privmem_core::exit::{Exit, GuestReport, MapGpaRange, MemoryFault};
use privmem_core::types::Gpa;

/// Why a vCPU stopped (workload.md `error.kind`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A `read` or `expect_ret` check failed.
    CheckFailed,
    /// Policy `deny` refused an implicit conversion.
    FaultDenied,
    /// The same fault repeated `max_repeats` times in a row.
    FaultLoop,
    /// The guest touched a hardware-poisoned page.
    Hwpoison,
    /// A fault no conversion can fix.
    Unresolvable,
    /// The run exceeded `--timeout`.
    Timeout,
    /// Anything else (shutdown, internal error, decode failure, kernel failure).
    Internal,
}

/// A stopped vCPU's error, as reported.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct VcpuError {
    /// The kind.
    pub kind: ErrorKind,
    /// The GPA involved, if any.
    #[serde(serialize_with = "ser_opt_hex")]
    pub gpa: Option<u64>,
    /// The fault size, if a fault.
    pub size: Option<u64>,
    /// The fault's private flag, if a fault.
    pub private: Option<bool>,
    /// The fault's errno name, if a fault.
    pub errno: Option<&'static str>,
    /// A human-readable diagnosis.
    pub message: String,
}

fn ser_opt_hex<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.serialize_str(&format!("{x:#x}")),
        None => s.serialize_none(),
    }
}

impl VcpuError {
    /// An error without a fault.
    pub fn plain(kind: ErrorKind, gpa: Option<u64>, message: impl Into<String>) -> VcpuError {
        VcpuError {
            kind,
            gpa,
            size: None,
            private: None,
            errno: None,
            message: message.into(),
        }
    }
    /// An error about a memory fault.
    pub fn fault(kind: ErrorKind, f: &MemoryFault, message: impl Into<String>) -> VcpuError {
        VcpuError {
            kind,
            gpa: Some(f.gpa.raw()),
            size: Some(f.size),
            private: Some(f.private),
            errno: Some(f.errno.name()),
            message: message.into(),
        }
    }
}

/// Per-exit-kind counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct ExitCounts {
    /// `KVM_EXIT_MEMORY_FAULT`.
    pub memory_fault: u64,
    /// `KVM_EXIT_HYPERCALL`.
    pub hypercall: u64,
    /// `KVM_EXIT_IO` (including privmem's guest reports).
    pub io: u64,
    /// `KVM_EXIT_MMIO`.
    pub mmio: u64,
    /// Everything else (hlt, shutdown, ...).
    pub other: u64,
}

/// Check counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Checks {
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
}

/// A vCPU's final state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Still running.
    Running,
    /// Halted normally.
    Halted,
    /// A check failed.
    Failed,
    /// The runtime stopped it.
    Stopped,
}

/// Everything `handle_exit` knows about one vCPU.
#[derive(Clone, Debug)]
pub struct VcpuState {
    /// Index.
    pub index: u32,
    /// Exit counters.
    pub exits: ExitCounts,
    /// Check counters.
    pub checks: Checks,
    /// Sync tags, in order.
    pub syncs: Vec<u64>,
    /// State.
    pub state: RunState,
    /// Why it stopped.
    pub error: Option<VcpuError>,
    guard: RepeatGuard,
}

/// What the runtime must do next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Re-enter the guest.
    Resume,
    /// Write `hypercall.ret` and re-enter.
    CompleteHypercall(i64),
    /// Run the engine on a `MAP_GPA_RANGE`, then complete with 0 or -22.
    Explicit(MapGpaRange),
    /// Run the engine on the faulting page, then re-enter (or stop if refused).
    Implicit(MemoryFault),
    /// The vCPU is done (`state` says how).
    Done,
}

impl VcpuState {
    /// A fresh running vCPU whose repeat guard trips at `max_repeats`
    /// (take it from the [`FaultPolicy`] passed to [`handle_exit`]).
    pub fn new(index: u32, max_repeats: NonZeroU32) -> VcpuState {
        VcpuState {
            index,
            exits: ExitCounts::default(),
            checks: Checks::default(),
            syncs: Vec::new(),
            state: RunState::Running,
            error: None,
            guard: RepeatGuard::new(max_repeats),
        }
    }

    /// Ends the vCPU with `state` and `error`.
    pub fn finish(&mut self, state: RunState, error: Option<VcpuError>) -> Decision {
        self.state = state;
        self.error = error;
        Decision::Done
    }

    /// Stops the vCPU with an error.
    pub fn stop(&mut self, error: VcpuError) -> Decision {
        self.finish(RunState::Stopped, Some(error))
    }

    fn count(&mut self, exit: &Exit) {
        let e = &mut self.exits;
        match exit {
            Exit::MemoryFault(_) => e.memory_fault += 1,
            Exit::Hypercall(_) => e.hypercall += 1,
            Exit::Io(_) | Exit::Report(_) => e.io += 1,
            Exit::Mmio(_) => e.mmio += 1,
            _ => e.other += 1,
        }
    }
}

/// Decides what to do with one exit.
pub fn handle_exit(st: &mut VcpuState, policy: &FaultPolicy, exit: &Exit) -> Decision {
    st.count(exit);
    if let Exit::MemoryFault(f) = exit {
        return match decide_fault(policy, &mut st.guard, f) {
            FaultAction::Convert(f) => Decision::Implicit(f),
            FaultAction::Stop(why) => {
                let kind = ErrorKind::from(&why);
                st.stop(VcpuError::fault(kind, why.fault(), why.to_string()))
            }
        };
    }
    st.guard.reset();
    match exit {
        Exit::Hypercall(h) => match decide_hypercall(h) {
            HypercallAction::Convert(m) => Decision::Explicit(m),
            HypercallAction::Complete(ret) => Decision::CompleteHypercall(ret),
        },
        Exit::Report(r) => handle_report(st, r),
        Exit::Hlt => st.finish(RunState::Halted, None),
        Exit::Io(_) => Decision::Resume,
        Exit::Mmio(m) => st.stop(VcpuError::plain(
            ErrorKind::Unresolvable,
            Some(m.gpa.raw()),
            format!(
                "guest accessed {} where no memory is mapped (mmio exit)",
                m.gpa
            ),
        )),
        Exit::Shutdown => st.stop(VcpuError::plain(
            ErrorKind::Internal,
            None,
            "guest shut down (triple fault)",
        )),
        Exit::InternalError { suberror } => st.stop(VcpuError::plain(
            ErrorKind::Internal,
            None,
            format!("kvm internal error, suberror {suberror}"),
        )),
        Exit::Unknown(r) => st.stop(VcpuError::plain(
            ErrorKind::Internal,
            None,
            format!("unknown exit reason {r}"),
        )),
        Exit::MemoryFault(_) => Decision::Resume,
    }
}

impl From<&FaultStop> for ErrorKind {
    fn from(why: &FaultStop) -> ErrorKind {
        match why {
            FaultStop::Hwpoison(_) => ErrorKind::Hwpoison,
            FaultStop::Loop { .. } => ErrorKind::FaultLoop,
            FaultStop::Denied(_) => ErrorKind::FaultDenied,
        }
    }
}

fn handle_report(st: &mut VcpuState, r: &GuestReport) -> Decision {
    match *r {
        GuestReport::Sync { tag } => {
            st.syncs.push(tag);
            Decision::Resume
        }
        GuestReport::CheckPassed => {
            st.checks.passed += 1;
            Decision::Resume
        }
        GuestReport::CheckFailed {
            gpa,
            seen,
            expected,
        } => check_failed(
            st,
            gpa,
            format!("check failed at {gpa}: read {seen:#04x}, expected {expected:#04x}"),
        ),
        GuestReport::RetMismatch { gpa, ret, expected } => check_failed(
            st,
            gpa,
            format!("map at {gpa} returned {ret}, expected {expected}"),
        ),
    }
}

fn check_failed(st: &mut VcpuState, gpa: Gpa, message: String) -> Decision {
    st.checks.failed += 1;
    let err = VcpuError::plain(ErrorKind::CheckFailed, Some(gpa.raw()), message);
    st.finish(RunState::Failed, Some(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use privmem_core::decide::ImplicitPolicy;
    use privmem_core::exit::{FaultErrno, Hypercall, MmioExit, PageSizeHint};

    fn new_state() -> VcpuState {
        VcpuState::new(0, FaultPolicy::DEFAULT_MAX_REPEATS)
    }

    fn fault(gpa: u64, private: bool, errno: FaultErrno) -> Exit {
        Exit::MemoryFault(MemoryFault {
            gpa: Gpa(gpa),
            size: 4096,
            private,
            errno,
        })
    }

    #[test]
    fn handle_hwpoison_stops_with_hwpoison_never_converts() {
        let mut st = new_state();
        let d = handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &fault(0x300000, true, FaultErrno::Ehwpoison),
        );
        assert_eq!(d, Decision::Done);
        assert_eq!(st.error.as_ref().map(|e| e.kind), Some(ErrorKind::Hwpoison));
        assert_eq!(st.error.as_ref().and_then(|e| e.gpa), Some(0x300000));
    }

    #[test]
    fn handle_fault_convert_policy_asks_for_implicit_conversion() {
        let mut st = new_state();
        let d = handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &fault(0x1000, true, FaultErrno::Efault),
        );
        assert!(matches!(d, Decision::Implicit(f) if f.private && f.gpa == Gpa(0x1000)));
    }

    #[test]
    fn handle_fault_deny_policy_stops_with_fault_denied() {
        let mut st = new_state();
        let p = FaultPolicy {
            implicit: ImplicitPolicy::Deny,
            ..FaultPolicy::default()
        };
        handle_exit(&mut st, &p, &fault(0x1000, true, FaultErrno::Efault));
        assert_eq!(st.error.map(|e| e.kind), Some(ErrorKind::FaultDenied));
    }

    #[test]
    fn handle_same_fault_max_repeats_times_stops_with_fault_loop() {
        let mut st = new_state();
        let p = FaultPolicy::default();
        let f = fault(0x2000, false, FaultErrno::Efault);
        assert!(matches!(
            handle_exit(&mut st, &p, &f),
            Decision::Implicit(_)
        ));
        assert!(matches!(
            handle_exit(&mut st, &p, &f),
            Decision::Implicit(_)
        ));
        assert_eq!(handle_exit(&mut st, &p, &f), Decision::Done);
        assert_eq!(st.error.map(|e| e.kind), Some(ErrorKind::FaultLoop));
    }

    #[test]
    fn handle_other_exit_between_faults_resets_repeat_guard() {
        let mut st = new_state();
        let p = FaultPolicy::default();
        let f = fault(0x2000, false, FaultErrno::Efault);
        handle_exit(&mut st, &p, &f);
        handle_exit(&mut st, &p, &f);
        handle_exit(&mut st, &p, &Exit::Report(GuestReport::CheckPassed));
        assert!(matches!(
            handle_exit(&mut st, &p, &f),
            Decision::Implicit(_)
        ));
    }

    #[test]
    fn handle_different_faults_do_not_trip_guard() {
        let mut st = new_state();
        let p = FaultPolicy::default();
        for i in 0..10 {
            let d = handle_exit(&mut st, &p, &fault(i * 4096, true, FaultErrno::Efault));
            assert!(matches!(d, Decision::Implicit(_)));
        }
    }

    #[test]
    fn handle_invalid_map_completes_with_einval() {
        let mut st = new_state();
        let d = handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &Exit::Hypercall(Hypercall::decode(12, [1, 1, 0, 0, 0, 0])),
        );
        assert_eq!(d, Decision::CompleteHypercall(-22));
    }

    #[test]
    fn handle_unknown_hypercall_completes_with_enosys() {
        let mut st = new_state();
        let d = handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &Exit::Hypercall(Hypercall::decode(99, [0; 6])),
        );
        assert_eq!(d, Decision::CompleteHypercall(-1000));
    }

    #[test]
    fn handle_valid_map_is_explicit() {
        let mut st = new_state();
        let d = handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &Exit::Hypercall(Hypercall::decode(12, [0x1000, 2, 0x10, 0, 0, 0])),
        );
        assert!(
            matches!(d, Decision::Explicit(m) if m.to_private && m.pages == 2 && m.page_size_hint == PageSizeHint::Size4K)
        );
    }

    #[test]
    fn handle_check_failed_marks_failed() {
        let mut st = new_state();
        let r = GuestReport::CheckFailed {
            gpa: Gpa(0x1234),
            seen: 0,
            expected: 0xab,
        };
        assert_eq!(
            handle_exit(&mut st, &FaultPolicy::default(), &Exit::Report(r)),
            Decision::Done
        );
        assert_eq!(st.state, RunState::Failed);
        assert_eq!(st.checks.failed, 1);
        assert!(st.error.unwrap().message.contains("0xab"));
    }

    #[test]
    fn handle_mmio_stops_unresolvable() {
        let mut st = new_state();
        let m = Exit::Mmio(MmioExit {
            gpa: Gpa(0xdead000),
            len: 4,
            write: true,
        });
        handle_exit(&mut st, &FaultPolicy::default(), &m);
        assert_eq!(st.error.map(|e| e.kind), Some(ErrorKind::Unresolvable));
    }

    #[test]
    fn handle_sync_records_tag_and_counts_io() {
        let mut st = new_state();
        handle_exit(
            &mut st,
            &FaultPolicy::default(),
            &Exit::Report(GuestReport::Sync { tag: 7 }),
        );
        assert_eq!(st.syncs, vec![7]);
        assert_eq!(st.exits.io, 1);
    }
}
