//! The picture, checked by its pixels: examples/implicit-convert.toml runs
//! on the model through the same path as `privmem run --trace`, the SVG is
//! rendered with resvg, and each converted page's strip must show the
//! state the run gave it, changing where (and only where) its conversions
//! happened, in event order, left to right.

use std::sync::Arc;

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{Options, Tree};

use privmem_core::trace::TraceEvent;
use privmem_runner::runtime::RunOptions;
use privmem_runner::workload;

use super::draw::{PRIVATE, SHARED};
use super::layout::{Layout, PLOT_X0};
use super::{Recorder, Trace};
use crate::backends::{choose, model_profile};
use crate::run::execute;
use crate::BackendArg;

const FILE: &str = "examples/implicit-convert.toml";
const TEXT: &str = include_str!("../../../../examples/implicit-convert.toml");

fn traced_run() -> Trace {
    let w = workload::parse(FILE, TEXT).expect("example parses");
    let profile = model_profile("7.3").expect("profile");
    let (chosen, reason) = choose(BackendArg::Model, &w, profile).expect("model backend");
    let rec = Arc::new(Recorder::new());
    let report = execute(chosen, reason, &w, RunOptions::default(), Some(&rec)).expect("runs");
    assert!(report.ok, "the example must run as designed: {report:?}");
    Trace::assemble(FILE, &w, &report, &rec)
}

fn rasterize(svg: &str) -> Pixmap {
    let tree = Tree::from_str(svg, &Options::default()).expect("the SVG parses");
    let size = tree.size().to_int_size();
    let mut pixmap = Pixmap::new(size.width(), size.height()).expect("pixmap");
    resvg::render(&tree, Transform::default(), &mut pixmap.as_mut());
    pixmap
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("hex colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// Which state colour a pixel shows, if any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    Private,
    Shared,
    Other([u8; 3]),
}

fn seen(p: &Pixmap, x: f64, y: f64) -> Seen {
    let px = p
        .pixel(x.round() as u32, y.round() as u32)
        .expect("inside the picture");
    let c = [px.red(), px.green(), px.blue()];
    let near = |want: [u8; 3]| c.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 6);
    if near(rgb(PRIVATE)) {
        Seen::Private
    } else if near(rgb(SHARED)) {
        Seen::Shared
    } else {
        Seen::Other(c)
    }
}

fn state(private: bool) -> Seen {
    if private {
        Seen::Private
    } else {
        Seen::Shared
    }
}

/// The committed conversions of the page at `gpa`: (seq, to_private).
fn conversions_of(t: &Trace, gpa: u64) -> Vec<(usize, bool)> {
    t.events
        .iter()
        .filter_map(|s| match s.event {
            TraceEvent::Converted {
                gpa: g,
                len,
                to_private,
                pages,
                ..
            } if pages > 0 && g <= gpa && gpa < g + len => Some((s.seq, to_private)),
            _ => None,
        })
        .collect()
}

/// Where a pixel row through `y` changes between the two state colours.
fn transitions(p: &Pixmap, lay: &Layout, y: f64) -> Vec<(f64, Seen)> {
    let mut out = Vec::new();
    let mut prev = None;
    let mut x = PLOT_X0 + 2.0;
    while x < lay.plot_x1() - 2.0 {
        let s = seen(p, x, y);
        if matches!(s, Seen::Private | Seen::Shared) {
            if prev.is_some_and(|q| q != s) {
                out.push((x, s));
            }
            prev = Some(s);
        }
        x += 1.0;
    }
    out
}

#[test]
fn each_converted_page_changes_colour_at_its_conversion_and_only_there() {
    let t = traced_run();
    let lay = Layout::new(&t);
    let p = rasterize(&t.render(super::TraceFormat::Svg));
    let mut all = Vec::new();
    for page in [0x100000u64, 0x101000, 0x102000, 0x103000] {
        let convs = conversions_of(&t, page);
        assert!(!convs.is_empty(), "{page:#x} is converted by the example");
        let y = lay.y_mid(page);
        // Before anything happened: the initial state, at the left edge.
        assert_eq!(
            seen(&p, PLOT_X0 + 2.0, y),
            state(t.initial_private),
            "{page:#x} at the left edge"
        );
        let mut before = state(t.initial_private);
        for (i, &(seq, to_private)) in convs.iter().enumerate() {
            let (xl, x, xr) = (lay.x_event(seq - 1), lay.x_event(seq), lay.x_event(seq + 1));
            assert_eq!(
                seen(&p, (xl + x) / 2.0, y),
                before,
                "{page:#x} before conversion {i} (event {seq})"
            );
            assert_eq!(
                seen(&p, (x + xr) / 2.0, y),
                state(to_private),
                "{page:#x} after conversion {i} (event {seq})"
            );
            before = state(to_private);
        }
        // At the right edge and in the final-map column: the report's state.
        let fin = t
            .final_map
            .iter()
            .find(|(r, _)| r.start().raw() <= page && page < r.end().raw())
            .map(|(_, p)| state(*p));
        assert_eq!(
            Some(before),
            fin,
            "{page:#x}: the replay ends where the report does"
        );
        assert_eq!(
            seen(&p, lay.plot_x1() - 2.0, y),
            before,
            "{page:#x} at the right edge"
        );
        assert_eq!(
            seen(&p, lay.final_x0() + 20.0, y),
            before,
            "{page:#x} in the final map"
        );
        // Scanning the row: one colour change per conversion, at its event.
        let tr = transitions(&p, &lay, y);
        assert_eq!(
            tr.len(),
            convs.len(),
            "{page:#x}: colour changes {tr:?} vs conversions {convs:?}"
        );
        for (&(x, s), &(seq, to_private)) in tr.iter().zip(&convs) {
            assert!(
                (x - lay.x_event(seq)).abs() <= 1.5,
                "{page:#x}: change at x={x}, event {seq} is at {}",
                lay.x_event(seq)
            );
            assert_eq!(s, state(to_private));
            all.push((x, seq));
        }
    }
    // Time runs left to right: sorted by x, the conversions are in event order.
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let seqs: Vec<usize> = all.iter().map(|a| a.1).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(
        seqs, sorted,
        "conversions left to right must be in event order"
    );
    assert_eq!(seqs.len(), 6, "the example makes six conversions");
}

#[test]
fn untouched_memory_keeps_its_initial_colour() {
    let t = traced_run();
    let lay = Layout::new(&t);
    let p = rasterize(&t.render(super::TraceFormat::Svg));
    for gpa in [0x0u64, 0x200000] {
        assert!(conversions_of(&t, gpa).is_empty());
        let y = lay.y_mid(gpa);
        assert!(
            transitions(&p, &lay, y).is_empty(),
            "{gpa:#x} never changes"
        );
        assert_eq!(seen(&p, (PLOT_X0 + lay.plot_x1()) / 2.0, y), Seen::Private);
    }
}

/// A synthetic trace: one slot of `pages` pages, every other page converted.
fn synthetic(pages: u64) -> Trace {
    use privmem_core::trace::Cause;
    use privmem_core::{Gpa, GpaRange, PAGE_SIZE};
    let range = GpaRange::new(Gpa(0), pages * PAGE_SIZE).unwrap();
    let events = (0..pages / 2)
        .map(|i| super::Stamped {
            seq: i as usize + 1,
            t_us: i as f64,
            event: TraceEvent::Converted {
                vcpu: Some(0),
                cause: Cause::Hypercall,
                gpa: 2 * i * PAGE_SIZE,
                len: PAGE_SIZE,
                to_private: true,
                pages: 1,
                discard: false,
            },
        })
        .collect();
    Trace {
        title: "synthetic".into(),
        vm_type: "sw-protected".into(),
        backend: "model".into(),
        slots: vec![super::SlotInfo {
            range,
            guest_memfd: true,
            gmem_closed: false,
        }],
        initial_private: false,
        events,
        vcpus: vec![],
        final_map: vec![],
        elapsed_ms: 1.0,
    }
}

#[test]
fn many_bands_fall_back_to_a_linear_axis_that_still_fills_the_panel() {
    use super::layout::{MAX_LOG_BANDS, PLOT_Y0};
    for (pages, log) in [(16, true), (4 * MAX_LOG_BANDS as u64, false)] {
        let t = synthetic(pages);
        let lay = Layout::new(&t);
        assert_eq!(lay.log_scale, log, "{pages} pages");
        assert!((lay.bands[0].y_bot - lay.mem_y1()).abs() < 1e-6);
        assert!((lay.bands.last().unwrap().y_top - PLOT_Y0).abs() < 1e-6);
        for w in lay.bands.windows(2) {
            assert!((w[0].y_top - w[1].y_bot).abs() < 1e-6 && w[0].y_top < w[0].y_bot);
        }
        // Rendering must not fail on it, and says which scale it used.
        let svg = t.render(super::TraceFormat::Svg);
        assert!(svg.contains(if log { "log of its size" } else { "to scale" }));
    }
}
