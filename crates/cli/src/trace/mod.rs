//! `privmem run --trace FILE` and `privmem demo --trace DIR`: a record of
//! what a run did (each vCPU's `MAP_GPA_RANGE` requests and memory faults,
//! every committed or refused conversion, how each vCPU ended, the final
//! attribute map), written as a picture (`.svg`) or as JSON lines (`.json`).
//!
//! [`Recorder`] is the [`TraceSink`] the engine and the vCPU loops report
//! to; [`Trace::assemble`] joins its events with the workload's memory
//! layout and the report.

mod draw;
mod json;
mod layout;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use privmem_core::slot::SlotDesc;
use privmem_core::trace::{TraceEvent, TraceSink};
use privmem_core::GpaRange;
use privmem_runner::report::Report;
use privmem_runner::workload::Workload;

/// What `--trace FILE` writes, chosen by the file's extension.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TraceFormat {
    /// A picture: time left to right, guest-physical address up the side.
    Svg,
    /// One JSON object per line.
    JsonLines,
}

impl TraceFormat {
    /// The format for `path`, or an error naming the extensions understood.
    pub fn for_path(path: &Path) -> Result<TraceFormat, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("svg") => Ok(TraceFormat::Svg),
            Some(e) if e.eq_ignore_ascii_case("json") => Ok(TraceFormat::JsonLines),
            _ => Err(format!(
                "--trace {}: the file must end in .svg (a picture) or .json (JSON lines)",
                path.display()
            )),
        }
    }
}

/// One recorded event, numbered and timed.
#[derive(Clone, Debug)]
pub struct Stamped {
    /// Position in the run: the first event is 1.
    pub seq: usize,
    /// Microseconds since the vCPUs started.
    pub t_us: f64,
    /// What happened.
    pub event: TraceEvent,
}

struct Log {
    start: Instant,
    events: Vec<Stamped>,
    slots: Option<Vec<SlotInfo>>,
}

/// Collects events from every vCPU thread, in the order they arrive.
pub struct Recorder {
    log: Mutex<Log>,
}

impl Recorder {
    /// An empty recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            log: Mutex::new(Log {
                start: Instant::now(),
                events: Vec::new(),
                slots: None,
            }),
        }
    }

    /// Restarts the clock (call right before the vCPUs start).
    pub fn start_clock(&self) {
        self.lock().start = Instant::now();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The events recorded so far.
    pub fn events(&self) -> Vec<Stamped> {
        self.lock().events.clone()
    }

    /// Records what backs each memslot, as the machine built it (which
    /// can differ from the workload: a host without guest_memfd backs a
    /// default VM with plain shared memory).
    pub fn set_slots<G, S>(&self, built: &[Arc<SlotDesc<G, S>>], w: &Workload) {
        let slots = built
            .iter()
            .map(|b| {
                let closed = w
                    .slots
                    .iter()
                    .any(|s| s.range == b.range && s.guest_memfd && s.close_guest_memfd);
                SlotInfo {
                    range: b.range,
                    guest_memfd: b.gmem.is_some() || closed,
                    gmem_closed: closed,
                }
            })
            .collect();
        self.lock().slots = Some(slots);
    }

    /// The memslots as recorded, else as the workload describes them.
    fn slots(&self, w: &Workload) -> Vec<SlotInfo> {
        self.lock().slots.clone().unwrap_or_else(|| {
            w.slots
                .iter()
                .map(|s| SlotInfo {
                    range: s.range,
                    guest_memfd: s.guest_memfd,
                    gmem_closed: s.guest_memfd && s.close_guest_memfd,
                })
                .collect()
        })
    }
}

impl TraceSink for Recorder {
    fn record(&self, event: TraceEvent) {
        let mut log = self.lock();
        let seq = log.events.len() + 1;
        let t_us = log.start.elapsed().as_secs_f64() * 1e6;
        log.events.push(Stamped { seq, t_us, event });
    }
}

/// What backs one memslot, as the picture draws it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its GPA range.
    pub range: GpaRange,
    /// Backed by guest_memfd (convertible); else shared memory only.
    pub guest_memfd: bool,
    /// privmem closed its guest_memfd right after binding the slot
    /// (`close_guest_memfd`), so the binding is gone.
    pub gmem_closed: bool,
}

/// How one vCPU ended, from the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuEnd {
    /// `halted`, `failed` or `stopped`.
    pub state: String,
    /// The error kind (`hwpoison`, `fault_loop`, ...), if any.
    pub kind: Option<String>,
    /// The GPA involved, if any.
    pub gpa: Option<u64>,
    /// The diagnosis.
    pub message: Option<String>,
}

/// A finished run's trace: layout, events, outcome.
#[derive(Clone, Debug)]
pub struct Trace {
    /// What ran (the workload file).
    pub title: String,
    /// The VM type.
    pub vm_type: String,
    /// `kvm` or `model`.
    pub backend: String,
    /// The memslots, sorted by GPA.
    pub slots: Vec<SlotInfo>,
    /// guest_memfd memory starts private (else shared).
    pub initial_private: bool,
    /// The events, in order.
    pub events: Vec<Stamped>,
    /// Each vCPU's end, by index.
    pub vcpus: Vec<VcpuEnd>,
    /// The engine's final attribute map (guest_memfd memory): (range, private).
    pub final_map: Vec<(GpaRange, bool)>,
    /// Wall time of the run.
    pub elapsed_ms: f64,
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

impl Trace {
    /// Joins what `rec` recorded with the workload and the report.
    pub fn assemble(title: &str, w: &Workload, r: &Report, rec: &Recorder) -> Trace {
        let vcpus = r
            .vcpus
            .iter()
            .map(|v| VcpuEnd {
                state: crate::run::snake(&v.state),
                kind: v.error.as_ref().map(|e| crate::run::snake(&e.kind)),
                gpa: v.error.as_ref().and_then(|e| e.gpa),
                message: v.error.as_ref().map(|e| e.message.clone()),
            })
            .collect();
        let final_map = r
            .attributes
            .iter()
            .filter_map(|a| {
                let start = parse_hex(&a.gpa)?;
                let len = parse_hex(&a.size)?;
                Some((
                    GpaRange::new(privmem_core::Gpa(start), len).ok()?,
                    a.private,
                ))
            })
            .collect();
        Trace {
            title: title.to_string(),
            vm_type: r.vm_type.to_string(),
            backend: r.backend.clone(),
            slots: rec.slots(w),
            initial_private: w.initial_private,
            events: rec.events(),
            vcpus,
            final_map,
            elapsed_ms: r.elapsed_ms,
        }
    }

    /// The trace in `format`.
    pub fn render(&self, format: TraceFormat) -> String {
        match format {
            TraceFormat::Svg => draw::render(self),
            TraceFormat::JsonLines => json::render(self),
        }
    }

    /// Writes the trace to `path` in the format its extension names.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let format = TraceFormat::for_path(path)?;
        std::fs::write(path, self.render(format))
            .map_err(|e| format!("--trace {}: cannot write: {e}", path.display()))
    }
}
