//! The conversion engine: one transaction serves explicit (`MAP_GPA_RANGE`)
//! and implicit (memory-fault) conversions, over any [`ConversionBackend`].
//!
//! Order of a conversion (DESIGN.md, "The order of a conversion"):
//! 1. validate alignment, bounds (below the [`GpaLimit`], 2^52 by default);
//! 2. lock the range (overlapping conversions and slot changes serialise,
//!    disjoint ones don't), retry discards deferred there earlier;
//! 3. return early if every page already has the wanted attribute, unless
//!    the range is only partly inside guest memory (refused: see below);
//! 4. refuse what cannot succeed: a page not backed by guest_memfd, a gap
//!    between slots, or private memory on a VM without it;
//! 5. **to shared**: ask the listeners ([`ConversionListener::prepare_shared`],
//!    a refusal rolls back), set the attributes, punch the pages out of
//!    guest_memfd, commit the map, tell the listeners it committed. If the
//!    first punch fails the attributes are restored run by run (nothing was
//!    freed yet) and the listeners' preparation cancelled; if a later one
//!    fails, some backing is already gone and going back would lose data,
//!    so the conversion rolls forward and the failed pieces are deferred;
//! 6. **to private**: set the attributes (the point of no return), commit
//!    the map, tell the listeners (before the discard: a device stops DMA
//!    first), then discard the shared backing; a failed discard is deferred;
//! 7. deferred discards are retried before any later conversion (or slot
//!    removal) touches them, which is refused if they still fail, so stale
//!    data never shows across it. Map == kernel view after every outcome.
//!
//! Ranges outside guest memory (no memslot): a range *wholly* outside
//! converts to shared as a no-op ([`Outcome::NoOp`], the guest sees 0 from
//! `MAP_GPA_RANGE`), as QEMU ignores a TDX firmware's conversions of its MMIO
//! ranges to shared; converting it to private is refused (-22). A range
//! *partly* outside is refused either way, even when the pages inside
//! already have the wanted attribute.

mod discard;
mod exits;
mod notify;
mod slots;
mod stats;

pub use exits::{HypercallExit, MemoryFaultExit, StopReason, VcpuAction};
pub use stats::Stats;
use stats::{Stat, StatCells};

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::attrmap::striped::StripedMap;
use crate::attrmap::{AttrMap, Run};
use crate::contract::{ConversionBackend, VmSupport};
use crate::decide::{DiscardPolicy, FaultPolicy, RepeatGuard};
use crate::error::BackendError;
use crate::listener::{ConversionListener, ListenerPanic};
use crate::slot::{SlotDesc, SlotTable};
use crate::trace::{self, TraceEvent, TraceSink};
use crate::types::{Attrs, Gpa, GpaLimit, GpaRange};

/// Who asked for a conversion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Origin {
    /// `KVM_HC_MAP_GPA_RANGE`.
    Explicit,
    /// `KVM_EXIT_MEMORY_FAULT`.
    Implicit,
}

/// The attribute a conversion gives its pages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConvertTo {
    /// `KVM_MEMORY_ATTRIBUTE_PRIVATE`: backed by guest_memfd.
    Private,
    /// No attribute: backed by the shared memory at `userspace_addr`.
    Shared,
}

impl ConvertTo {
    /// `Private` for `true`.
    pub const fn from_private(private: bool) -> ConvertTo {
        if private {
            ConvertTo::Private
        } else {
            ConvertTo::Shared
        }
    }
    /// True for `Private`.
    pub const fn is_private(self) -> bool {
        matches!(self, ConvertTo::Private)
    }
    /// "private" or "shared".
    pub const fn name(self) -> &'static str {
        match self {
            ConvertTo::Private => "private",
            ConvertTo::Shared => "shared",
        }
    }
}

/// A successful conversion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Nothing to do: every page already had the attribute (this includes
    /// a conversion to shared of a range wholly outside guest memory).
    NoOp,
    /// This many pages changed.
    Converted {
        /// Pages whose attribute changed.
        pages: u64,
    },
}

/// Why a conversion failed. The attribute map and the kernel agree afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// Bad alignment or bounds.
    #[error("invalid conversion of {len:#x} bytes at {gpa:#x}: {why}")]
    Invalid {
        /// GPA.
        gpa: u64,
        /// Length.
        len: u64,
        /// Why.
        why: &'static str,
    },
    /// The range cannot be converted (no guest_memfd, a gap, no private memory).
    #[error("refused conversion at {gpa:#x}: {why}")]
    Refused {
        /// First offending GPA.
        gpa: u64,
        /// Why.
        why: String,
    },
    /// A conversion listener refused the conversion to shared (or panicked
    /// preparing it); nothing changed.
    #[error("conversion of {range} to shared refused by {listener}: {reason}")]
    ListenerRefused {
        /// The range.
        range: GpaRange,
        /// The listener's name.
        listener: String,
        /// Its reason (or its panic message).
        reason: String,
    },
    /// The kernel rejected the attribute change; nothing changed.
    #[error("kernel rejected conversion of {range}")]
    Kernel {
        /// The range.
        range: GpaRange,
        /// The kernel error.
        #[source]
        source: BackendError,
    },
    /// The first guest_memfd punch of a conversion to shared failed; the
    /// attributes were restored.
    #[error("discard failed in {range}; attributes rolled back (rollback ok: {restored})")]
    RolledBack {
        /// The range.
        range: GpaRange,
        /// Whether every run was restored.
        restored: bool,
        /// The discard error.
        #[source]
        source: BackendError,
    },
}

/// Whether the engine pre-faults a converted range (`KVM_PRE_FAULT_MEMORY`
/// on the vCPU that asked, where the VM has `KVM_CAP_PRE_FAULT_MEMORY`).
/// Errors are ignored, as QEMU does: the guest's own access will fault the
/// page in, and report any error, in the usual way.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum PrefaultPolicy {
    /// Never.
    #[default]
    Off,
    /// After an explicit conversion to private.
    ToPrivate,
    /// After every explicit conversion, either way (QEMU's
    /// `kvm_handle_hc_map_gpa_range`).
    Every,
}

/// How an [`Engine`] converts and answers exits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct EngineConfig {
    /// Whether a conversion frees the backing no longer in use.
    pub discard: DiscardPolicy,
    /// Conversions ending above this limit are [`ConvertError::Invalid`].
    pub gpa_limit: GpaLimit,
    /// How memory-fault exits are answered ([`Engine::handle_fault`]).
    pub faults: FaultPolicy,
    /// Pre-faulting after explicit conversions.
    pub prefault: PrefaultPolicy,
}

/// The engine's slots, sorted by address.
type SlotList<B> =
    Vec<Arc<SlotDesc<<B as ConversionBackend>::Gmem, <B as ConversionBackend>::Shared>>>;

/// The conversion engine of one VM.
pub struct Engine<B: ConversionBackend> {
    backend: B,
    support: VmSupport,
    config: EngineConfig,
    /// The slots, sorted; replaced whole when one is added or removed.
    /// Read without a shared write: every conversion reads it, and a lock
    /// or a reference count would bounce its cache line between vCPUs.
    slots: ArcSwap<SlotList<B>>,
    /// Serialises slot changes (check, kernel call, table swap).
    slot_edit: Mutex<()>,
    /// The attribute map and the range locks, striped by address: vCPUs
    /// converting different parts of memory share no lock.
    attrs: StripedMap,
    /// Discards deferred after a partial failure: (pages, direction).
    pending: Mutex<Vec<(GpaRange, ConvertTo)>>,
    /// `!pending.is_empty()`, readable without the lock: conversions on
    /// other vCPUs skip the mutex (and its cache-line traffic) when nothing
    /// is deferred. Written only under the `pending` lock; a conversion that
    /// overlaps a deferred range orders after the one that deferred it
    /// through the range lock.
    has_pending: AtomicBool,
    listeners: notify::Listeners,
    /// Counters ([`Engine::stats`]).
    stats: StatCells,
    /// Where conversions are reported, if tracing (set once).
    trace: OnceLock<Arc<dyn TraceSink>>,
}

impl<B: ConversionBackend> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("support", &self.support)
            .field("config", &self.config)
            .field("slots", &self.slots().len())
            .finish_non_exhaustive()
    }
}

/// The runs a conversion changes: up to two inline, more on the heap.
struct Runs {
    inline: [Run; 2],
    n: usize,
    heap: Vec<Run>,
}

impl Runs {
    /// Empty; `filler` only initialises the unused inline slots.
    fn new(filler: GpaRange) -> Runs {
        let r = Run {
            range: filler,
            private: false,
        };
        Runs {
            inline: [r; 2],
            n: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, run: Run) {
        if self.heap.is_empty() && self.n < self.inline.len() {
            self.inline[self.n] = run;
            self.n += 1;
            return;
        }
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.inline[..self.n]);
        }
        self.heap.push(run);
    }

    fn as_slice(&self) -> &[Run] {
        if self.heap.is_empty() {
            &self.inline[..self.n]
        } else {
            &self.heap
        }
    }
}

impl<B: ConversionBackend> Engine<B> {
    /// An engine over `backend`, with no slots yet ([`add_slot`](Self::add_slot)).
    /// Asks the backend once what the VM supports.
    pub fn new(backend: B, config: EngineConfig) -> Engine<B> {
        let support = backend.support();
        Engine {
            backend,
            support,
            config,
            slots: ArcSwap::from_pointee(Vec::new()),
            slot_edit: Mutex::new(()),
            attrs: StripedMap::new(),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            listeners: notify::Listeners::default(),
            stats: StatCells::default(),
            trace: OnceLock::new(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// What the VM supports (asked once, at [`new`](Self::new)).
    pub fn support(&self) -> VmSupport {
        self.support
    }

    /// The configuration.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// A repeat guard for one vCPU, with the configured limit
    /// ([`FaultPolicy::max_repeats`]). Keep one per vCPU.
    pub fn repeat_guard(&self) -> RepeatGuard {
        RepeatGuard::new(self.config.faults.max_repeats)
    }

    /// A snapshot of the slots, sorted by address.
    pub fn slots(&self) -> SlotTable<B::Gmem, B::Shared> {
        self.slots.load_full()
    }

    /// A snapshot of the attribute map.
    pub fn attr_map(&self) -> AttrMap {
        self.attrs.snapshot()
    }

    /// Sets `ranges` private in the kernel and the map (initial state: no
    /// discard, no listener).
    pub fn init_private(&self, ranges: &[GpaRange]) -> Result<(), ConvertError> {
        for &range in ranges {
            let _guard = self.attrs.lock(range);
            self.set_kernel_attrs(range, ConvertTo::Private)
                .map_err(|source| ConvertError::Kernel { range, source })?;
            self.attrs.set(range, true);
        }
        Ok(())
    }

    /// Converts `[gpa, gpa+len)` to `to`, as one transaction.
    pub fn convert(
        &self,
        gpa: Gpa,
        len: u64,
        to: ConvertTo,
        origin: Origin,
    ) -> Result<Outcome, ConvertError> {
        let result = validate(gpa, len, self.config.gpa_limit).and_then(|range| {
            let _guard = self.attrs.lock(range);
            self.convert_locked(range, to, origin)
        });
        self.trace_outcome(gpa, len, to, origin, &result);
        result
    }

    /// The transaction, with `range` locked.
    fn convert_locked(
        &self,
        range: GpaRange,
        to: ConvertTo,
        origin: Origin,
    ) -> Result<Outcome, ConvertError> {
        // A snapshot, not a lock: listeners may read the slots, and a slot
        // change elsewhere must not wait for this transaction's syscalls.
        let slots = self.slots.load();
        self.settle_pending(&slots, range)?;
        // The runs that change (usually one; no allocation for up to two).
        // One walk of the map: no run to change means a no-op.
        let mut changed = Runs::new(range);
        self.attrs.for_each_run(range, |r| {
            if r.private != to.is_private() {
                changed.push(r);
            }
        });
        let runs = changed.as_slice();
        if runs.is_empty() {
            slots::refuse_partly_outside(&slots, range)?;
            return Ok(Outcome::NoOp);
        }
        slots::refuse_unconvertible(&slots, range, to, self.support)?;
        let pages = match to {
            ConvertTo::Shared => self.to_shared(&slots, range, runs, origin)?,
            ConvertTo::Private => self.to_private(&slots, range, runs, origin)?,
        };
        self.count(pages, to, origin);
        if let Some(sink) = self.trace.get() {
            // Still under the range lock: overlapping conversions are
            // recorded in the order they were committed.
            sink.record(TraceEvent::Converted {
                vcpu: trace::current_vcpu(),
                cause: origin.into(),
                gpa: range.start().raw(),
                len: range.len(),
                to_private: to.is_private(),
                pages,
                discard: self.config.discard.discards(),
            });
        }
        Ok(Outcome::Converted { pages })
    }

    fn to_shared(
        &self,
        slots: &[Arc<SlotDesc<B::Gmem, B::Shared>>],
        range: GpaRange,
        runs: &[Run],
        origin: Origin,
    ) -> Result<u64, ConvertError> {
        let event = self.listeners.event(range, ConvertTo::Shared, origin, runs);
        let prepared = self.prepare_shared(&event)?;
        if let Err(source) = self.set_kernel_attrs(range, ConvertTo::Shared) {
            self.cancel_shared(&event, prepared);
            return Err(ConvertError::Kernel { range, source });
        }
        if self.config.discard.discards() {
            if let Err((done, rest, source)) = self.discard_runs(slots, runs, ConvertTo::Shared) {
                if done == 0 {
                    // Nothing was discarded yet: a clean rollback loses nothing.
                    let restored = self.restore(runs);
                    self.cancel_shared(&event, prepared);
                    return Err(ConvertError::RolledBack {
                        range,
                        restored,
                        source,
                    });
                }
                // Some backing is already gone, so going back would lose data:
                // roll forward. The rest is retried before any later
                // conversion touches it, and refused there if it still fails.
                self.defer(&rest, ConvertTo::Shared);
            }
        }
        let pages = self.attrs.set(range, false);
        self.committed(&event);
        Ok(pages)
    }

    fn to_private(
        &self,
        slots: &[Arc<SlotDesc<B::Gmem, B::Shared>>],
        range: GpaRange,
        runs: &[Run],
        origin: Origin,
    ) -> Result<u64, ConvertError> {
        self.set_kernel_attrs(range, ConvertTo::Private)
            .map_err(|source| ConvertError::Kernel { range, source })?;
        // The kernel accepted: from here on the conversion commits.
        let pages = self.attrs.set(range, true);
        let event = self
            .listeners
            .event(range, ConvertTo::Private, origin, runs);
        self.committed(&event);
        if self.config.discard.discards() {
            if let Err((_, rest, _)) = self.discard_runs(slots, runs, ConvertTo::Private) {
                self.defer(&rest, ConvertTo::Private);
            }
        }
        Ok(pages)
    }

    fn count(&self, pages: u64, to: ConvertTo, origin: Origin) {
        let dir = match to {
            ConvertTo::Private => Stat::ToPrivatePages,
            ConvertTo::Shared => Stat::ToSharedPages,
        };
        let by = match origin {
            Origin::Explicit => Stat::Explicit,
            Origin::Implicit => Stat::Implicit,
        };
        self.stats.add_each([(dir, pages), (by, 1)]);
    }

    /// The engine's counters now: conversions, discards, listener refusals
    /// and panics, pre-faults, all threads together.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use privmem_core::engine::{ConvertTo, EngineConfig, Origin};
    /// use privmem_core::{Gpa, GpaRange, VmType};
    /// use privmem_model::{embed, KernelProfile, ModelHypervisor};
    ///
    /// let hv = Arc::new(ModelHypervisor::new(KernelProfile::V7_3));
    /// let engine = embed::engine(&hv, VmType::SwProtected, EngineConfig::default())?;
    /// engine.add_slot(embed::slot(engine.vm(), 0, GpaRange::new(Gpa(0), 1 << 20)?)?)?;
    /// engine.convert(Gpa(0x4000), 0x2000, ConvertTo::Private, Origin::Explicit)?;
    /// let s = engine.stats();
    /// assert_eq!((s.to_private_pages, s.explicit, s.implicit), (2, 1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    fn set_kernel_attrs(&self, range: GpaRange, to: ConvertTo) -> Result<(), BackendError> {
        self.backend
            .set_attributes(range, Attrs::from_private(to.is_private()))
    }

    /// Puts every run's attribute back. Returns false if any restore failed.
    fn restore(&self, runs: &[Run]) -> bool {
        runs.iter().all(|r| {
            self.set_kernel_attrs(r.range, ConvertTo::from_private(r.private))
                .is_ok()
        })
    }

    /// The final attribute map of guest_memfd-backed memory, coalesced across
    /// adjacent slots.
    pub fn gmem_attributes(&self) -> Vec<Run> {
        let slots = self.slots();
        let mut out: Vec<Run> = Vec::new();
        for s in slots.iter().filter(|s| s.gmem.is_some()) {
            for run in self.attrs.runs(s.range) {
                match out.last_mut() {
                    Some(last)
                        if last.private == run.private && last.range.end() == run.range.start() =>
                    {
                        last.range = GpaRange::from_bounds(last.range.start(), run.range.end())
                            .unwrap_or(last.range);
                    }
                    _ => out.push(run),
                }
            }
        }
        out
    }

    /// Registers the sink that conversions (and the vCPU loops running on
    /// this engine) report to. Once per engine: a second sink is handed back.
    pub fn set_trace_sink(&self, sink: Arc<dyn TraceSink>) -> Result<(), Arc<dyn TraceSink>> {
        self.trace.set(sink)
    }

    /// The registered trace sink, if any.
    pub fn trace_sink(&self) -> Option<&dyn TraceSink> {
        self.trace.get().map(|s| &**s)
    }

    /// Reports a no-op or a failed conversion to the trace sink, if any
    /// (committed ones are reported inside the transaction).
    fn trace_outcome(
        &self,
        gpa: Gpa,
        len: u64,
        to: ConvertTo,
        origin: Origin,
        result: &Result<Outcome, ConvertError>,
    ) {
        let Some(sink) = self.trace.get() else {
            return;
        };
        let (vcpu, cause, gpa, to_private) = (
            trace::current_vcpu(),
            origin.into(),
            gpa.raw(),
            to.is_private(),
        );
        match result {
            Ok(Outcome::Converted { .. }) => {}
            Ok(Outcome::NoOp) => sink.record(TraceEvent::Converted {
                vcpu,
                cause,
                gpa,
                len,
                to_private,
                pages: 0,
                discard: false,
            }),
            Err(e) => {
                let mut error = e.to_string();
                let mut cur = std::error::Error::source(e);
                while let Some(c) = cur {
                    error.push_str(": ");
                    error.push_str(&c.to_string());
                    cur = c.source();
                }
                sink.record(TraceEvent::ConvertFailed {
                    vcpu,
                    cause,
                    gpa,
                    len,
                    to_private,
                    error,
                });
            }
        }
    }

    /// Registers `listener`; it is told about every conversion from the next
    /// one on (module [`listener`](crate::listener)).
    pub fn add_listener(&self, listener: Arc<dyn ConversionListener>) {
        self.listeners.add(listener);
    }

    /// Listener panics caught so far, oldest first.
    pub fn listener_panics(&self) -> Vec<ListenerPanic> {
        self.listeners.panics()
    }
}

fn validate(gpa: Gpa, len: u64, limit: GpaLimit) -> Result<GpaRange, ConvertError> {
    let invalid = |why| ConvertError::Invalid {
        gpa: gpa.raw(),
        len,
        why,
    };
    if !gpa.is_page_aligned() || !len.is_multiple_of(crate::types::PAGE_SIZE) {
        return Err(invalid("not page-aligned"));
    }
    let range = GpaRange::new(gpa, len).map_err(|_| invalid("empty or wrapping"))?;
    if !limit.contains(range) {
        return Err(invalid("beyond the guest-physical address limit"));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PAGE_SIZE;

    fn run(page: u64, private: bool) -> Run {
        Run {
            range: GpaRange::new(Gpa(page * PAGE_SIZE), PAGE_SIZE).unwrap(),
            private,
        }
    }

    #[test]
    fn validate_refuses_ranges_past_the_limit_and_unaligned_ones() {
        let x86 = GpaLimit::X86_MAXPHYADDR;
        let top = Gpa((1 << 52) - PAGE_SIZE);
        assert!(validate(top, PAGE_SIZE, x86).is_ok());
        assert!(validate(top, 2 * PAGE_SIZE, x86).is_err());
        let narrow = GpaLimit::from_bits(47).unwrap();
        assert!(validate(Gpa((1 << 47) - PAGE_SIZE), PAGE_SIZE, narrow).is_ok());
        assert!(matches!(
            validate(Gpa(1 << 47), PAGE_SIZE, narrow),
            Err(ConvertError::Invalid { gpa, .. }) if gpa == 1 << 47
        ));
        assert!(validate(Gpa(0x1001), PAGE_SIZE, x86).is_err());
        assert!(validate(Gpa(0), 0, x86).is_err());
    }

    #[test]
    fn runs_spill_to_the_heap_in_order_after_two() {
        let mut r = Runs::new(run(0, false).range);
        assert!(r.as_slice().is_empty());
        let all: Vec<Run> = (0..5).map(|p| run(p, p % 2 == 0)).collect();
        for (i, x) in all.iter().enumerate() {
            r.push(*x);
            assert_eq!(r.as_slice(), &all[..=i]);
        }
    }
}
