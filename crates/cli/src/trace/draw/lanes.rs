//! One lane per vCPU: its requests, faults, conversions and end; and the
//! time axis under the lanes.

use privmem_core::trace::TraceEvent;
use privmem_core::FaultErrno;
use svg::node::element::Group;

use super::{
    cross, diamond, dot, line, rect, state_colour, text, time_unit, triangle, Labels, FAIL, INK,
};
use crate::trace::layout::{Layout, LANE_H, PLOT_W, PLOT_X0};
use crate::trace::{Stamped, Trace};

fn lane_event(g: Group, lay: &Layout, s: &Stamped, labels: &mut Labels) -> Group {
    let x = lay.x_event(s.seq);
    let lane = |v: u32| lay.lane_y(usize::try_from(v).unwrap_or(0));
    match &s.event {
        TraceEvent::MapRequest {
            vcpu,
            to_private,
            invalid: None,
            ..
        } => g.add(diamond(x, lane(*vcpu), 6.5, state_colour(*to_private), INK)),
        TraceEvent::MapRequest {
            vcpu,
            invalid: Some(_),
            ..
        } => {
            let y = lane(*vcpu);
            g.add(diamond(x, y, 6.5, "#ffffff", FAIL)).add(labels.place(
                x,
                y,
                "invalid request (-22)".into(),
                FAIL,
                lay.plot_x1(),
            ))
        }
        TraceEvent::MemoryFault {
            vcpu,
            private,
            errno,
            ..
        } => {
            let fill = match errno {
                FaultErrno::Ehwpoison => FAIL,
                FaultErrno::Efault => state_colour(*private),
            };
            g.add(dot(x, lane(*vcpu), 5.0, fill, INK))
        }
        TraceEvent::Converted {
            vcpu: Some(v),
            to_private,
            pages,
            ..
        } => {
            let fill = if *pages > 0 {
                state_colour(*to_private)
            } else {
                "#ffffff"
            };
            g.add(triangle(x, lane(*v), 5.5, fill))
        }
        TraceEvent::ConvertFailed { vcpu: Some(v), .. } => g.add(cross(x, lane(*v), 4.5)),
        TraceEvent::VcpuDone { vcpu } => {
            let y = lane(*vcpu);
            g.add(line(x, y - 10.0, x, y + 10.0, INK, 3.0))
        }
        _ => g,
    }
}

/// How vCPU `i` ended, written right of its lane.
fn end_label(t: &Trace, lay: &Layout, i: usize) -> Group {
    let y = lay.lane_y(i) + 4.0;
    let x = lay.plot_x1() + 8.0;
    let g = Group::new();
    match t.vcpus.get(i) {
        Some(e) => match &e.kind {
            None => g.add(text(x, y, e.state.clone(), 11.5, "start")),
            Some(kind) => g.add(
                text(x, y, kind.replace('_', " "), 11.5, "start")
                    .set("fill", FAIL)
                    .set("font-weight", "bold"),
            ),
        },
        None => g,
    }
}

/// The vCPU lanes.
pub fn lanes(t: &Trace, lay: &Layout, labels: &mut Labels) -> Group {
    let mut g = Group::new().set("id", "vcpu-lanes");
    for i in 0..lay.lanes {
        let y = lay.lane_y(i);
        let shade = if i % 2 == 0 { "#f0f0f0" } else { "#f8f8f8" };
        g = g
            .add(rect(PLOT_X0, y - LANE_H / 2.0, PLOT_W, LANE_H, shade))
            .add(line(PLOT_X0, y, PLOT_X0 + PLOT_W, y, "#bbbbbb", 1.0))
            .add(text(
                PLOT_X0 - 8.0,
                y + 4.0,
                format!("vCPU {i}"),
                12.0,
                "end",
            ))
            .add(end_label(t, lay, i));
    }
    for s in &t.events {
        g = lane_event(g, lay, s, labels);
    }
    g
}

/// A round step giving at most about ten ticks.
fn tick_step(n: usize) -> usize {
    let raw = n.div_ceil(10).max(1);
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if step * m >= raw {
                return step * m;
            }
        }
        step *= 10;
    }
}

/// Event numbers (and their times, in grey) under the lanes.
pub fn time_axis(t: &Trace, lay: &Layout) -> Group {
    let y = lay.lanes_y1();
    let mut g =
        Group::new()
            .set("id", "time-axis")
            .add(line(PLOT_X0, y, PLOT_X0 + PLOT_W, y, INK, 1.0));
    let step = tick_step(lay.events);
    let (unit, div, decimals) = time_unit(t);
    for s in t.events.iter().filter(|s| s.seq == 1 || s.seq % step == 0) {
        let x = lay.x_event(s.seq);
        let when = format!("{:.1$}", s.t_us / div, decimals);
        g = g
            .add(line(x, y, x, y + 5.0, INK, 1.0))
            .add(text(x, y + 17.0, s.seq.to_string(), 11.0, "middle"))
            .add(text(x, y + 30.0, when, 9.5, "middle").set("fill", "#666666"));
    }
    g.add(text(
        PLOT_X0 + PLOT_W / 2.0,
        y + 48.0,
        format!(
            "events in order, left to right (under each number, in grey: {unit} since the vCPUs \
             started)"
        ),
        12.0,
        "middle",
    ))
}
