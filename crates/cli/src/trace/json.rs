//! The trace as JSON lines: a `start` line (memory layout, initial
//! attribute), one line per event (`seq`, `t_ms`, `event`, its fields; a
//! `vcpu_done` line adds how the vCPU ended), and a `final_map` line.

use privmem_core::trace::TraceEvent;
use serde_json::{json, Map, Value};

use super::{Stamped, Trace, VcpuEnd};

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

fn start_line(t: &Trace) -> Value {
    let slots: Vec<Value> = t
        .slots
        .iter()
        .map(|s| {
            json!({
                "gpa": hex(s.range.start().raw()),
                "size": hex(s.range.len()),
                "guest_memfd": s.guest_memfd,
            })
        })
        .collect();
    json!({
        "event": "start",
        "workload": t.title,
        "vm_type": t.vm_type,
        "backend": t.backend,
        "slots": slots,
        "initial": if t.initial_private { "private" } else { "shared" },
    })
}

fn end_fields(obj: &mut Map<String, Value>, end: &VcpuEnd) {
    obj.insert("state".into(), Value::String(end.state.clone()));
    if let Some(kind) = &end.kind {
        let mut err = Map::new();
        err.insert("kind".into(), Value::String(kind.clone()));
        err.insert("gpa".into(), end.gpa.map_or(Value::Null, hex));
        err.insert(
            "message".into(),
            end.message.clone().map_or(Value::Null, Value::String),
        );
        obj.insert("error".into(), Value::Object(err));
    }
}

/// An event's own fields (GPAs and lengths in hex, as in the report).
fn event_fields(e: &TraceEvent) -> Value {
    match e {
        TraceEvent::MapRequest {
            vcpu,
            gpa,
            len,
            to_private,
            invalid,
        } => json!({
            "vcpu": vcpu, "gpa": hex(*gpa), "len": hex(*len),
            "to_private": to_private, "invalid": invalid,
        }),
        TraceEvent::MemoryFault {
            vcpu,
            gpa,
            size,
            private,
            errno,
        } => json!({
            "vcpu": vcpu, "gpa": hex(*gpa), "size": hex(*size),
            "private": private, "errno": errno.name(),
        }),
        TraceEvent::Converted {
            vcpu,
            cause,
            gpa,
            len,
            to_private,
            pages,
            discard,
        } => json!({
            "vcpu": vcpu, "cause": cause.name(), "gpa": hex(*gpa), "len": hex(*len),
            "to_private": to_private, "pages": pages, "discard": discard,
        }),
        TraceEvent::ConvertFailed {
            vcpu,
            cause,
            gpa,
            len,
            to_private,
            error,
        } => json!({
            "vcpu": vcpu, "cause": cause.name(), "gpa": hex(*gpa), "len": hex(*len),
            "to_private": to_private, "error": error,
        }),
        TraceEvent::VcpuDone { vcpu } => json!({ "vcpu": vcpu }),
    }
}

fn event_line(t: &Trace, s: &Stamped) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), Value::from(s.seq));
    obj.insert(
        "t_ms".into(),
        Value::from((s.t_us / 1e3 * 1e6).round() / 1e6),
    );
    obj.insert("event".into(), Value::from(s.event.name()));
    if let Value::Object(fields) = event_fields(&s.event) {
        obj.extend(fields);
    }
    if let TraceEvent::VcpuDone { vcpu } = s.event {
        if let Some(end) = usize::try_from(vcpu).ok().and_then(|i| t.vcpus.get(i)) {
            end_fields(&mut obj, end);
        }
    }
    Value::Object(obj)
}

fn final_line(t: &Trace) -> Value {
    let ranges: Vec<Value> = t
        .final_map
        .iter()
        .map(|(r, private)| {
            json!({
                "gpa": hex(r.start().raw()),
                "size": hex(r.len()),
                "private": private,
            })
        })
        .collect();
    json!({ "event": "final_map", "elapsed_ms": t.elapsed_ms, "attributes": ranges })
}

/// The whole trace, one JSON object per line.
pub fn render(t: &Trace) -> String {
    let mut out = String::new();
    let lines = std::iter::once(start_line(t))
        .chain(t.events.iter().map(|s| event_line(t, s)))
        .chain(std::iter::once(final_line(t)));
    for line in lines {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}
