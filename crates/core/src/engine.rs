//! The conversion engine: one transaction serves explicit (`MAP_GPA_RANGE`)
//! and implicit (memory-fault) conversions.
//!
//! Order of a conversion (see DESIGN.md):
//! 1. validate alignment, bounds (below the [`GpaLimit`], 2^52 by default);
//! 2. lock the range (overlapping conversions serialise, disjoint ones don't);
//! 3. return early if every page already has the wanted attribute, unless
//!    the range is only partly inside guest memory (refused: see below);
//! 4. refuse what cannot succeed: a page not backed by guest_memfd, a gap
//!    between slots, or private memory on a VM without it;
//! 5. apply to the kernel: `KVM_SET_MEMORY_ATTRIBUTES` first (so the guest can
//!    no longer fault the old side in), then discard the side no longer in use
//!    for the pages that changed: PUNCH_HOLE on guest_memfd when going shared,
//!    the shared backing (fallocate or madvise) when going private;
//! 6. commit to the attribute map only after the kernel accepted;
//! 7. if the first discard fails, restore the old attributes run by run (a
//!    clean rollback: nothing was freed yet). If a later one fails, some
//!    backing is already gone and going back would lose data, so the
//!    conversion rolls forward and the failed pieces are deferred: they are
//!    retried before any later conversion touches them, and that conversion
//!    is refused if they still fail, so stale data never shows across it.
//!
//! Ranges outside guest memory (no memslot): a range *wholly* outside
//! converts to shared as a no-op ([`Outcome::NoOp`], the guest sees 0 from
//! `MAP_GPA_RANGE`), as QEMU ignores a TDX firmware's conversions of its MMIO
//! ranges to shared; converting it to private is refused (-22). A range
//! *partly* outside is refused either way, even when the pages inside
//! already have the wanted attribute.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::attrmap::{AttrMap, Run};
use crate::backend::{Hypervisor, SharedMemory, Vm, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use crate::decide::DiscardPolicy;
use crate::error::BackendError;
use crate::rangelock::RangeLocks;
use crate::trace::{self, TraceEvent, TraceSink};
use crate::types::{Attrs, Gpa, GpaLimit, GpaRange, GuestMemfd, SlotId, PAGE_SIZE};

/// Where a guest_memfd slot's private pages live.
#[derive(Debug, Clone)]
pub struct GmemPiece {
    /// The file.
    pub file: Arc<GuestMemfd>,
    /// Offset of the slot's first page in the file.
    pub offset: u64,
}

/// What backs one memslot.
#[derive(Debug)]
pub struct SlotBacking<S> {
    /// Slot id.
    pub id: SlotId,
    /// GPA range.
    pub range: GpaRange,
    /// guest_memfd, if any.
    pub gmem: Option<GmemPiece>,
    /// Shared backing at `userspace_addr`, if any (offset 0 = slot start).
    pub shared: Option<S>,
    /// Shared accesses are served from guest_memfd (MMAP file).
    pub gmem_only: bool,
}

/// Who asked for a conversion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// `KVM_HC_MAP_GPA_RANGE`.
    Explicit,
    /// `KVM_EXIT_MEMORY_FAULT`.
    Implicit,
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
    /// The kernel rejected the attribute change; nothing changed.
    #[error("kernel rejected conversion of {range}")]
    Kernel {
        /// The range.
        range: GpaRange,
        /// The kernel error.
        #[source]
        source: BackendError,
    },
    /// A discard failed after the attributes changed; they were restored.
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

/// How an [`Engine`] converts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct EngineConfig {
    /// Whether a conversion frees the backing no longer in use.
    pub discard: DiscardPolicy,
    /// Conversions ending above this limit are [`ConvertError::Invalid`].
    pub gpa_limit: GpaLimit,
}

/// Conversion and discard counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pages converted to private.
    pub to_private_pages: AtomicU64,
    /// Pages converted to shared.
    pub to_shared_pages: AtomicU64,
    /// Explicit conversions that changed something.
    pub explicit: AtomicU64,
    /// Implicit conversions that changed something.
    pub implicit: AtomicU64,
    /// guest_memfd pages punched.
    pub discarded_gmem: AtomicU64,
    /// Shared pages discarded.
    pub discarded_shared: AtomicU64,
    /// Discards that failed after the attributes changed and were deferred.
    pub deferred_discards: AtomicU64,
}

/// The conversion engine of one VM.
pub struct Engine<H: Hypervisor> {
    hv: Arc<H>,
    vm: Arc<H::Vm>,
    slots: Vec<SlotBacking<<H::Vm as Vm>::Shared>>,
    private_mem: bool,
    config: EngineConfig,
    map: Mutex<AttrMap>,
    locks: RangeLocks,
    /// Discards deferred after a partial failure: (pages, toward private).
    pending: Mutex<Vec<(GpaRange, bool)>>,
    /// `!pending.is_empty()`, readable without the lock: conversions on
    /// other vCPUs skip the mutex (and its cache-line traffic) when nothing
    /// is deferred. Written only under the `pending` lock; a conversion that
    /// overlaps a deferred range orders after the one that deferred it
    /// through the range lock.
    has_pending: AtomicBool,
    /// Counters.
    pub stats: Stats,
    /// Where conversions are reported, if tracing (set once).
    trace: OnceLock<Arc<dyn TraceSink>>,
}

impl<H: Hypervisor> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("slots", &self.slots.len())
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

/// One slot-sized piece of a run: pages `[range)` in slot `slot`.
struct Piece<'a, S> {
    slot: &'a SlotBacking<S>,
    range: GpaRange,
}

impl<S> Piece<'_, S> {
    fn slot_offset(&self) -> u64 {
        self.range
            .start()
            .checked_offset_from(self.slot.range.start())
            .unwrap_or(0)
    }
}

impl<H: Hypervisor> Engine<H> {
    /// An engine over `slots` (disjoint; sorted here). Conversions are
    /// refused outright on a VM type without private memory.
    pub fn new(
        hv: Arc<H>,
        vm: Arc<H::Vm>,
        mut slots: Vec<SlotBacking<<H::Vm as Vm>::Shared>>,
        config: EngineConfig,
    ) -> Engine<H> {
        slots.sort_by_key(|s| s.range.start());
        let private_mem = vm.vm_type().has_private_mem();
        Engine {
            hv,
            vm,
            slots,
            private_mem,
            config,
            map: Mutex::new(AttrMap::new()),
            locks: RangeLocks::new(),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            stats: Stats::default(),
            trace: OnceLock::new(),
        }
    }

    /// The slots.
    pub fn slots(&self) -> &[SlotBacking<<H::Vm as Vm>::Shared>] {
        &self.slots
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<H::Vm> {
        &self.vm
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &Arc<H> {
        &self.hv
    }

    /// The configuration.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// A snapshot of the attribute map.
    pub fn attr_map(&self) -> AttrMap {
        self.lock_map().clone()
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, AttrMap> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `ranges` private in the kernel and the map (initial state; no discard).
    pub fn init_private(&self, ranges: &[GpaRange]) -> Result<(), ConvertError> {
        for &range in ranges {
            self.set_kernel_attrs(range, true)
                .map_err(|source| ConvertError::Kernel { range, source })?;
            self.lock_map().set(range, true);
        }
        Ok(())
    }

    /// Converts `[gpa, gpa+len)` to private or shared, as one transaction.
    pub fn convert(
        &self,
        gpa: Gpa,
        len: u64,
        to_private: bool,
        origin: Origin,
    ) -> Result<Outcome, ConvertError> {
        let result = self.convert_tx(gpa, len, to_private, origin);
        if let Some(sink) = self.trace.get() {
            trace_outcome(&**sink, gpa, len, to_private, origin, &result);
        }
        result
    }

    fn convert_tx(
        &self,
        gpa: Gpa,
        len: u64,
        to_private: bool,
        origin: Origin,
    ) -> Result<Outcome, ConvertError> {
        let range = validate(gpa, len, self.config.gpa_limit)?;
        let _guard = self.locks.lock(range);
        self.settle_pending(range)?;
        // The runs that change (usually one; no allocation for up to two).
        // One walk of the map: no run to change means a no-op.
        let mut changed = Runs::new(range);
        self.lock_map()
            .runs_iter(range)
            .filter(|r| r.private != to_private)
            .for_each(|r| changed.push(r));
        let runs = changed.as_slice();
        if runs.is_empty() {
            self.refuse_partly_outside(range)?;
            return Ok(Outcome::NoOp);
        }
        self.refuse_unconvertible(range, to_private)?;
        self.set_kernel_attrs(range, to_private)
            .map_err(|source| ConvertError::Kernel { range, source })?;
        if self.config.discard.discards() {
            if let Err((done, rest, source)) = self.discard_runs(runs, to_private) {
                if done == 0 {
                    // Nothing was discarded yet: a clean rollback loses nothing.
                    let restored = self.restore(runs);
                    return Err(ConvertError::RolledBack {
                        range,
                        restored,
                        source,
                    });
                }
                // Some backing is already gone, so going back would lose data:
                // roll forward. The rest is retried before any later
                // conversion touches it, and refused there if it still fails.
                self.defer(&rest, to_private);
            }
        }
        let pages = self.lock_map().set(range, to_private);
        self.count(pages, to_private, origin);
        if let Some(sink) = self.trace.get() {
            // Still under the range lock: overlapping conversions are
            // recorded in the order they were committed.
            sink.record(TraceEvent::Converted {
                vcpu: trace::current_vcpu(),
                cause: origin.into(),
                gpa: range.start().raw(),
                len: range.len(),
                to_private,
                pages,
                discard: self.config.discard.discards(),
            });
        }
        Ok(Outcome::Converted { pages })
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

    /// Records discards that failed after the attributes changed.
    fn defer(&self, pieces: &[GpaRange], to_private: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend(pieces.iter().map(|&r| (r, to_private)));
        self.has_pending
            .store(!pending.is_empty(), Ordering::Release);
        self.stats
            .deferred_discards
            .fetch_add(pieces.len() as u64, Ordering::Relaxed);
    }

    /// Retries deferred discards overlapping `range`; refuses the conversion if
    /// one still fails, so stale data can never show across it.
    fn settle_pending(&self, range: GpaRange) -> Result<(), ConvertError> {
        if !self.has_pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_empty() {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (r, to_private) in pending.drain(..) {
            if !r.overlaps(range) || failure.is_some() {
                kept.push((r, to_private));
                continue;
            }
            if let Err((_, e)) = self.discard_pieces(&[r], to_private) {
                failure = Some(ConvertError::Refused {
                    gpa: r.start().raw(),
                    why: format!(
                        "stale backing of {r} could not be discarded earlier and still fails: {e}"
                    ),
                });
                kept.push((r, to_private));
            }
        }
        *pending = kept;
        self.has_pending
            .store(!pending.is_empty(), Ordering::Release);
        failure.map_or(Ok(()), Err)
    }

    /// Ranges still waiting for a discard.
    pub fn pending_discards(&self) -> Vec<GpaRange> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.iter().map(|(r, _)| *r).collect()
    }

    fn count(&self, pages: u64, to_private: bool, origin: Origin) {
        let s = &self.stats;
        let dir = if to_private {
            &s.to_private_pages
        } else {
            &s.to_shared_pages
        };
        dir.fetch_add(pages, Ordering::Relaxed);
        let o = match origin {
            Origin::Explicit => &s.explicit,
            Origin::Implicit => &s.implicit,
        };
        o.fetch_add(1, Ordering::Relaxed);
    }

    /// Splits `range` into per-slot pieces, in order; the iterator ends
    /// with `Err(first uncovered gpa)` at a gap. No allocation.
    fn pieces_iter(
        &self,
        range: GpaRange,
    ) -> impl Iterator<Item = Result<Piece<'_, <H::Vm as Vm>::Shared>, Gpa>> + '_ {
        let mut cursor = range.start();
        let first = self.slots.partition_point(|s| s.range.end() <= cursor);
        let mut slots = self.slots[first..].iter();
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || cursor >= range.end() {
                return None;
            }
            let piece = slots
                .next()
                .filter(|s| s.range.contains(cursor))
                .and_then(|slot| {
                    let r = GpaRange::from_bounds(cursor, slot.range.end().min(range.end()))?;
                    Some(Piece { slot, range: r })
                });
            match piece {
                Some(p) => {
                    cursor = p.range.end();
                    Some(Ok(p))
                }
                None => {
                    failed = true;
                    Some(Err(cursor))
                }
            }
        })
    }

    /// Refuses a range that covers some memslot and some gap. (A range
    /// wholly outside memory passes: converting it to shared is a no-op.)
    fn refuse_partly_outside(&self, range: GpaRange) -> Result<(), ConvertError> {
        let first = self
            .slots
            .partition_point(|s| s.range.end() <= range.start());
        let touches = self
            .slots
            .get(first)
            .is_some_and(|s| s.range.overlaps(range));
        if !touches {
            return Ok(());
        }
        match self.pieces_iter(range).find_map(Result::err) {
            Some(gap) => Err(ConvertError::Refused {
                gpa: gap.raw(),
                why: format!("{range} is only partly inside guest memory (gap at {gap})"),
            }),
            None => Ok(()),
        }
    }

    fn refuse_unconvertible(&self, range: GpaRange, to_private: bool) -> Result<(), ConvertError> {
        if !self.private_mem {
            return Err(ConvertError::Refused {
                gpa: range.start().raw(),
                why: format!("the {} VM has no private memory", self.vm.vm_type().name()),
            });
        }
        // One walk of the slots; a gap anywhere is reported before a slot
        // without guest_memfd.
        let mut no_gmem = None;
        for piece in self.pieces_iter(range) {
            match piece {
                Err(gpa) => {
                    return Err(ConvertError::Refused {
                        gpa: gpa.raw(),
                        why: format!("{range} is not fully covered by memslots (gap at {gpa})"),
                    })
                }
                Ok(p) if p.slot.gmem.is_none() => {
                    no_gmem.get_or_insert(p);
                }
                Ok(_) => {}
            }
        }
        if let Some(p) = no_gmem {
            let why = format!(
                "{} is not backed by guest_memfd (slot {}), so it cannot become {}",
                p.range,
                p.slot.id.0,
                if to_private { "private" } else { "shared" }
            );
            return Err(ConvertError::Refused {
                gpa: p.range.start().raw(),
                why,
            });
        }
        Ok(())
    }

    fn set_kernel_attrs(&self, range: GpaRange, private: bool) -> Result<(), BackendError> {
        self.vm.set_memory_attributes(
            range.start().raw(),
            range.len(),
            Attrs::from_private(private).0,
            0,
        )
    }

    /// Discards the side no longer in use for every run, split at slot
    /// boundaries (pieces outside slots are skipped: `refuse_unconvertible`
    /// already rejected those). On failure returns how many pieces were
    /// discarded, the pieces left (the failed one first) and the error.
    fn discard_runs(
        &self,
        runs: &[Run],
        to_private: bool,
    ) -> Result<(), (usize, Vec<GpaRange>, BackendError)> {
        let mut done = 0;
        let mut pieces = runs
            .iter()
            .flat_map(|r| self.pieces_iter(r.range).map_while(Result::ok));
        while let Some(p) = pieces.next() {
            if let Err(e) = self.discard_one(&p, to_private) {
                let rest = std::iter::once(p.range)
                    .chain(pieces.map(|p| p.range))
                    .collect();
                return Err((done, rest, e));
            }
            done += 1;
        }
        Ok(())
    }

    fn discard_one(
        &self,
        p: &Piece<'_, <H::Vm as Vm>::Shared>,
        to_private: bool,
    ) -> Result<(), BackendError> {
        if to_private {
            self.discard_shared(p)
        } else {
            self.discard_gmem(p)
        }
    }

    /// Discards each piece in order; on failure returns how many succeeded.
    fn discard_pieces(
        &self,
        pieces: &[GpaRange],
        to_private: bool,
    ) -> Result<(), (usize, BackendError)> {
        for (i, &r) in pieces.iter().enumerate() {
            let res = match self.pieces_iter(r).next() {
                Some(Ok(p)) => self.discard_one(&p, to_private),
                _ => Ok(()),
            };
            res.map_err(|e| (i, e))?;
        }
        Ok(())
    }

    fn discard_gmem(&self, p: &Piece<'_, <H::Vm as Vm>::Shared>) -> Result<(), BackendError> {
        let Some(g) = &p.slot.gmem else { return Ok(()) };
        let off = g
            .offset
            .checked_add(p.slot_offset())
            .ok_or_else(|| overflow("punch"))?;
        let (off, len) = (to_i64(off)?, to_i64(p.range.len())?);
        self.hv.gmem_fallocate(
            &g.file,
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )?;
        self.stats
            .discarded_gmem
            .fetch_add(p.range.len() / PAGE_SIZE, Ordering::Relaxed);
        Ok(())
    }

    fn discard_shared(&self, p: &Piece<'_, <H::Vm as Vm>::Shared>) -> Result<(), BackendError> {
        if p.slot.gmem_only {
            return Ok(());
        }
        let Some(shared) = &p.slot.shared else {
            return Ok(());
        };
        shared.discard(p.slot_offset(), p.range.len())?;
        self.stats
            .discarded_shared
            .fetch_add(p.range.len() / PAGE_SIZE, Ordering::Relaxed);
        Ok(())
    }

    /// Puts every run's attribute back. Returns false if any restore failed.
    fn restore(&self, runs: &[Run]) -> bool {
        runs.iter()
            .all(|r| self.set_kernel_attrs(r.range, r.private).is_ok())
    }

    /// The final attribute map of guest_memfd-backed memory, coalesced across
    /// adjacent slots.
    pub fn gmem_attributes(&self) -> Vec<Run> {
        let map = self.lock_map();
        let mut out: Vec<Run> = Vec::new();
        for s in self.slots.iter().filter(|s| s.gmem.is_some()) {
            for run in map.runs(s.range) {
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
}

/// Reports a no-op or a failed conversion (committed ones are reported
/// inside the transaction).
fn trace_outcome(
    sink: &dyn TraceSink,
    gpa: Gpa,
    len: u64,
    to_private: bool,
    origin: Origin,
    result: &Result<Outcome, ConvertError>,
) {
    let (vcpu, cause, gpa) = (trace::current_vcpu(), origin.into(), gpa.raw());
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

fn overflow(op: &'static str) -> BackendError {
    BackendError::Invalid {
        op,
        why: "offset overflows".into(),
    }
}

fn to_i64(v: u64) -> Result<i64, BackendError> {
    i64::try_from(v).map_err(|_| overflow("discard"))
}

fn validate(gpa: Gpa, len: u64, limit: GpaLimit) -> Result<GpaRange, ConvertError> {
    let invalid = |why| ConvertError::Invalid {
        gpa: gpa.raw(),
        len,
        why,
    };
    if !gpa.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
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
