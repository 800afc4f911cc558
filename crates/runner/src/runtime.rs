//! The runtime: builds a VM from a workload, runs each vCPU on its own
//! thread through `handle_exit` and the engine, and reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use privmem_core::backend::{
    Cap, GmemRef, Hypervisor, Kick, Region, RegionApi, RunError, SharedKind, UserAddr, Vcpu, Vm,
    MEM_GUEST_MEMFD,
};
use privmem_core::decide::FaultPolicy;
use privmem_core::engine::{ConvertError, Engine, GmemPiece, Origin, SlotBacking};
use privmem_core::error::BackendError;
use privmem_core::exit::{
    hc_ret, Exit, Hypercall, MemoryFault, EXIT_HYPERCALL_MAP_GPA_RANGE, MAP_GPA_RANGE_ENCRYPTED,
};
use privmem_core::trace::{TraceEvent, TraceSink, VcpuScope};
use privmem_core::types::{GmemFlags, GuestMemfd, SlotId, PAGE_SIZE};

use crate::handle::{handle_exit, Decision, ErrorKind, RunState, VcpuError, VcpuState};
use crate::report::Report;
use crate::workload::{Policy, SlotSpec, Workload};
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
}

fn setup<T>(what: impl Into<String>, r: Result<T, BackendError>) -> Result<T, SetupError> {
    r.map_err(|source| SetupError::Backend {
        what: what.into(),
        source,
    })
}

/// Runtime options.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Stop every vCPU after this long.
    pub timeout: Option<Duration>,
}

/// The engine, the loaded vCPUs and the policy of a [`Machine`].
pub type MachineParts<H> = (Arc<Engine<H>>, Vec<VcpuOf<H>>, Policy);
/// The vCPU type of a hypervisor.
pub type VcpuOf<H> = <<H as Hypervisor>::Vm as Vm>::Vcpu;

/// A VM built from a workload, ready to run.
pub struct Machine<H: Hypervisor> {
    /// The engine (owns the VM and slots).
    pub engine: Arc<Engine<H>>,
    vcpus: Vec<<H::Vm as Vm>::Vcpu>,
    policy: Policy,
}

impl<H: Hypervisor> std::fmt::Debug for Machine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// Builds the slot backing for one workload slot.
fn build_slot<V: Vm>(
    vm: &V,
    spec: &SlotSpec,
    id: u16,
) -> Result<SlotBacking<V::Shared>, SetupError> {
    let size = spec.range.len();
    let private_vm = vm.vm_type().has_private_mem();
    let gmem_ok = vm.check_extension(Cap::GuestMemfd).unwrap_or(0) != 0;
    let use_gmem = spec.guest_memfd && ((private_vm && gmem_ok) || vm.has_shared_gmem());
    let (gmem, gmem_only) = if use_gmem {
        let flags = if private_vm {
            GmemFlags(0)
        } else {
            GmemFlags::MMAP.union(GmemFlags::INIT_SHARED)
        };
        let file = setup(
            format!("guest_memfd for slot {id}"),
            vm.create_guest_memfd(size, flags),
        )?;
        (
            Some(GmemPiece {
                file: Arc::new(file),
                offset: 0,
            }),
            !private_vm,
        )
    } else {
        (None, false)
    };
    let shared = if gmem_only {
        None
    } else {
        Some(setup(
            format!("shared memory for slot {id}"),
            vm.create_shared(size, SharedKind::Memfd),
        )?)
    };
    add_region(
        vm,
        spec,
        id,
        gmem.as_ref().map(|g| &*g.file),
        shared.as_ref(),
    )?;
    // A memslot holds no file reference: dropping our handle releases the
    // file and kills the binding (kvm_gmem_release), as a VMM closing its fd.
    let gmem = if spec.close_guest_memfd { None } else { gmem };
    Ok(SlotBacking {
        id: SlotId(id),
        range: spec.range,
        gmem,
        shared,
        gmem_only,
    })
}

fn add_region<V: Vm>(
    vm: &V,
    spec: &SlotSpec,
    id: u16,
    gmem: Option<&GuestMemfd>,
    shared: Option<&V::Shared>,
) -> Result<(), SetupError> {
    let region = Region {
        api: RegionApi::V2,
        slot: u32::from(id),
        flags: if gmem.is_some() { MEM_GUEST_MEMFD } else { 0 },
        gpa: spec.range.start().raw(),
        size: spec.range.len(),
        userspace: match shared {
            Some(mem) => UserAddr::Backing { mem, offset: 0 },
            None => UserAddr::Raw(0),
        },
        gmem: gmem.map_or(GmemRef::Raw(-1), GmemRef::File),
        gmem_offset: 0,
    };
    setup(
        format!("memslot {id} at {}", spec.range),
        vm.set_user_memory_region(&region),
    )
}

impl<H: Hypervisor> Machine<H> {
    /// Creates the VM, its memory, its vCPUs and loads their programs.
    pub fn new(hv: Arc<H>, w: &Workload) -> Result<Machine<H>, SetupError> {
        let vm = Arc::new(setup(
            format!("create {} vm", w.vm_type.name()),
            hv.create_vm(w.vm_type),
        )?);
        // Not every VM can forward MAP_GPA_RANGE; the guest then sees -1000,
        // exactly as on a kernel without the exit enabled.
        let _ = vm.enable_exit_hypercall(EXIT_HYPERCALL_MAP_GPA_RANGE);
        let mut slots = Vec::with_capacity(w.slots.len());
        for (i, spec) in w.slots.iter().enumerate() {
            let id = u16::try_from(i).map_err(|_| SetupError::Backend {
                what: "slots".into(),
                source: BackendError::Invalid {
                    op: "memslot",
                    why: "too many slots".into(),
                },
            })?;
            slots.push(build_slot(&*vm, spec, id)?);
        }
        let engine = Arc::new(Engine::new(hv, vm.clone(), slots, w.policy.engine_config()));
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
            setup(format!("poison {gpa}"), vm.poison_page(*gpa))?;
        }
        let mut vcpus = Vec::with_capacity(w.vcpus.len());
        for (i, ops) in w.vcpus.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let mut vcpu = setup(format!("vcpu {i}"), vm.create_vcpu(idx))?;
            setup(format!("load program of vcpu {i}"), vcpu.load_program(ops))?;
            vcpus.push(vcpu);
        }
        Ok(Machine {
            engine,
            vcpus,
            policy: w.policy,
        })
    }

    /// The engine, the vCPUs (programs loaded) and the policy, for callers
    /// that drive vCPUs themselves with [`run_vcpu`].
    pub fn into_parts(self) -> MachineParts<H> {
        (self.engine, self.vcpus, self.policy)
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
                let policy = self.policy;
                s.spawn(move || {
                    let st = run_vcpu(vcpu, &engine, &policy, &stop);
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

/// One vCPU's run loop: run, decode (in the backend), handle, act, until
/// the vCPU halts, fails or is stopped (`stop` raised, e.g. by a timeout).
pub fn run_vcpu<H: Hypervisor>(
    mut vcpu: <H::Vm as Vm>::Vcpu,
    engine: &Engine<H>,
    policy: &Policy,
    stop: &AtomicBool,
) -> VcpuState {
    run_vcpu_on(&mut vcpu, engine, policy, stop)
}

/// [`run_vcpu`] on a borrowed vCPU, which the caller keeps (e.g. to load
/// another program and run it again, as `privmem bench` does).
pub fn run_vcpu_on<H: Hypervisor>(
    vcpu: &mut <H::Vm as Vm>::Vcpu,
    engine: &Engine<H>,
    policy: &Policy,
    stop: &AtomicBool,
) -> VcpuState {
    let policy: FaultPolicy = policy.fault_policy();
    let mut st = VcpuState::new(vcpu.index(), policy.max_repeats);
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
        let decision = handle_exit(&mut st, &policy, &exit);
        act(vcpu, &mut st, engine, decision);
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

fn act<V: Vcpu, H: Hypervisor>(vcpu: &mut V, st: &mut VcpuState, engine: &Engine<H>, d: Decision) {
    let ret = match d {
        Decision::Resume | Decision::Done => return,
        Decision::CompleteHypercall(ret) => ret,
        Decision::Explicit(m) => {
            let len = m.pages.saturating_mul(PAGE_SIZE);
            match engine.convert(m.gpa, len, m.to_private, Origin::Explicit) {
                Ok(_) => hc_ret::OK,
                Err(_) => hc_ret::EINVAL,
            }
        }
        Decision::Implicit(f) => return implicit(st, engine, &f),
    };
    if let Err(e) = vcpu.complete_hypercall(ret) {
        st.stop(VcpuError::plain(
            ErrorKind::Internal,
            None,
            format!("completing hypercall: {e}"),
        ));
    }
}

fn implicit<H: Hypervisor>(st: &mut VcpuState, engine: &Engine<H>, f: &MemoryFault) {
    match engine.convert(
        f.gpa.page_base(),
        f.size.max(PAGE_SIZE),
        f.private,
        Origin::Implicit,
    ) {
        Ok(_) => {}
        Err(e @ (ConvertError::Refused { .. } | ConvertError::Invalid { .. })) => {
            st.stop(VcpuError::fault(ErrorKind::Unresolvable, f, e.to_string()));
        }
        Err(e) => {
            let msg = format!("{e}: {}", source_chain(&e));
            st.stop(VcpuError::fault(ErrorKind::Internal, f, msg));
        }
    }
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
