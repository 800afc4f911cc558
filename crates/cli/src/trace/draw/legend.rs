//! The header (what ran, what happened) and the legend.

use privmem_core::trace::{Cause, TraceEvent};
use svg::node::element::Group;

use super::{
    cross, diamond, dot, line, rect, text, time_unit, triangle, FAIL, GAP, INK, NO_GMEM, PRIVATE,
    SHARED,
};
use crate::picture::human;
use crate::trace::layout::{Layout, PLOT_X0};
use crate::trace::Trace;

/// Title, what ran and the counts.
pub fn header(t: &Trace, lay: &Layout) -> Group {
    let (mut conv, mut by_fault, mut refused) = (0, 0, 0);
    for s in &t.events {
        match &s.event {
            TraceEvent::Converted { pages, cause, .. } if *pages > 0 => {
                conv += 1;
                by_fault += usize::from(*cause == Cause::MemoryFault);
            }
            TraceEvent::ConvertFailed { .. } => refused += 1,
            _ => {}
        }
    }
    let mem: u64 = t.slots.iter().map(|s| s.range.len()).sum();
    let (unit, div, decimals) = time_unit(t);
    let (first, last) = match (t.events.first(), t.events.last()) {
        (Some(a), Some(b)) => (a.t_us / div, b.t_us / div),
        _ => (0.0, 0.0),
    };
    let what = format!(
        "{} VM on the {} backend; {} of guest memory, starting {}.",
        t.vm_type,
        t.backend,
        human(mem),
        if t.initial_private {
            "private"
        } else {
            "shared"
        },
    );
    let counts = format!(
        "{} events, {first:.decimals$} to {last:.decimals$} {unit} after the vCPUs started: {conv} conversions \
         ({by_fault} on memory faults, {} on MAP_GPA_RANGE requests), {refused} refused.",
        lay.events,
        conv - by_fault
    );
    let how = "Each strip is a range of guest memory, coloured by its state at that moment; \
               the lanes below show what each vCPU did.";
    Group::new()
        .set("id", "header")
        .add(
            text(
                PLOT_X0,
                24.0,
                format!("privmem trace: {}", t.title),
                16.0,
                "start",
            )
            .set("font-weight", "bold"),
        )
        .add(text(PLOT_X0, 44.0, what, 12.0, "start"))
        .add(text(PLOT_X0, 60.0, counts, 12.0, "start"))
        .add(text(PLOT_X0, 76.0, how, 12.0, "start").set("fill", "#555555"))
}

fn swatch(x: f64, y: f64, fill: &str) -> svg::node::element::Rectangle {
    rect(x, y - 11.0, 14.0, 14.0, fill)
        .set("stroke", INK)
        .set("stroke-width", 0.8)
}

/// Three rows of three: colours, markers, failures.
pub fn legend(lay: &Layout) -> Group {
    let y0 = lay.lanes_y1() + 74.0;
    let (c0, c1, c2) = (PLOT_X0, PLOT_X0 + 318.0, PLOT_X0 + 590.0);
    let (y1, y2) = (y0 + 22.0, y0 + 44.0);
    let label = |x: f64, y: f64, s: &str| text(x, y, s, 11.5, "start");
    Group::new()
        .set("id", "legend")
        .add(swatch(c0, y0, PRIVATE))
        .add(label(
            c0 + 20.0,
            y0,
            "private (guest_memfd; only the guest can use it)",
        ))
        .add(swatch(c1, y0, SHARED))
        .add(label(c1 + 20.0, y0, "shared (the host can read it)"))
        .add(swatch(c2, y0, NO_GMEM))
        .add(swatch(c2 + 18.0, y0, GAP))
        .add(label(c2 + 38.0, y0, "no guest_memfd / no memslot"))
        .add(diamond(c0 + 7.0, y1 - 4.0, 6.5, PRIVATE, INK))
        .add(diamond(c0 + 23.0, y1 - 4.0, 6.5, SHARED, INK))
        .add(label(
            c0 + 36.0,
            y1,
            "MAP_GPA_RANGE request: to private / shared",
        ))
        .add(dot(c1 + 7.0, y1 - 4.0, 5.0, PRIVATE, INK))
        .add(dot(c1 + 21.0, y1 - 4.0, 5.0, SHARED, INK))
        .add(dot(c1 + 35.0, y1 - 4.0, 5.0, FAIL, INK))
        .add(label(c1 + 47.0, y1, "fault: private / shared / EHWPOISON"))
        .add(triangle(c2 + 7.0, y1 - 5.0, 5.5, PRIVATE))
        .add(triangle(c2 + 21.0, y1 - 5.0, 5.5, "#ffffff"))
        .add(label(c2 + 33.0, y1, "converted / nothing to change"))
        .add(cross(c0 + 7.0, y2 - 4.0, 5.0))
        .add(label(
            c0 + 20.0,
            y2,
            "failure: refused, hwpoison, fault loop, ...",
        ))
        .add(dot(c1 + 7.0, y2 - 4.0, 3.2, "none", INK).set("stroke-width", 1.4))
        .add(label(c1 + 20.0, y2, "in memory: the page a fault hit"))
        .add(line(c2 + 7.0, y2 - 13.0, c2 + 7.0, y2 + 5.0, INK, 3.0))
        .add(label(c2 + 20.0, y2, "vCPU done (its end at the right)"))
}
