//! Where things go in the trace picture: the GPA axis (bands), the time
//! axis (event order), the vCPU lanes and the final-map column. Pure
//! geometry, so the pixel test can ask where a page and a moment are.
//!
//! The GPA axis is cut into *bands* at every address where something
//! happens (slot edges, conversion ranges, faulting pages, requests, the
//! final map's edges). A band changes state as a whole, so one page that
//! changes is as visible as a gigabyte: band heights grow with the log of
//! their size, not linearly. Past [`MAX_LOG_BANDS`] bands the axis is
//! linear (heights proportional to size).

use std::collections::BTreeSet;

use privmem_core::trace::TraceEvent;
use privmem_core::PAGE_SIZE;

use super::Trace;

/// Left edge of the plot (room for GPA labels and lane names).
pub const PLOT_X0: f64 = 118.0;
/// Width of the plot.
pub const PLOT_W: f64 = 780.0;
/// Gap between the plot and the final-map column.
pub const FINAL_GAP: f64 = 16.0;
/// Width of the final-map column.
pub const FINAL_W: f64 = 44.0;
/// Top of the memory panel.
pub const PLOT_Y0: f64 = 112.0;
/// Height of one vCPU lane.
pub const LANE_H: f64 = 30.0;
/// Space between the memory panel and the first lane.
pub const LANE_GAP: f64 = 14.0;
/// Above this many bands the GPA axis is linear.
pub const MAX_LOG_BANDS: usize = 120;
/// Total width of the picture.
pub const WIDTH: f64 = PLOT_X0 + PLOT_W + FINAL_GAP + FINAL_W + 62.0;

/// What a band of guest-physical addresses is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BandKind {
    /// guest_memfd memory: private or shared, convertible.
    Gmem,
    /// A slot without guest_memfd: always shared.
    SharedOnly,
    /// Between slots: no memory.
    Gap,
}

/// A range of GPAs drawn as one horizontal strip.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Band {
    /// First byte.
    pub lo: u64,
    /// One past the last byte.
    pub hi: u64,
    /// What it is.
    pub kind: BandKind,
    /// Top edge (higher addresses are higher up).
    pub y_top: f64,
    /// Bottom edge.
    pub y_bot: f64,
}

/// The picture's geometry.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Bands, lowest address first.
    pub bands: Vec<Band>,
    /// Height of the memory panel.
    pub mem_h: f64,
    /// Whether band heights are logarithmic (else linear).
    pub log_scale: bool,
    /// Number of events (the time axis spans `0..=events+1` units).
    pub events: usize,
    /// Number of vCPU lanes.
    pub lanes: usize,
}

/// Every range a trace mentions, clipped later to the memory range.
fn event_ranges(t: &Trace) -> impl Iterator<Item = (u64, u64)> + '_ {
    let from_events = t.events.iter().filter_map(|s| match &s.event {
        TraceEvent::MapRequest {
            gpa, len, invalid, ..
        } if invalid.is_none() => Some((*gpa, gpa.saturating_add(*len))),
        TraceEvent::MemoryFault { gpa, size, .. } => {
            let base = gpa & !(PAGE_SIZE - 1);
            Some((base, base.saturating_add((*size).max(PAGE_SIZE))))
        }
        TraceEvent::Converted { gpa, len, .. } | TraceEvent::ConvertFailed { gpa, len, .. } => {
            Some((*gpa, gpa.saturating_add(*len)))
        }
        _ => None,
    });
    let finals = t
        .final_map
        .iter()
        .map(|(r, _)| (r.start().raw(), r.end().raw()));
    let errors = t.vcpus.iter().filter_map(|v| v.gpa).map(|g| {
        let base = g & !(PAGE_SIZE - 1);
        (base, base.saturating_add(PAGE_SIZE))
    });
    from_events.chain(finals).chain(errors)
}

fn band_kind(t: &Trace, lo: u64) -> BandKind {
    t.slots
        .iter()
        .find(|s| s.range.start().raw() <= lo && lo < s.range.end().raw())
        .map_or(BandKind::Gap, |s| {
            if s.guest_memfd {
                BandKind::Gmem
            } else {
                BandKind::SharedOnly
            }
        })
}

/// A band's share of the panel: grows with the log of its size; gaps count little.
fn weight(b: &Band, log: bool) -> f64 {
    let pages = ((b.hi - b.lo) / PAGE_SIZE).max(1) as f64;
    match (log, b.kind) {
        (false, _) => pages,
        (true, BandKind::Gap) => 0.8,
        (true, _) => 1.0 + 0.5 * pages.log2(),
    }
}

impl Layout {
    /// Lays out `t`.
    pub fn new(t: &Trace) -> Layout {
        let lo = t.slots.iter().map(|s| s.range.start().raw()).min();
        let hi = t.slots.iter().map(|s| s.range.end().raw()).max();
        let (lo, hi) = match (lo, hi) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => (0, PAGE_SIZE),
        };
        let mut cuts: BTreeSet<u64> = [lo, hi].into_iter().collect();
        for s in &t.slots {
            cuts.insert(s.range.start().raw());
            cuts.insert(s.range.end().raw());
        }
        for (a, b) in event_ranges(t) {
            cuts.extend([a.clamp(lo, hi), b.clamp(lo, hi)]);
        }
        let cuts: Vec<u64> = cuts.into_iter().collect();
        let mut bands: Vec<Band> = cuts
            .windows(2)
            .map(|w| Band {
                lo: w[0],
                hi: w[1],
                kind: band_kind(t, w[0]),
                y_top: 0.0,
                y_bot: 0.0,
            })
            .collect();
        let log_scale = bands.len() <= MAX_LOG_BANDS;
        let total: f64 = bands.iter().map(|b| weight(b, log_scale)).sum();
        let mem_h = (bands.len() as f64 * 22.0).clamp(260.0, 620.0);
        let mut y = PLOT_Y0 + mem_h;
        for b in &mut bands {
            let h = weight(b, log_scale) / total * mem_h;
            b.y_bot = y;
            b.y_top = y - h;
            y -= h;
        }
        Layout {
            bands,
            mem_h,
            log_scale,
            events: t.events.len(),
            lanes: t.vcpus.len().max(1),
        }
    }

    /// The x of time unit `u`: 0 = the left edge (before the first event),
    /// event `seq` (numbered from 1) at `seq`, `events + 1` = the right edge.
    pub fn x_at(&self, u: f64) -> f64 {
        PLOT_X0 + u / (self.events as f64 + 1.0) * PLOT_W
    }

    /// The x where event `seq` is drawn (and where its conversion takes effect).
    pub fn x_event(&self, seq: usize) -> f64 {
        self.x_at(seq as f64)
    }

    /// Right edge of the plot.
    pub fn plot_x1(&self) -> f64 {
        PLOT_X0 + PLOT_W
    }

    /// Bottom of the memory panel.
    pub fn mem_y1(&self) -> f64 {
        PLOT_Y0 + self.mem_h
    }

    /// The y of a GPA (interpolated within its band; clamped to the panel).
    pub fn y_of(&self, gpa: u64) -> f64 {
        let Some(first) = self.bands.first() else {
            return self.mem_y1();
        };
        if gpa <= first.lo {
            return first.y_bot;
        }
        for b in &self.bands {
            if gpa < b.hi {
                let f = (gpa - b.lo) as f64 / (b.hi - b.lo) as f64;
                return b.y_bot - f * (b.y_bot - b.y_top);
            }
        }
        PLOT_Y0
    }

    /// The middle of the band holding `gpa`'s page, where a marker goes.
    pub fn y_mid(&self, gpa: u64) -> f64 {
        self.bands
            .iter()
            .find(|b| b.lo <= gpa && gpa < b.hi)
            .map_or_else(|| self.y_of(gpa), |b| (b.y_top + b.y_bot) / 2.0)
    }

    /// The vertical middle of lane `i`.
    pub fn lane_y(&self, i: usize) -> f64 {
        self.mem_y1() + LANE_GAP + (i as f64 + 0.5) * LANE_H
    }

    /// Bottom of the last lane (the time axis hangs below it).
    pub fn lanes_y1(&self) -> f64 {
        self.mem_y1() + LANE_GAP + self.lanes as f64 * LANE_H
    }

    /// Left edge of the final-map column.
    pub fn final_x0(&self) -> f64 {
        self.plot_x1() + FINAL_GAP
    }

    /// Total height of the picture (legend included).
    pub fn height(&self) -> f64 {
        self.lanes_y1() + 150.0
    }
}
