//! Discards: freeing the side a conversion no longer uses, and the deferred
//! discards a partial failure leaves for later.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::slots::{pieces, Piece};
use super::{ConvertError, ConvertTo, Engine, Stat};
use crate::attrmap::Run;
use crate::contract::ConversionBackend;
use crate::error::BackendError;
use crate::slot::SlotDesc;
use crate::types::{GpaRange, PAGE_SIZE};

type Slots<B> = [Arc<SlotDesc<<B as ConversionBackend>::Gmem, <B as ConversionBackend>::Shared>>];

impl<B: ConversionBackend> Engine<B> {
    /// Discards the side no longer in use for every run, split at slot
    /// boundaries (pieces outside slots are skipped: the refusal checks
    /// already rejected those). On failure returns how many pieces were
    /// discarded, the pieces left (the failed one first) and the error.
    pub(super) fn discard_runs(
        &self,
        slots: &Slots<B>,
        runs: &[Run],
        to: ConvertTo,
    ) -> Result<(), (usize, Vec<GpaRange>, BackendError)> {
        let mut done = 0;
        let mut it = runs
            .iter()
            .flat_map(|r| pieces(slots, r.range).map_while(Result::ok));
        while let Some(p) = it.next() {
            if let Err(e) = self.discard_one(&p, to) {
                let rest = std::iter::once(p.range)
                    .chain(it.map(|p| p.range))
                    .collect();
                return Err((done, rest, e));
            }
            done += 1;
        }
        Ok(())
    }

    fn discard_one(
        &self,
        p: &Piece<'_, B::Gmem, B::Shared>,
        to: ConvertTo,
    ) -> Result<(), BackendError> {
        let pages = p.range.len() / PAGE_SIZE;
        match to {
            ConvertTo::Shared => {
                let Some(g) = &p.slot.gmem else { return Ok(()) };
                let off = g
                    .offset
                    .checked_add(p.slot_offset())
                    .ok_or_else(|| overflow("punch"))?;
                self.backend.punch_gmem(&g.file, off, p.range.len())?;
                self.stats.add(Stat::DiscardedGmem, pages);
            }
            ConvertTo::Private => {
                let Some(s) = &p.slot.shared else {
                    return Ok(());
                };
                let off = s
                    .offset
                    .checked_add(p.slot_offset())
                    .ok_or_else(|| overflow("discard"))?;
                self.backend.discard_shared(&s.mem, off, p.range.len())?;
                self.stats.add(Stat::DiscardedShared, pages);
            }
        }
        Ok(())
    }

    /// Records discards that failed after the attributes changed.
    pub(super) fn defer(&self, rest: &[GpaRange], to: ConvertTo) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend(rest.iter().map(|&r| (r, to)));
        self.has_pending
            .store(!pending.is_empty(), Ordering::Release);
        self.stats.add(Stat::DeferredDiscards, rest.len() as u64);
    }

    /// Retries deferred discards overlapping `range`; refuses the conversion
    /// if one still fails, so stale data can never show across it.
    pub(super) fn settle_pending(
        &self,
        slots: &Slots<B>,
        range: GpaRange,
    ) -> Result<(), ConvertError> {
        self.settle_pending_strict(slots, range)
            .map_err(|(r, e)| ConvertError::Refused {
                gpa: r.start().raw(),
                why: format!(
                    "stale backing of {r} could not be discarded earlier and still fails: {e}"
                ),
            })
    }

    /// [`settle_pending`](Self::settle_pending), answering the failed piece
    /// and its error. A piece whose slot is gone is dropped.
    pub(super) fn settle_pending_strict(
        &self,
        slots: &Slots<B>,
        range: GpaRange,
    ) -> Result<(), (GpaRange, BackendError)> {
        if !self.has_pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (r, to) in pending.drain(..) {
            if !r.overlaps(range) || failure.is_some() {
                kept.push((r, to));
                continue;
            }
            let res = match pieces(slots, r).next() {
                Some(Ok(p)) => self.discard_one(&p, to),
                _ => Ok(()),
            };
            if let Err(e) = res {
                failure = Some((r, e));
                kept.push((r, to));
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
}

fn overflow(op: &'static str) -> BackendError {
    BackendError::Invalid {
        op,
        why: "offset overflows".into(),
    }
}
