//! The true map's runs over a range that crosses chunks, read from the
//! stripes' maps in one pass.
//!
//! Each stripe's map is walked once over the range ([`AttrMap::runs_iter`]).
//! Between two consecutive run boundaries of all the stripes, every stripe
//! holds one value. Where they all agree, that is the true value of the
//! whole interval, whoever owns its chunks: one step, however many chunks
//! it spans. Only where they disagree is the interval cut into chunks, each
//! taking its owner's value. Stripes disagree only inside ranges that a
//! `set` wrote into some stripes but not all, i.e. ranges of fewer chunks
//! than there are stripes, so a walk costs O(stripes × runs) plus a few
//! chunks, never one step per chunk of a long range.

use std::ops::ControlFlow;

use super::{AttrMap, Run, StripedMap};
use crate::types::GpaRange;

/// Joins adjacent runs of one attribute before handing them on.
struct Coalesce<F> {
    open: Option<Run>,
    f: F,
}

impl<F: FnMut(Run) -> ControlFlow<()>> Coalesce<F> {
    fn push(&mut self, run: Run) -> ControlFlow<()> {
        match &mut self.open {
            Some(o) if o.private == run.private && o.range.end() == run.range.start() => {
                o.range =
                    GpaRange::from_bounds(o.range.start(), run.range.end()).unwrap_or(o.range);
                ControlFlow::Continue(())
            }
            Some(o) => {
                let done = *o;
                self.open = Some(run);
                (self.f)(done)
            }
            None => {
                self.open = Some(run);
                ControlFlow::Continue(())
            }
        }
    }

    fn finish(mut self) {
        if let Some(o) = self.open.take() {
            let _ = (self.f)(o);
        }
    }
}

/// Calls `f` with each maximal run of the true map inside `range` (rounded
/// out to pages), in address order, until it breaks. `maps` are the locked
/// maps of every stripe `range` touches, ascending by stripe.
pub(super) fn sweep(
    striped: &StripedMap,
    maps: &[(usize, &AttrMap)],
    range: GpaRange,
    f: impl FnMut(Run) -> ControlFlow<()>,
) {
    let mut out = Coalesce { open: None, f };
    if walk(striped, maps, range, &mut out).is_continue() {
        out.finish();
    }
}

fn walk<F: FnMut(Run) -> ControlFlow<()>>(
    striped: &StripedMap,
    maps: &[(usize, &AttrMap)],
    range: GpaRange,
    out: &mut Coalesce<F>,
) -> ControlFlow<()> {
    let mut walks: Vec<_> = maps.iter().map(|(_, m)| m.runs_iter(range)).collect();
    // Each stripe's run at the cursor; all walks cover the same pages.
    let mut at: Vec<Run> = Vec::with_capacity(walks.len());
    for w in &mut walks {
        match w.next() {
            Some(run) => at.push(run),
            None => return ControlFlow::Continue(()),
        }
    }
    let mut cursor = at[0].range.start();
    loop {
        let Some(end) = at.iter().map(|r| r.range.end()).min() else {
            return ControlFlow::Continue(());
        };
        let Some(span) = GpaRange::from_bounds(cursor, end) else {
            return ControlFlow::Continue(());
        };
        let value = at[0].private;
        if at.iter().all(|r| r.private == value) {
            out.push(Run {
                range: span,
                private: value,
            })?;
        } else {
            for p in striped.pieces(span) {
                let owner = maps.partition_point(|(i, _)| *i < p.stripe);
                out.push(Run {
                    range: p.range,
                    private: at[owner].private,
                })?;
            }
        }
        for (run, w) in at.iter_mut().zip(&mut walks) {
            if run.range.end() == end {
                match w.next() {
                    Some(next) => *run = next,
                    None => return ControlFlow::Continue(()),
                }
            }
        }
        cursor = end;
    }
}
