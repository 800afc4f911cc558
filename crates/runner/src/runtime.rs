//! The runtime: builds a VM from a workload, runs each vCPU on its own
//! thread through `handle_exit` and the engine, and reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use privmem_core::backend::{Cap, Hypervisor, Kick, RunError, SharedKind, Vcpu, Vm};
use privmem_core::contract::HvBackend;
use privmem_core::engine::{ConvertError, Engine};
use privmem_core::error::BackendError;
use privmem_core::exit::{Exit, Hypercall, EXIT_HYPERCALL_MAP_GPA_RANGE, MAP_GPA_RANGE_ENCRYPTED};
use privmem_core::slot::{GmemBinding, SharedBinding, SlotDesc, SlotError};
use privmem_core::trace::{TraceEvent, TraceSink, VcpuScope};
use privmem_core::types::{GmemFlags, SlotId, PAGE_SIZE};

use crate::handle::{handle_exit, Decision, ErrorKind, RunState, VcpuError, VcpuState};
use crate::report::Report;
use crate::workload::{SlotSpec, Workload};
/// Consecutive EINTR/EAGAIN returns tolerated before the vCPU is stopped.
const MAX_RETRIES: u32 = 100_000;

/// Setup failures (the workload can't run on this backend): exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A backend call failed during setup.
    #[error("setup: {what}")]
    Backend {
        /// What was being set up.
        what: String,
        /// The error.
        #[source]
        source: BackendError,
    },
    /// Initial attributes could not be applied.
    #[error("setup: initial attributes")]
    Convert(#[from] ConvertError),
    /// A memslot could not be added.
    #[error("setup: memslot")]
    Slot(#[from] SlotError),
}

/// Names the setup step `r` came from if it failed; the name is built only
/// then (a setup makes several steps, and `kvm/setup` times them).
fn setup<T>(what: impl FnOnce() -> String, r: Result<T, BackendError>) -> Result<T, SetupError> {
    r.map_err(|source| SetupError::Backend {
        what: what(),
        source,
    })
}

/// Runtime options.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Stop every vCPU after this long.
    pub timeout: Option<Duration>,
}

/// The engine privmem's harness runs: the conversion engine over the full
/// hypervisor traits ([`HvBackend`]).
pub type HvEngine<H> = Engine<HvBackend<H>>;
/// The engine and the loaded vCPUs of a [`Machine`].
pub type MachineParts<H> = (Arc<HvEngine<H>>, Vec<VcpuOf<H>>);
/// The vCPU type of a hypervisor.
pub type VcpuOf<H> = <<H as Hypervisor>::Vm as Vm>::Vcpu;

/// A VM built from a workload, ready to run.
pub struct Machine<H: Hypervisor> {
    /// The engine (owns the VM and slots).
    pub engine: Arc<HvEngine<H>>,
    vcpus: Vec<<H::Vm as Vm>::Vcpu>,
}

impl<H: Hypervisor> std::fmt::Debug for Machine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// The slot description for one workload slot: its guest_memfd and shared
/// memory, created on `vm`.
fn describe_slot<V: Vm>(
    vm: &V,
    spec: &SlotSpec,
    id: u16,
) -> Result<SlotDesc<privmem_core::GuestMemfd, V::Shared>, SetupError> {
    let size = spec.range.len();
    let private_vm = vm.vm_type().has_private_mem();
    let gmem_ok = vm.check_extension(Cap::GuestMemfd).unwrap_or(0) != 0;
    let use_gmem = spec.guest_memfd && ((private_vm && gmem_ok) || vm.has_shared_gmem());
    let gmem = if use_gmem {
        let flags = if private_vm {
            GmemFlags(0)
        } else {
            GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
        };
        let file = setup(
            || format!("guest_memfd for slot {id}"),
            vm.create_guest_memfd(size, flags),
        )?;
        Some(GmemBinding { file, offset: 0 })
    } else {
        None
    };
    // A default VM's MMAP|INIT_SHARED guest_memfd is its only backing.
    let gmem_only = use_gmem && !private_vm;
    let shared = if gmem_only {
        None
    } else {
        let mem = setup(
            || format!("shared memory for slot {id}"),
            vm.create_shared(size, SharedKind::Memfd),
        )?;
        Some(SharedBinding { mem, offset: 0 })
    };
    Ok(SlotDesc {
        id: SlotId(id),
        range: spec.range,
        gmem,
        shared,
    })
}

impl<H: Hypervisor> Machine<H> {
    /// Creates the VM, its memory, its vCPUs and loads their programs.
    pub fn new(hv: Arc<H>, w: &Workload) -> Result<Machine<H>, SetupError> {
        let vm = Arc::new(setup(
            || format!("create {} vm", w.vm_type.name()),
            hv.create_vm(w.vm_type),
        )?);
        // Not every VM can forward MAP_GPA_RANGE; the guest then sees -1000,
        // exactly as on a kernel without the exit enabled.
        let _ = vm.enable_exit_hypercall(EXIT_HYPERCALL_MAP_GPA_RANGE);
        let engine = Arc::new(Engine::new(
            HvBackend::new(hv, vm.clone()),
            w.policy.engine_config(),
        ));
        for (i, spec) in w.slots.iter().enumerate() {
            let id = u16::try_from(i).map_err(|_| SetupError::Backend {
                what: "slots".into(),
                source: BackendError::Invalid {
                    op: "memslot",
                    why: "too many slots".into(),
                },
            })?;
            engine.add_slot(describe_slot(&*vm, spec, id)?)?;
            if spec.close_guest_memfd {
                // A memslot holds no file reference: dropping the only
                // handle releases the file and kills the binding
                // (kvm_gmem_release), as a VMM closing its fd.
                engine.close_gmem(SlotId(id))?;
            }
        }
        if w.initial_private {
            let gmem: Vec<_> = w
                .slots
                .iter()
                .filter(|s| s.guest_memfd)
                .map(|s| s.range)
                .collect();
            engine.init_private(&gmem)?;
        }
        for gpa in &w.poison {
            setup(|| format!("poison {gpa}"), vm.poison_page(*gpa))?;
        }
        let mut vcpus = Vec::with_capacity(w.vcpus.len());
        for (i, ops) in w.vcpus.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let mut vcpu = setup(|| format!("vcpu {i}"), vm.create_vcpu(idx))?;
            setup(
                || format!("load program of vcpu {i}"),
                vcpu.load_program(ops),
            )?;
            vcpus.push(vcpu);
        }
        Ok(Machine { engine, vcpus })
    }

    /// The engine and the vCPUs (programs loaded), for callers
    /// that drive vCPUs themselves with [`run_vcpu`].
    pub fn into_parts(self) -> MachineParts<H> {
        (self.engine, self.vcpus)
    }

    /// Runs every vCPU on its own thread until all are done.
    pub fn run(self, opts: RunOptions) -> Vec<VcpuState> {
        let stop = Arc::new(AtomicBool::new(false));
        let kickers: Vec<Arc<dyn Kick>> = self.vcpus.iter().map(|v| v.kicker()).collect();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let results = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for vcpu in self.vcpus {
                let (engine, stop, done) = (self.engine.clone(), stop.clone(), done_tx.clone());
                let results = &results;
                s.spawn(move || {
                    let st = run_vcpu(vcpu, &engine, &stop);
                    results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(st);
                    let _ = done.send(());
                });
            }
            drop(done_tx);
            watchdog(&done_rx, opts.timeout, &stop, &kickers);
        });
        let mut out = results.into_inner().unwrap_or_else(PoisonError::into_inner);
        out.sort_by_key(|s| s.index);
        out
    }
}

/// Waits for every vCPU; on timeout, raises `stop` and kicks them all.
fn watchdog(
    done: &mpsc::Receiver<()>,
    timeout: Option<Duration>,
    stop: &AtomicBool,
    kickers: &[Arc<dyn Kick>],
) {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let got = match wait {
            Some(w) => done.recv_timeout(w),
            None => done
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(()) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stop.store(true, Ordering::SeqCst);
                kickers.iter().for_each(|k| k.kick());
                // Keep kicking until every vCPU has noticed.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    done.recv_timeout(Duration::from_millis(20))
                {
                    kickers.iter().for_each(|k| k.kick());
                }
                while done.recv().is_ok() {}
                return;
            }
        }
    }
}

/// One vCPU's run loop: run, decode (in the backend), handle, and hand
/// memory faults and hypercalls to the engine's public per-exit calls, until
/// the vCPU halts, fails or is stopped (`stop` raised, e.g. by a timeout).
pub fn run_vcpu<H: Hypervisor>(
    mut vcpu: <H::Vm as Vm>::Vcpu,
    engine: &HvEngine<H>,
    stop: &AtomicBool,
) -> VcpuState {
    run_vcpu_on(&mut vcpu, engine, stop)
}

/// [`run_vcpu`] on a borrowed vCPU, which the caller keeps (e.g. to load
/// another program and run it again, as `privmem bench` does).
pub fn run_vcpu_on<H: Hypervisor>(
    vcpu: &mut <H::Vm as Vm>::Vcpu,
    engine: &HvEngine<H>,
    stop: &AtomicBool,
) -> VcpuState {
    let mut st = VcpuState::new(vcpu.index());
    let mut guard = engine.repeat_guard();
    let mut retries = 0u32;
    let trace = engine.trace_sink();
    let _scope = trace.map(|_| VcpuScope::enter(st.index));
    while st.state == RunState::Running {
        if stop.load(Ordering::SeqCst) {
            st.stop(VcpuError::plain(
                ErrorKind::Timeout,
                None,
                "run exceeded --timeout",
            ));
            break;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                on_run_error(&mut st, e, &mut retries);
                continue;
            }
        };
        retries = 0;
        if let Some(t) = trace {
            trace_exit(t, st.index, &exit);
        }
        if !matches!(exit, Exit::MemoryFault(_)) {
            guard.reset();
        }
        match handle_exit(&mut st, &exit) {
            Decision::Resume | Decision::Done => {}
            Decision::MemoryFault(f) => {
                st.apply(engine.handle_fault(&mut guard, &f));
            }
            Decision::Hypercall(h) => {
                let ret = engine.handle_decoded_hypercall(&mut guard, &h, Some(&mut *vcpu));
                if let Err(e) = vcpu.complete_hypercall(ret) {
                    st.stop(VcpuError::plain(
                        ErrorKind::Internal,
                        None,
                        format!("completing hypercall: {e}"),
                    ));
                }
            }
        }
    }
    if let Some(t) = trace {
        t.record(TraceEvent::VcpuDone { vcpu: st.index });
    }
    st
}

/// Reports the exits a trace shows: memory faults and `MAP_GPA_RANGE`.
fn trace_exit(sink: &dyn TraceSink, vcpu: u32, exit: &Exit) {
    let event = match exit {
        Exit::MemoryFault(f) => TraceEvent::MemoryFault {
            vcpu,
            gpa: f.gpa.raw(),
            size: f.size,
            private: f.private,
            errno: f.errno,
        },
        Exit::Hypercall(Hypercall::MapGpaRange(m)) => TraceEvent::MapRequest {
            vcpu,
            gpa: m.gpa.raw(),
            len: m.pages.saturating_mul(PAGE_SIZE),
            to_private: m.to_private,
            invalid: None,
        },
        Exit::Hypercall(Hypercall::InvalidMapGpaRange { args, error }) => TraceEvent::MapRequest {
            vcpu,
            gpa: args[0],
            len: args[1].saturating_mul(PAGE_SIZE),
            to_private: args[2] & MAP_GPA_RANGE_ENCRYPTED != 0,
            invalid: Some(error.to_string()),
        },
        _ => return,
    };
    sink.record(event);
}

fn on_run_error(st: &mut VcpuState, e: RunError, retries: &mut u32) {
    match e {
        RunError::Interrupted | RunError::Again if *retries < MAX_RETRIES => *retries += 1,
        other => {
            st.stop(VcpuError::plain(
                ErrorKind::Internal,
                None,
                format!("{other}: {}", source_chain(&other)),
            ));
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Builds, runs and reports a workload on `hv`.
pub fn run_workload<H: Hypervisor>(
    hv: Arc<H>,
    w: &Workload,
    opts: RunOptions,
) -> Result<Report, SetupError> {
    let machine = Machine::new(hv, w)?;
    let engine = machine.engine.clone();
    let start = Instant::now();
    let states = machine.run(opts);
    Ok(Report::build(&engine, w, states, start.elapsed()))
}
