//! The trace as JSON lines: a `start` line (memory layout, initial
//! attribute), one line per event (`seq`, `t_ms`, `event`, its fields; a
//! `vcpu_done` line adds how the vCPU ended), and a `final_map` line.

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

fn event_line(t: &Trace, s: &Stamped) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), Value::from(s.seq));
    obj.insert(
        "t_ms".into(),
        Value::from((s.t_us / 1e3 * 1e6).round() / 1e6),
    );
    if let Ok(Value::Object(fields)) = serde_json::to_value(&s.event) {
        obj.extend(fields);
    }
    if let privmem_core::trace::TraceEvent::VcpuDone { vcpu } = s.event {
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
