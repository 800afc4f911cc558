//! Conversion listeners on the model: the order they are told in (before a
//! discard to private, around the kernel change to shared), exactly one
//! `committed` per committed conversion and none for a rolled-back one
//! (failures injected into the model kernel), refusals, and panics.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{add_slot, fill_shared, gmem_bytes, guest, map, model, range, shared_bytes, End};
use privmem_core::engine::{ConvertError, ConvertTo, EngineConfig, Origin, Outcome};
use privmem_core::listener::{Conversion, ConversionListener, Refusal};
use privmem_core::{Access, Errno, Gpa, GpaRange, GuestOp, VmType};
use privmem_model::embed::ModelEngine;
use privmem_model::{InjectOp, ModelHypervisor};
use proptest::prelude::*;

/// What a listener saw: the call, the conversion, and what `probe` read
/// (the kernel's and the backings' state) at that moment.
type Log = Arc<Mutex<Vec<String>>>;

struct Recorder {
    name: &'static str,
    log: Log,
    probe: Box<dyn Fn(&Conversion<'_>) -> String + Send + Sync>,
    refuse: AtomicBool,
    panic_in: Mutex<Option<&'static str>>,
}

impl Recorder {
    fn new(name: &'static str, log: &Log) -> Recorder {
        Recorder {
            name,
            log: log.clone(),
            probe: Box::new(|_| String::new()),
            refuse: AtomicBool::new(false),
            panic_in: Mutex::new(None),
        }
    }
    fn probing(
        mut self,
        probe: impl Fn(&Conversion<'_>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.probe = Box::new(probe);
        self
    }
    fn note(&self, call: &'static str, c: &Conversion<'_>) {
        let line = format!(
            "{} {call} {} {:?} {}",
            self.name,
            c.range,
            c.changed,
            (self.probe)(c)
        );
        self.log.lock().unwrap().push(line.trim_end().to_string());
        if *self.panic_in.lock().unwrap() == Some(call) {
            panic!("{} broke in {call}", self.name);
        }
    }
}

impl ConversionListener for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn prepare_shared(&self, c: &Conversion<'_>) -> Result<(), Refusal> {
        self.note("prepare", c);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refusal::new("DMA map failed"));
        }
        Ok(())
    }
    fn cancel_shared(&self, c: &Conversion<'_>) {
        self.note("cancel", c);
    }
    fn committed(&self, c: &Conversion<'_>) {
        self.note("committed", c);
    }
}

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// An engine with one 1 MiB slot at 0, and the hypervisor.
fn setup() -> (Arc<ModelHypervisor>, Arc<ModelEngine>) {
    let (hv, e) = model(VmType::SwProtected, EngineConfig::default());
    add_slot(&e, 0, 0, 1 << 20);
    (hv, Arc::new(e))
}

#[test]
fn to_private_listener_is_told_before_the_shared_backing_is_discarded() {
    let (_hv, e) = setup();
    fill_shared(&e, 0, 0x1000, 0x2000, 0x5a);
    let l = log();
    let weak = Arc::downgrade(&e);
    e.add_listener(Arc::new(Recorder::new("dma", &l).probing(move |c| {
        let e = weak.upgrade().unwrap();
        let kernel_private = e.vm().attributes().is_private(c.range.start());
        let shared = shared_bytes(&e, 0, 0x1000, 0x2000);
        format!(
            "kernel_private={kernel_private} shared_intact={}",
            shared.iter().all(|&b| b == 0x5a)
        )
    })));
    let out = e.convert(Gpa(0x1000), 0x2000, ConvertTo::Private, Origin::Explicit);
    assert_eq!(out, Ok(Outcome::Converted { pages: 2 }));
    assert_eq!(
        take(&l),
        ["dma committed [0x1000, 0x3000) [[0x1000, 0x3000)] kernel_private=true shared_intact=true"]
    );
    // And the discard did happen, after the listener returned.
    assert!(shared_bytes(&e, 0, 0x1000, 0x2000).iter().all(|&b| b == 0));
}

#[test]
fn to_shared_listener_prepares_before_any_change_and_hears_commit_after_the_punch() {
    let (hv, e) = setup();
    e.init_private(&[range(0, 1 << 20)]).unwrap();
    let write = GuestOp::Write {
        gpa: Gpa(0x4000),
        len: 0x1000,
        byte: 0x77,
        access: Access::Private,
    };
    assert_eq!(guest(&e, 0, &[write]).0, End::Halted);
    let l = log();
    let (weak, hv2) = (Arc::downgrade(&e), hv.clone());
    e.add_listener(Arc::new(Recorder::new("dma", &l).probing(move |c| {
        let e = weak.upgrade().unwrap();
        let kernel_private = e.vm().attributes().is_private(c.range.start());
        let gmem = gmem_bytes(&hv2, &e, 0, 0x4000, 0x1000);
        format!(
            "kernel_private={kernel_private} gmem_data={}",
            gmem.iter().all(|&b| b == 0x77)
        )
    })));
    let (end, rets) = guest(&e, 1, &[map(0x4000, 1, false)]);
    assert_eq!((end, rets), (End::Halted, vec![0]));
    assert_eq!(
        take(&l),
        [
            "dma prepare [0x4000, 0x5000) [[0x4000, 0x5000)] kernel_private=true gmem_data=true",
            "dma committed [0x4000, 0x5000) [[0x4000, 0x5000)] kernel_private=false gmem_data=false",
        ]
    );
}

#[test]
fn a_refusal_rolls_back_cancels_in_reverse_and_the_guest_gets_an_error() {
    let (hv, e) = setup();
    e.init_private(&[range(0, 1 << 20)]).unwrap();
    let write = GuestOp::Write {
        gpa: Gpa(0x2000),
        len: 0x1000,
        byte: 0x33,
        access: Access::Private,
    };
    assert_eq!(guest(&e, 0, &[write]).0, End::Halted);
    let l = log();
    let (a, b, c) = (
        Recorder::new("a", &l),
        Recorder::new("b", &l),
        Recorder::new("c", &l),
    );
    let a2 = Recorder::new("a2", &l);
    b.refuse.store(true, Ordering::SeqCst);
    for r in [a, a2, b, c] {
        e.add_listener(Arc::new(r));
    }
    let (end, rets) = guest(&e, 1, &[map(0x2000, 1, false)]);
    assert_eq!((end, rets), (End::Halted, vec![-22]));
    let r = "[0x2000, 0x3000) [[0x2000, 0x3000)]";
    assert_eq!(
        take(&l),
        [
            format!("a prepare {r}"),
            format!("a2 prepare {r}"),
            format!("b prepare {r}"),
            format!("a2 cancel {r}"),
            format!("a cancel {r}"),
        ]
    );
    // Nothing changed: still private, data still in guest_memfd.
    assert!(e.attr_map().is_private(Gpa(0x2000)));
    assert_eq!(e.vm().attributes(), e.attr_map());
    assert!(gmem_bytes(&hv, &e, 0, 0x2000, 0x1000)
        .iter()
        .all(|&b| b == 0x33));
    assert_eq!(e.stats().listener_refusals, 1);
    let err = e
        .convert(Gpa(0x2000), 0x1000, ConvertTo::Shared, Origin::Explicit)
        .unwrap_err();
    assert!(
        matches!(&err, ConvertError::ListenerRefused { listener, reason, .. } if listener == "b" && reason == "DMA map failed"),
        "{err}"
    );
}

#[test]
fn injected_kernel_and_discard_failures_never_reach_committed() {
    let (hv, e) = setup();
    e.init_private(&[range(0, 1 << 20)]).unwrap();
    let l = log();
    e.add_listener(Arc::new(Recorder::new("l", &l)));
    let one = |gpa: u64, to| e.convert(Gpa(gpa), 0x1000, to, Origin::Explicit);

    // To shared, the attributes fail: prepared, then cancelled.
    hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    assert!(matches!(
        one(0x1000, ConvertTo::Shared),
        Err(ConvertError::Kernel { .. })
    ));
    assert_eq!(
        take(&l),
        [
            "l prepare [0x1000, 0x2000) [[0x1000, 0x2000)]",
            "l cancel [0x1000, 0x2000) [[0x1000, 0x2000)]"
        ]
    );

    // To shared, the first punch fails: rolled back, cancelled.
    hv.inject_failure(InjectOp::Fallocate, 1, Errno::ENOMEM);
    assert!(matches!(
        one(0x1000, ConvertTo::Shared),
        Err(ConvertError::RolledBack { restored: true, .. })
    ));
    assert_eq!(
        take(&l),
        [
            "l prepare [0x1000, 0x2000) [[0x1000, 0x2000)]",
            "l cancel [0x1000, 0x2000) [[0x1000, 0x2000)]"
        ]
    );
    assert_eq!(e.vm().attributes(), e.attr_map());
    assert!(e.attr_map().is_private(Gpa(0x1000)));

    // It works once nothing is injected: told once.
    assert_eq!(
        one(0x1000, ConvertTo::Shared),
        Ok(Outcome::Converted { pages: 1 })
    );
    assert_eq!(
        take(&l),
        [
            "l prepare [0x1000, 0x2000) [[0x1000, 0x2000)]",
            "l committed [0x1000, 0x2000) [[0x1000, 0x2000)]"
        ]
    );

    // To private, the attributes fail: nothing committed, nothing told.
    hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM);
    assert!(matches!(
        one(0x1000, ConvertTo::Private),
        Err(ConvertError::Kernel { .. })
    ));
    assert!(take(&l).is_empty());

    // To private, the shared discard fails: past the point of no return,
    // so it commits (told once, before the discard) and defers the discard.
    hv.inject_failure(InjectOp::DiscardShared, 1, Errno::EIO);
    assert_eq!(
        one(0x1000, ConvertTo::Private),
        Ok(Outcome::Converted { pages: 1 })
    );
    assert_eq!(
        take(&l),
        ["l committed [0x1000, 0x2000) [[0x1000, 0x2000)]"]
    );
    assert_eq!(e.pending_discards(), [range(0x1000, 0x1000)]);
    assert_eq!(e.vm().attributes(), e.attr_map());

    // A no-op tells no one.
    assert_eq!(one(0x1000, ConvertTo::Private), Ok(Outcome::NoOp));
    assert!(take(&l).is_empty());
    assert!(
        e.pending_discards().is_empty(),
        "the no-op's range retried the discard"
    );
}

#[test]
fn a_panicking_listener_is_contained() {
    let (_hv, e) = setup();
    e.init_private(&[range(0, 1 << 20)]).unwrap();
    let l = log();
    let first = Arc::new(Recorder::new("first", &l));
    let bad = Arc::new(Recorder::new("bad", &l));
    let last = Arc::new(Recorder::new("last", &l));
    e.add_listener(first.clone());
    e.add_listener(bad.clone());
    e.add_listener(last.clone());
    let r = "[0x3000, 0x4000) [[0x3000, 0x4000)]";

    // A panic preparing counts as a refusal.
    *bad.panic_in.lock().unwrap() = Some("prepare");
    let err = e
        .convert(Gpa(0x3000), 0x1000, ConvertTo::Shared, Origin::Explicit)
        .unwrap_err();
    assert!(
        matches!(&err, ConvertError::ListenerRefused { listener, reason, .. } if listener == "bad" && reason.contains("panicked: bad broke in prepare")),
        "{err}"
    );
    assert_eq!(
        take(&l),
        [
            format!("first prepare {r}"),
            format!("bad prepare {r}"),
            format!("first cancel {r}")
        ]
    );
    assert!(e.attr_map().is_private(Gpa(0x3000)));
    assert_eq!(e.vm().attributes(), e.attr_map());

    // A panic hearing of a commit: the conversion stands, the next listener
    // is still told, and the range is not left locked.
    *bad.panic_in.lock().unwrap() = Some("committed");
    assert_eq!(
        e.convert(Gpa(0x3000), 0x1000, ConvertTo::Shared, Origin::Explicit),
        Ok(Outcome::Converted { pages: 1 })
    );
    assert_eq!(
        take(&l),
        [
            format!("first prepare {r}"),
            format!("bad prepare {r}"),
            format!("last prepare {r}"),
            format!("first committed {r}"),
            format!("bad committed {r}"),
            format!("last committed {r}"),
        ]
    );
    assert!(!e.attr_map().is_private(Gpa(0x3000)));
    assert_eq!(
        e.convert(Gpa(0x3000), 0x1000, ConvertTo::Private, Origin::Explicit),
        Ok(Outcome::Converted { pages: 1 })
    );
    assert_eq!(e.vm().attributes(), e.attr_map());
    let panics = e.listener_panics();
    assert_eq!(
        panics
            .iter()
            .map(|p| (p.listener.as_str(), p.call))
            .collect::<Vec<_>>(),
        [
            ("bad", "prepare_shared"),
            ("bad", "committed"),
            ("bad", "committed")
        ]
    );
    assert_eq!(panics[0].message, "bad broke in prepare");
    assert_eq!(e.stats().listener_panics, 3);
}

/// Counts `committed` calls and the pages they report.
#[derive(Default)]
struct Tally {
    events: Mutex<Vec<(ConvertTo, Vec<GpaRange>)>>,
}

impl ConversionListener for Tally {
    fn committed(&self, c: &Conversion<'_>) {
        self.events.lock().unwrap().push((c.to, c.changed.to_vec()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random conversions with random injected failures: `committed` comes
    /// exactly once for each conversion that changed the map, naming exactly
    /// the pages that changed, and never otherwise.
    #[test]
    fn committed_exactly_for_committed_conversions(
        steps in proptest::collection::vec((0u64..16, 1u64..5, any::<bool>(), 0u8..6), 1..40)
    ) {
        let (hv, e) = setup();
        let tally = Arc::new(Tally::default());
        e.add_listener(tally.clone());
        for (page, pages, private, fail) in steps {
            match fail {
                1 => hv.inject_failure(InjectOp::SetMemoryAttributes, 1, Errno::ENOMEM),
                2 => hv.inject_failure(InjectOp::Fallocate, 1, Errno::EIO),
                3 => hv.inject_failure(InjectOp::DiscardShared, 1, Errno::EIO),
                _ => {}
            }
            let before = e.attr_map();
            let to = ConvertTo::from_private(private);
            let _ = e.convert(Gpa(page * 0x1000), pages * 0x1000, to, Origin::Explicit);
            hv.clear_injections();
            let after = e.attr_map();
            prop_assert_eq!(e.vm().attributes(), after.clone());
            let r = range(page * 0x1000, pages * 0x1000);
            let changed: Vec<GpaRange> = before.runs(r).into_iter().filter(|run| run.private != private).map(|run| run.range).collect();
            let events = std::mem::take(&mut *tally.events.lock().unwrap());
            if before == after {
                prop_assert!(events.is_empty(), "{:?}", events);
            } else {
                prop_assert_eq!(events, vec![(to, changed)]);
            }
        }
    }
}
