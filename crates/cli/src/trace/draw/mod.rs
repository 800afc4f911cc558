//! The trace as a picture (the `svg` crate builds the document).
//!
//! Top: guest-physical memory over time (address up the side, events in
//! order left to right), each band coloured private or shared as the run
//! converts it, with the final attribute map in a column at the right.
//! Below: one lane per vCPU with its `MAP_GPA_RANGE` requests, memory
//! faults, conversions and how it ended. Failures are red crosses with a
//! label.

mod lanes;
mod legend;
mod memory;

use svg::node::element::{Circle, Line, Path, Polygon, Rectangle, Text, Title};
use svg::Document;

use super::layout::{Layout, WIDTH};
use super::Trace;

/// Private memory (guest_memfd, only the guest can use it).
pub const PRIVATE: &str = "#3b4cc0";
/// Shared memory (the host can read it).
pub const SHARED: &str = "#f4a636";
/// A slot without guest_memfd: shared, never convertible.
pub const NO_GMEM: &str = "#c9c9c9";
/// No memslot at all.
pub const GAP: &str = "#ffffff";
/// Failures.
pub const FAIL: &str = "#d62728";
const INK: &str = "#222222";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// How times are written: microseconds when the whole run took less than
/// a millisecond, else milliseconds. `(unit, divisor of µs, decimals)`.
fn time_unit(t: &Trace) -> (&'static str, f64, usize) {
    if t.events.last().is_some_and(|s| s.t_us < 1e3) {
        ("µs", 1.0, 1)
    } else {
        ("ms", 1e3, 2)
    }
}

fn state_colour(private: bool) -> &'static str {
    if private {
        PRIVATE
    } else {
        SHARED
    }
}

fn rect(x: f64, y: f64, w: f64, h: f64, fill: &str) -> Rectangle {
    Rectangle::new()
        .set("x", x)
        .set("y", y)
        .set("width", w.max(0.0))
        .set("height", h.max(0.0))
        .set("fill", fill)
}

fn text(x: f64, y: f64, s: impl Into<String>, size: f64, anchor: &str) -> Text {
    Text::new(s)
        .set("x", x)
        .set("y", y)
        .set("font-size", size)
        .set("font-family", FONT)
        .set("text-anchor", anchor)
        .set("fill", INK)
}

fn line(x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) -> Line {
    Line::new()
        .set("x1", x1)
        .set("y1", y1)
        .set("x2", x2)
        .set("y2", y2)
        .set("stroke", stroke)
        .set("stroke-width", width)
}

fn cross(x: f64, y: f64, r: f64) -> Path {
    let d = format!(
        "M{} {} L{} {} M{} {} L{} {}",
        x - r,
        y - r,
        x + r,
        y + r,
        x - r,
        y + r,
        x + r,
        y - r
    );
    Path::new()
        .set("d", d)
        .set("stroke", FAIL)
        .set("stroke-width", 3)
        .set("stroke-linecap", "round")
}

fn polygon(points: &[(f64, f64)], fill: &str, stroke: &str) -> Polygon {
    let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x},{y}")).collect();
    Polygon::new()
        .set("points", pts.join(" "))
        .set("fill", fill)
        .set("stroke", stroke)
        .set("stroke-width", 1.2)
}

/// A `MAP_GPA_RANGE` request.
fn diamond(x: f64, y: f64, r: f64, fill: &str, stroke: &str) -> Polygon {
    polygon(
        &[(x, y - r), (x + r, y), (x, y + r), (x - r, y)],
        fill,
        stroke,
    )
}

/// A conversion (pointing up, at the memory it changed).
fn triangle(x: f64, y: f64, r: f64, fill: &str) -> Polygon {
    polygon(
        &[(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)],
        fill,
        INK,
    )
}

fn dot(x: f64, y: f64, r: f64, fill: &str, stroke: &str) -> Circle {
    Circle::new()
        .set("cx", x)
        .set("cy", y)
        .set("r", r)
        .set("fill", fill)
        .set("stroke", stroke)
        .set("stroke-width", 1.2)
}

/// Places labels beside markers so that they do not overlap each other,
/// each with a white halo so it reads on any colour.
#[derive(Default)]
struct Labels {
    boxes: Vec<(f64, f64, f64, f64)>,
}

impl Labels {
    const H: f64 = 13.0;

    fn free(&self, b: (f64, f64, f64, f64)) -> bool {
        self.boxes
            .iter()
            .all(|o| b.1 <= o.0 || o.1 <= b.0 || b.3 <= o.2 || o.3 <= b.2)
    }

    /// Keeps labels off a marker at `(x, y)` of radius `r`.
    fn reserve(&mut self, x: f64, y: f64, r: f64) {
        self.boxes.push((x - r, x + r, y - r, y + r));
    }

    /// A bold label for a marker at `(x, y)`, right of it if it fits
    /// before `x_limit`, else left of it; moved up or down off others.
    fn place(&mut self, x: f64, y: f64, s: String, colour: &str, x_limit: f64) -> Text {
        let w = s.chars().count() as f64 * 7.0;
        let right = x + 10.0 + w < x_limit;
        let (x0, anchor) = if right {
            (x + 10.0, "start")
        } else {
            (x - 10.0 - w, "end")
        };
        let dy = [0.0, 14.0, -14.0, 28.0, -28.0, 42.0, -42.0]
            .into_iter()
            .find(|dy| self.free((x0, x0 + w, y + dy - Self::H / 2.0, y + dy + Self::H / 2.0)))
            .unwrap_or(0.0);
        let yy = y + dy;
        self.boxes
            .push((x0, x0 + w, yy - Self::H / 2.0, yy + Self::H / 2.0));
        let lx = if right { x0 } else { x0 + w };
        text(lx, yy + 4.0, s, 11.5, anchor)
            .set("fill", colour)
            .set("font-weight", "bold")
            .set("stroke", "#ffffff")
            .set("stroke-width", 3)
            .set("stroke-linejoin", "round")
            .set("paint-order", "stroke")
    }
}

/// The whole picture.
pub fn render(t: &Trace) -> String {
    let lay = Layout::new(t);
    let h = lay.height();
    let mut labels = Labels::default();
    Document::new()
        .set("width", WIDTH)
        .set("height", h)
        .set("viewBox", (0, 0, WIDTH, h))
        .add(Title::new(format!("privmem trace: {}", t.title)))
        .add(rect(0.0, 0.0, WIDTH, h, "#ffffff"))
        .add(legend::header(t, &lay))
        .add(memory::panel(t, &lay))
        .add(memory::gpa_axis(&lay))
        .add(memory::final_column(t, &lay))
        .add(lanes::lanes(t, &lay, &mut labels))
        .add(lanes::time_axis(t, &lay))
        .add(memory::marks(t, &lay, &mut labels))
        .add(legend::legend(&lay))
        .to_string()
}
