//! The memory panel (bands over time), its marks, the GPA axis and the
//! final-map column.

use privmem_core::trace::TraceEvent;
use svg::node::element::Group;

use super::{cross, dot, line, rect, state_colour, text, Labels, FAIL, GAP, INK, NO_GMEM};
use crate::trace::layout::{Band, BandKind, Layout, FINAL_W, PLOT_W, PLOT_X0, PLOT_Y0};
use crate::trace::Trace;

/// Each band's states over time: `(u0, u1, private)` in time units.
pub fn band_segments(t: &Trace, lay: &Layout) -> Vec<Vec<(f64, f64, bool)>> {
    let end = lay.events as f64 + 1.0;
    let mut open: Vec<(f64, bool)> = vec![(0.0, t.initial_private); lay.bands.len()];
    let mut done: Vec<Vec<(f64, f64, bool)>> = vec![Vec::new(); lay.bands.len()];
    for s in &t.events {
        let TraceEvent::Converted {
            gpa,
            len,
            to_private,
            pages,
            ..
        } = s.event
        else {
            continue;
        };
        if pages == 0 {
            continue;
        }
        let (lo, hi) = (gpa, gpa.saturating_add(len));
        for (i, b) in lay.bands.iter().enumerate() {
            let inside = lo <= b.lo && b.hi <= hi && b.kind == BandKind::Gmem;
            if inside && open[i].1 != to_private {
                let u = s.seq as f64;
                done[i].push((open[i].0, u, open[i].1));
                open[i] = (u, to_private);
            }
        }
    }
    for (i, (u0, p)) in open.into_iter().enumerate() {
        done[i].push((u0, end, p));
    }
    done
}

/// A note written once per slot, in its tallest band, if it has room.
fn slot_notes(t: &Trace, lay: &Layout) -> Group {
    let mut g = Group::new();
    for s in &t.slots {
        let note = if !s.guest_memfd {
            "no guest_memfd: shared only"
        } else if s.gmem_closed {
            "guest_memfd closed after binding (close_guest_memfd)"
        } else {
            continue;
        };
        let (lo, hi) = (s.range.start().raw(), s.range.end().raw());
        let tallest = lay
            .bands
            .iter()
            .filter(|b| lo <= b.lo && b.hi <= hi)
            .max_by(|a, b| (a.y_bot - a.y_top).total_cmp(&(b.y_bot - b.y_top)));
        if let Some(b) = tallest.filter(|b| b.y_bot - b.y_top >= 12.0) {
            let colour = if s.guest_memfd { "#ffffff" } else { INK };
            let y = (b.y_top + b.y_bot) / 2.0 + 4.0;
            g = g.add(text(PLOT_X0 + 6.0, y, note, 11.0, "start").set("fill", colour));
        }
    }
    g
}

/// Bands coloured by state over time.
pub fn panel(t: &Trace, lay: &Layout) -> Group {
    let mut g = Group::new().set("id", "memory");
    for (b, segs) in lay.bands.iter().zip(band_segments(t, lay)) {
        let h = b.y_bot - b.y_top;
        match b.kind {
            BandKind::Gmem => {
                for (u0, u1, private) in segs {
                    let (x0, x1) = (lay.x_at(u0), lay.x_at(u1));
                    g = g.add(rect(x0, b.y_top, x1 - x0, h, state_colour(private)));
                }
            }
            BandKind::SharedOnly => g = g.add(rect(PLOT_X0, b.y_top, PLOT_W, h, NO_GMEM)),
            BandKind::Gap => {
                g = g.add(rect(PLOT_X0, b.y_top, PLOT_W, h, GAP));
                if h >= 12.0 {
                    let y = (b.y_top + b.y_bot) / 2.0 + 4.0;
                    g = g.add(text(PLOT_X0 + 6.0, y, "no memslot", 11.0, "start"));
                }
            }
        }
    }
    g.add(slot_notes(t, lay)).add(
        rect(PLOT_X0, PLOT_Y0, PLOT_W, lay.mem_h, "none")
            .set("stroke", INK)
            .set("stroke-width", 1),
    )
}

/// Faulting pages and failures drawn over the memory.
pub fn marks(t: &Trace, lay: &Layout, labels: &mut Labels) -> Group {
    let mut g = Group::new().set("id", "memory-marks");
    let limit = lay.plot_x1();
    for (x, y) in failure_points(t, lay) {
        labels.reserve(x, y, 6.0);
    }
    for s in &t.events {
        if let TraceEvent::MemoryFault { gpa, .. } = s.event {
            labels.reserve(lay.x_event(s.seq), lay.y_mid(gpa), 4.0);
        }
    }
    for s in &t.events {
        let x = lay.x_event(s.seq);
        match &s.event {
            TraceEvent::MemoryFault { gpa, .. } => {
                g = g.add(dot(x, lay.y_mid(*gpa), 3.2, "none", INK).set("stroke-width", 1.4));
            }
            TraceEvent::ConvertFailed {
                gpa,
                to_private,
                vcpu,
                ..
            } => {
                let y = lay.y_mid(*gpa);
                let who = vcpu.map(|v| format!(", vCPU {v}")).unwrap_or_default();
                let to = if *to_private { "private" } else { "shared" };
                let label = format!("refused: {gpa:#x} to {to}{who}");
                g = g
                    .add(cross(x, y, 5.0))
                    .add(labels.place(x, y, label, FAIL, limit));
            }
            TraceEvent::VcpuDone { vcpu } => {
                let end = usize::try_from(*vcpu).ok().and_then(|i| t.vcpus.get(i));
                if let Some((kind, gpa)) = end.and_then(|e| Some((e.kind.as_deref()?, e.gpa?))) {
                    let y = lay.y_mid(gpa);
                    let label = format!("{} at {gpa:#x} (vCPU {vcpu})", kind.replace('_', " "));
                    g = g
                        .add(cross(x, y, 5.5))
                        .add(labels.place(x, y, label, FAIL, limit));
                }
            }
            _ => {}
        }
    }
    g
}

/// Where the red crosses go in the memory panel.
fn failure_points(t: &Trace, lay: &Layout) -> Vec<(f64, f64)> {
    t.events
        .iter()
        .filter_map(|s| {
            let gpa = match s.event {
                TraceEvent::ConvertFailed { gpa, .. } => gpa,
                TraceEvent::VcpuDone { vcpu } => {
                    let end = usize::try_from(vcpu).ok().and_then(|i| t.vcpus.get(i))?;
                    end.kind.as_ref()?;
                    end.gpa?
                }
                _ => return None,
            };
            Some((lay.x_event(s.seq), lay.y_mid(gpa)))
        })
        .collect()
}

/// Hex GPAs at band edges (skipping labels that would touch).
pub fn gpa_axis(lay: &Layout) -> Group {
    let mut g = Group::new().set("id", "gpa-axis");
    let mut cuts: Vec<(u64, f64)> = lay.bands.iter().map(|b| (b.lo, b.y_bot)).collect();
    if let Some(b) = lay.bands.last() {
        cuts.push((b.hi, b.y_top));
    }
    let mut last_y = f64::INFINITY;
    for (gpa, y) in cuts {
        g = g.add(line(PLOT_X0 - 5.0, y, PLOT_X0, y, INK, 1.0));
        if last_y - y >= 12.0 {
            g = g.add(text(
                PLOT_X0 - 8.0,
                y + 4.0,
                format!("{gpa:#x}"),
                11.0,
                "end",
            ));
            last_y = y;
        }
    }
    let scale = if lay.log_scale {
        "band height grows with the log of its size"
    } else {
        "to scale"
    };
    let cy = PLOT_Y0 + lay.mem_h / 2.0;
    g.add(
        text(
            16.0,
            cy,
            format!("guest physical address ({scale})"),
            12.0,
            "middle",
        )
        .set("transform", format!("rotate(-90 16 {cy})")),
    )
}

fn final_state(t: &Trace, b: &Band) -> Option<bool> {
    t.final_map
        .iter()
        .find(|(r, _)| r.start().raw() <= b.lo && b.hi <= r.end().raw())
        .map(|(_, p)| *p)
}

/// The engine's final attribute map, from the report.
pub fn final_column(t: &Trace, lay: &Layout) -> Group {
    let x = lay.final_x0();
    let mut g = Group::new().set("id", "final-map");
    for b in &lay.bands {
        let fill = match (b.kind, final_state(t, b)) {
            (BandKind::Gap, _) => GAP,
            (_, Some(p)) => state_colour(p),
            (_, None) => NO_GMEM,
        };
        g = g.add(rect(x, b.y_top, FINAL_W, b.y_bot - b.y_top, fill));
    }
    g.add(
        rect(x, PLOT_Y0, FINAL_W, lay.mem_h, "none")
            .set("stroke", INK)
            .set("stroke-width", 1),
    )
    .add(text(
        x + FINAL_W / 2.0,
        PLOT_Y0 - 18.0,
        "final",
        11.5,
        "middle",
    ))
    .add(text(
        x + FINAL_W / 2.0,
        PLOT_Y0 - 5.0,
        "map",
        11.5,
        "middle",
    ))
}
