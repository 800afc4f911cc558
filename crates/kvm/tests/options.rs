//! `KvmOptions`: no process-wide state unless asked (no kick handler by
//! default), the kick signal as the caller chose it, and emulations
//! reported by the VM that used them.
//!
//! No test in this binary may install a handler for `SIGRTMIN`: the first
//! test checks that nothing did.

mod common;

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use privmem_core::exit::EXIT_HYPERCALL_MAP_GPA_RANGE;
use privmem_core::{Emulations, Exit, GuestOp, Hypervisor, Quirks, RunError, Vcpu, Vm, VmType};
use privmem_kvm::{sigrtmin, KickSignal, KvmOptions};

/// The current handler of `sig` (`SIG_DFL`, `SIG_IGN` or an address).
fn disposition(sig: i32) -> libc::sighandler_t {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null `act` only queries; `old` is writable.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: zeroed, then filled by the successful call.
    unsafe { old.assume_init() }.sa_sigaction
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting_handler(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// The one pointer to [`counting_handler`] (function addresses are not
/// unique across codegen units; a static's value is).
static COUNTING: extern "C" fn(libc::c_int) = counting_handler;

/// Installs [`counting_handler`] for `sig`, as a VMM installs its own.
fn install_own_handler(sig: i32) {
    // SAFETY: an all-zero sigaction is valid; the handler is async-signal-safe.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = COUNTING as libc::sighandler_t;
    // SAFETY: `sa` is fully initialized.
    let r = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0);
}

#[test]
fn default_options_install_no_kick_handler() {
    let Some(hv) = kvm_with_or_skip(
        "default_options_install_no_kick_handler",
        KvmOptions::default(),
    ) else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let mut vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Sync { tag: 1 }, GuestOp::Halt]);
    vcpu.kicker().kick();
    // Without a signal a kick still ends the next entry.
    assert_eq!(vcpu.run(), Err(RunError::Interrupted));
    run_to_hlt(&mut vcpu);

    assert_eq!(disposition(sigrtmin()), libc::SIG_DFL);
    assert!(hv.quirks().is_upstream());
}

#[test]
fn install_refuses_a_signal_the_caller_handles() {
    let sig = libc::SIGRTMAX() - 5;
    install_own_handler(sig);
    let options = KvmOptions::default().with_kick(KickSignal::Install(sig));
    match privmem_kvm::KvmHypervisor::open(options) {
        Err(privmem_core::BackendError::Invalid { op, .. }) => assert_eq!(op, "kick signal"),
        Err(e) if e.errno().is_some() => skip(&format!(
            "install_refuses_a_signal_the_caller_handles: /dev/kvm unavailable ({e})"
        )),
        other => panic!("expected the foreign handler to be refused, got {other:?}"),
    }
    assert_eq!(disposition(sig), COUNTING as libc::sighandler_t);
}

/// Runs `vcpu` (a guest that never exits) on its own thread: the channel
/// gets what `run` returned, once it returns.
fn spin(
    vcpu: privmem_kvm::KvmVcpu,
) -> (
    mpsc::Receiver<Result<Exit, RunError>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut vcpu = vcpu;
        let _ = tx.send(vcpu.run());
    });
    (rx, thread)
}

#[test]
fn without_signal_a_kick_leaves_a_spinning_guest_alone() {
    let Some(hv) = kvm_with_or_skip(
        "without_signal_a_kick_leaves_a_spinning_guest_alone",
        KvmOptions::probe(),
    ) else {
        return;
    };
    let sig = libc::SIGRTMAX() - 4;
    install_own_handler(sig);
    let g = test_guest(&hv, 2 * MIB);
    let vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Spin]);
    let kick = vcpu.kicker();
    let (rx, thread) = spin(vcpu);
    std::thread::sleep(Duration::from_millis(100));

    kick.kick();

    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a kick without a signal returned from a guest that never exits"
    );
    // The caller's own signal ends the run (immediate_exit is already set).
    // SAFETY: the thread is alive: it has not sent its result yet.
    unsafe { libc::pthread_kill(thread.as_pthread_t(), sig) };
    let got = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(got, Ok(Err(RunError::Interrupted)));
    thread.join().unwrap();
}

#[test]
fn caller_signal_kicks_a_spinning_guest() {
    let sig = libc::SIGRTMAX() - 3;
    install_own_handler(sig);
    let options = KvmOptions::probe().with_kick(KickSignal::Caller(sig));
    let Some(hv) = kvm_with_or_skip("caller_signal_kicks_a_spinning_guest", options) else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    let vcpu = vcpu_with(&g.vm, 0, &[GuestOp::Spin]);
    let kick = vcpu.kicker();
    let before = HANDLED.load(Ordering::SeqCst);
    let (rx, thread) = spin(vcpu);
    std::thread::sleep(Duration::from_millis(100));

    kick.kick();

    let got = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(got, Ok(Err(RunError::Interrupted)));
    assert!(
        HANDLED.load(Ordering::SeqCst) > before,
        "the caller's handler never ran"
    );
    thread.join().unwrap();
}

#[test]
fn emulations_name_the_port_io_hypercall_once_used() {
    let Some(hv) = kvm_with_or_skip(
        "emulations_name_the_port_io_hypercall_once_used",
        KvmOptions::probe(),
    ) else {
        return;
    };
    let g = test_guest(&hv, 2 * MIB);
    g.vm.enable_exit_hypercall(EXIT_HYPERCALL_MAP_GPA_RANGE)
        .unwrap();
    let map = GuestOp::Map {
        gpa: 0x1000,
        pages: 1,
        attrs: 0,
        expect_ret: Some(0),
    };
    let mut vcpu = vcpu_with(&g.vm, 0, &[map, GuestOp::Halt]);
    assert_eq!(g.vm.emulations(), Emulations::default());

    let exits = run_to_hlt_completing(&mut vcpu);

    assert!(
        matches!(exits.as_slice(), [Exit::Hypercall(_)]),
        "{exits:?}"
    );
    let port_io = g.vm.hypercall_transport() == "port-io";
    let want = Emulations {
        hypercall: port_io,
        gmem_hva: g.vm.emulations().gmem_hva,
    };
    assert_eq!(g.vm.emulations(), want);
    assert_eq!(want.names().contains(&"hypercall"), port_io);
}

/// [`run_to_hlt`], completing every hypercall exit with 0.
fn run_to_hlt_completing(vcpu: &mut privmem_kvm::KvmVcpu) -> Vec<Exit> {
    let mut seen = Vec::new();
    loop {
        match vcpu_next(vcpu) {
            Exit::Hlt => return seen,
            e @ Exit::Hypercall(_) => {
                vcpu.complete_hypercall(0).unwrap();
                seen.push(e);
            }
            e => panic!("unexpected exit {e:?} after {seen:?}"),
        }
    }
}

#[test]
fn gmem_hva_rewrites_only_when_opted_in() {
    for gmem_hva in [false, true] {
        let test = format!("gmem_hva_rewrites_only_when_opted_in (gmem_hva = {gmem_hva})");
        let options = KvmOptions {
            quirks: Quirks {
                gmem_hva,
                ..KvmOptions::probe().quirks
            },
            ..KvmOptions::default()
        };
        let Some(hv) = kvm_with_or_skip(&test, options) else {
            return;
        };
        if !hv.has_shared_gmem() {
            skip(&format!(
                "{test}: host KVM has no MMAP|INIT_SHARED guest_memfd"
            ));
            return;
        }
        let vm = hv.create_vm(VmType::Default).unwrap();
        let flags = privmem_core::GmemFlags::MMAP.union(privmem_core::GmemFlags::INIT_SHARED);
        let file = vm.create_guest_memfd(2 * MIB, flags).unwrap();
        assert!(!vm.emulations().gmem_hva);

        add_gmem_slot(&vm, 0, 0, 2 * MIB, &file);

        assert_eq!(vm.emulations().gmem_hva, gmem_hva, "{test}");
    }
}
