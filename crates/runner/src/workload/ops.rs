//! The `[[vcpu]]` tables: each vCPU's program of guest ops.

use privmem_core::exit::MAP_GPA_RANGE_ENCRYPTED;
use privmem_core::types::{Gpa, GpaRange};
use privmem_core::{Access, GuestOp};
use toml::Value;

use super::parse::{array, Ctx};
use super::{SlotSpec, WorkloadError, MAX_VCPUS};

pub(super) fn parse_vcpus(
    cx: &Ctx<'_>,
    vm: &toml::Table,
    v: Option<&Value>,
    slots: &[SlotSpec],
) -> Result<Vec<Vec<GuestOp>>, WorkloadError> {
    let tables = array(cx, "vcpu", v)?;
    let count = match vm.get("vcpus") {
        Some(v) => {
            let n = cx.number("vm.vcpus", v)?;
            let n = u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_VCPUS).contains(n))
                .ok_or_else(|| {
                    cx.err("vm.vcpus", v, format!("must be between 1 and {MAX_VCPUS}"))
                })?;
            if tables.len() > n as usize {
                return Err(cx.err(
                    "vm.vcpus",
                    v,
                    format!("but {} [[vcpu]] tables are given", tables.len()),
                ));
            }
            n as usize
        }
        None => tables.len().max(1),
    };
    let mut out = Vec::with_capacity(count);
    for (i, t) in tables.iter().enumerate() {
        let key = format!("vcpu[{i}]");
        let tab = cx.table(&key, t)?;
        cx.check_keys(&key, tab, &["ops"])?;
        let ops = array(cx, &format!("{key}.ops"), tab.get("ops"))?;
        let parsed = ops
            .iter()
            .enumerate()
            .map(|(j, op)| parse_op(cx, &format!("{key}.ops[{j}]"), op, slots))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(parsed);
    }
    out.resize(count, vec![GuestOp::Halt]);
    Ok(out)
}

fn parse_access(cx: &Ctx<'_>, key: &str, t: &toml::Table) -> Result<Access, WorkloadError> {
    match t.get("access") {
        None => Ok(Access::Shared),
        Some(v) => match cx.string(&format!("{key}.access"), v)? {
            "shared" => Ok(Access::Shared),
            "private" => Ok(Access::Private),
            _ => Err(cx.err(
                &format!("{key}.access"),
                v,
                "expected \"private\" or \"shared\"",
            )),
        },
    }
}

fn req<'v>(
    cx: &Ctx<'_>,
    key: &str,
    t: &'v toml::Table,
    name: &str,
) -> Result<&'v Value, WorkloadError> {
    t.get(name).ok_or_else(|| {
        cx.err(
            &format!("{key}.{name}"),
            &Value::Table(t.clone()),
            "missing",
        )
    })
}

/// Checks `[gpa, gpa+len)` lies inside the slots with no gaps.
fn in_memory(
    cx: &Ctx<'_>,
    key: &str,
    gv: &Value,
    gpa: u64,
    len: u64,
    slots: &[SlotSpec],
) -> Result<GpaRange, WorkloadError> {
    let range = GpaRange::new(Gpa(gpa), len).map_err(|e| cx.err(key, gv, e.to_string()))?;
    let mut cursor = range.start();
    for s in slots {
        if s.range.contains(cursor) {
            cursor = s.range.end().min(range.end());
        }
    }
    if cursor < range.end() {
        return Err(cx.err(
            key,
            gv,
            format!("range {range} is outside guest memory (first uncovered byte {cursor})"),
        ));
    }
    Ok(range)
}

fn parse_op(
    cx: &Ctx<'_>,
    key: &str,
    v: &Value,
    slots: &[SlotSpec],
) -> Result<GuestOp, WorkloadError> {
    let t = cx.table(key, v)?;
    let opv = req(cx, key, t, "op")?;
    let op = cx.string(&format!("{key}.op"), opv)?;
    match op {
        "write" | "read" => {
            cx.check_keys(
                key,
                t,
                &[
                    "op",
                    "gpa",
                    "len",
                    if op == "write" { "byte" } else { "expect" },
                    "access",
                ],
            )?;
            let gv = req(cx, key, t, "gpa")?;
            let gpa = cx.number(&format!("{key}.gpa"), gv)?;
            let len = cx.number(&format!("{key}.len"), req(cx, key, t, "len")?)?;
            let range = in_memory(cx, &format!("{key}.gpa"), gv, gpa, len, slots)?;
            let access = parse_access(cx, key, t)?;
            if op == "write" {
                let byte = cx.byte(&format!("{key}.byte"), req(cx, key, t, "byte")?)?;
                Ok(GuestOp::Write {
                    gpa: range.start(),
                    len,
                    byte,
                    access,
                })
            } else {
                let expect = cx.byte(&format!("{key}.expect"), req(cx, key, t, "expect")?)?;
                Ok(GuestOp::Read {
                    gpa: range.start(),
                    len,
                    expect,
                    access,
                })
            }
        }
        "map" => {
            cx.check_keys(
                key,
                t,
                &["op", "gpa", "pages", "to", "expect_ret", "page_size"],
            )?;
            parse_map(cx, key, t)
        }
        "sync" => {
            cx.check_keys(key, t, &["op", "tag"])?;
            let tag = match t.get("tag") {
                Some(v) => cx.number(&format!("{key}.tag"), v)?,
                None => 0,
            };
            Ok(GuestOp::Sync { tag })
        }
        "halt" => {
            cx.check_keys(key, t, &["op"])?;
            Ok(GuestOp::Halt)
        }
        "spin" => {
            cx.check_keys(key, t, &["op"])?;
            Ok(GuestOp::Spin)
        }
        _ => Err(cx.err(
            &format!("{key}.op"),
            opv,
            "expected write, read, map, sync, halt or spin",
        )),
    }
}

fn parse_map(cx: &Ctx<'_>, key: &str, t: &toml::Table) -> Result<GuestOp, WorkloadError> {
    // Map arguments are the guest's raw hypercall arguments: a hostile guest may
    // pass anything, so only their syntax is checked here; the runtime and the
    // kernel answer bad ranges with -22.
    let gpa = cx.number(&format!("{key}.gpa"), req(cx, key, t, "gpa")?)?;
    let pages = cx.number(&format!("{key}.pages"), req(cx, key, t, "pages")?)?;
    let tov = req(cx, key, t, "to")?;
    let enc = match cx.string(&format!("{key}.to"), tov)? {
        "private" => MAP_GPA_RANGE_ENCRYPTED,
        "shared" => 0,
        _ => {
            return Err(cx.err(
                &format!("{key}.to"),
                tov,
                "expected \"private\" or \"shared\"",
            ))
        }
    };
    let size_bits = match t.get("page_size") {
        None => 0,
        Some(v) => cx.number(&format!("{key}.page_size"), v)?,
    };
    let expect_ret = match t.get("expect_ret") {
        None => None,
        Some(Value::Integer(i)) => Some(*i),
        Some(v) => {
            return Err(cx.err(
                &format!("{key}.expect_ret"),
                v,
                "expected an integer such as 0 or -22",
            ))
        }
    };
    Ok(GuestOp::Map {
        gpa,
        pages,
        attrs: enc | size_bits,
        expect_ret,
    })
}
