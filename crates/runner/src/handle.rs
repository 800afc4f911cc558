//! The runner's pure exit handler: `handle_exit(state, exit) -> Decision`.
//! It counts exits and handles what only privmem's own guest programs need
//! (check and sync reports, halts, MMIO, shutdowns). Memory faults and
//! hypercalls go to the engine's public per-exit calls
//! ([`Engine::handle_fault`](privmem_core::engine::Engine::handle_fault),
//! [`Engine::handle_decoded_hypercall`](privmem_core::engine::Engine::handle_decoded_hypercall)),
//! the same an embedding VMM makes, and [`VcpuState::apply`] records their
//! answer. No I/O here, so tests feed it synthetic exits (Firecracker's
//! pattern).

use serde::Serialize;

use privmem_core::engine::{StopReason, VcpuAction};
use privmem_core::exit::{Exit, GuestReport, Hypercall, MemoryFault};
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
}

/// What the runtime must do next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Re-enter the guest.
    Resume,
    /// A memory fault: ask the engine ([`Engine::handle_fault`](privmem_core::engine::Engine::handle_fault)),
    /// record its answer with [`VcpuState::apply`].
    MemoryFault(MemoryFault),
    /// A hypercall: ask the engine
    /// ([`Engine::handle_decoded_hypercall`](privmem_core::engine::Engine::handle_decoded_hypercall))
    /// for `hypercall.ret`, complete it and re-enter.
    Hypercall(Hypercall),
    /// The vCPU is done (`state` says how).
    Done,
}

impl VcpuState {
    /// A fresh running vCPU.
    pub fn new(index: u32) -> VcpuState {
        VcpuState {
            index,
            exits: ExitCounts::default(),
            checks: Checks::default(),
            syncs: Vec::new(),
            state: RunState::Running,
            error: None,
        }
    }

    /// Records the engine's answer to a memory fault: resume, or stop with
    /// the report's kind for the reason.
    pub fn apply(&mut self, action: VcpuAction) -> Decision {
        match action {
            VcpuAction::Resume => Decision::Resume,
            VcpuAction::Poisoned { fault, .. } => {
                let msg = format!(
                    "guest touched hardware-poisoned page {} ({})",
                    fault.gpa,
                    if fault.private { "private" } else { "shared" }
                );
                self.stop(VcpuError::fault(ErrorKind::Hwpoison, &fault, msg))
            }
            VcpuAction::Stop(why) => {
                let kind = ErrorKind::from(&why);
                let err = match why.fault() {
                    Some(f) => VcpuError::fault(kind, f, why.to_string()),
                    None => VcpuError::plain(kind, None, why.to_string()),
                };
                self.stop(err)
            }
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

/// Decides what to do with one exit (memory faults and hypercalls are
/// handed on to the engine).
pub fn handle_exit(st: &mut VcpuState, exit: &Exit) -> Decision {
    st.count(exit);
    match exit {
        Exit::MemoryFault(f) => Decision::MemoryFault(*f),
        Exit::Hypercall(h) => Decision::Hypercall(*h),
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
    }
}

impl From<&StopReason> for ErrorKind {
    fn from(why: &StopReason) -> ErrorKind {
        match why {
            StopReason::Loop { .. } => ErrorKind::FaultLoop,
            StopReason::Denied(_) => ErrorKind::FaultDenied,
            StopReason::Unresolvable { .. } => ErrorKind::Unresolvable,
            StopReason::NotAMemoryFault { .. }
            | StopReason::BadExit(_)
            | StopReason::ConversionFailed { .. } => ErrorKind::Internal,
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
    use privmem_core::exit::{FaultErrno, MmioExit};

    fn fault(gpa: u64, private: bool, errno: FaultErrno) -> MemoryFault {
        MemoryFault {
            gpa: Gpa(gpa),
            size: 4096,
            private,
            errno,
        }
    }

    #[test]
    fn faults_and_hypercalls_go_to_the_engine_counted() {
        let mut st = VcpuState::new(0);
        let f = fault(0x1000, true, FaultErrno::Efault);
        assert_eq!(
            handle_exit(&mut st, &Exit::MemoryFault(f)),
            Decision::MemoryFault(f)
        );
        let h = Hypercall::decode(12, [0x1000, 2, 0x10, 0, 0, 0]);
        assert_eq!(
            handle_exit(&mut st, &Exit::Hypercall(h)),
            Decision::Hypercall(h)
        );
        assert_eq!((st.exits.memory_fault, st.exits.hypercall), (1, 1));
        assert_eq!(st.state, RunState::Running);
    }

    #[test]
    fn poisoned_action_stops_with_hwpoison_and_the_gpa() {
        let mut st = VcpuState::new(0);
        let f = fault(0x300000, true, FaultErrno::Ehwpoison);
        let d = st.apply(VcpuAction::Poisoned {
            gpa: f.gpa,
            fault: f,
        });
        assert_eq!(d, Decision::Done);
        let e = st.error.expect("stopped");
        assert_eq!(
            (e.kind, e.gpa, e.errno),
            (ErrorKind::Hwpoison, Some(0x300000), Some("EHWPOISON"))
        );
    }

    #[test]
    fn stop_reasons_map_to_report_kinds() {
        let f = fault(0x2000, false, FaultErrno::Efault);
        let cases = [
            (
                StopReason::Loop { fault: f, count: 3 },
                ErrorKind::FaultLoop,
            ),
            (StopReason::Denied(f), ErrorKind::FaultDenied),
            (
                StopReason::NotAMemoryFault { errno: 5 },
                ErrorKind::Internal,
            ),
        ];
        for (why, kind) in cases {
            let mut st = VcpuState::new(0);
            st.apply(VcpuAction::Stop(why));
            assert_eq!(st.error.map(|e| e.kind), Some(kind));
        }
        let mut st = VcpuState::new(0);
        assert_eq!(st.apply(VcpuAction::Resume), Decision::Resume);
        assert_eq!(st.state, RunState::Running);
    }

    #[test]
    fn handle_check_failed_marks_failed() {
        let mut st = VcpuState::new(0);
        let r = GuestReport::CheckFailed {
            gpa: Gpa(0x1234),
            seen: 0,
            expected: 0xab,
        };
        assert_eq!(handle_exit(&mut st, &Exit::Report(r)), Decision::Done);
        assert_eq!(st.state, RunState::Failed);
        assert_eq!(st.checks.failed, 1);
        assert!(st.error.unwrap().message.contains("0xab"));
    }

    #[test]
    fn handle_mmio_stops_unresolvable() {
        let mut st = VcpuState::new(0);
        let m = Exit::Mmio(MmioExit {
            gpa: Gpa(0xdead000),
            len: 4,
            write: true,
        });
        handle_exit(&mut st, &m);
        assert_eq!(st.error.map(|e| e.kind), Some(ErrorKind::Unresolvable));
    }

    #[test]
    fn handle_sync_records_tag_and_counts_io() {
        let mut st = VcpuState::new(0);
        handle_exit(&mut st, &Exit::Report(GuestReport::Sync { tag: 7 }));
        assert_eq!(st.syncs, vec![7]);
        assert_eq!(st.exits.io, 1);
    }
}
