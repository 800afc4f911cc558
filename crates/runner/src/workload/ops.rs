//! The `[[vcpu]]` tables: each vCPU's program of guest ops, and the vCPU
//! count.

use std::ops::Range;

use privmem_core::exit::MAP_GPA_RANGE_ENCRYPTED;
use privmem_core::types::{Gpa, GpaRange};
use privmem_core::{Access, GuestOp};
use toml::Spanned;

use super::raw::{Num, OpKind, RawOp, RawVcpu, RawVm, Side};
use super::source::Source;
use super::{SlotSpec, WorkloadError, MAX_VCPUS};

/// One program per vCPU. `vm.vcpus`, when given, must equal the number of
/// `[[vcpu]]` tables; without it, that number (no table: one vCPU that halts).
pub(super) fn vcpus(
    src: &Source<'_>,
    vm: &Spanned<RawVm>,
    tables: &[Spanned<RawVcpu>],
    slots: &[SlotSpec],
) -> Result<Vec<Vec<GuestOp>>, WorkloadError> {
    check_count(src, vm, tables)?;
    if tables.is_empty() {
        return Ok(vec![vec![GuestOp::Halt]]);
    }
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.get_ref()
                .ops
                .iter()
                .enumerate()
                .map(|(j, op)| parse_op(src, &format!("vcpu[{i}].ops[{j}]"), op, slots))
                .collect()
        })
        .collect()
}

fn check_count(
    src: &Source<'_>,
    vm: &Spanned<RawVm>,
    tables: &[Spanned<RawVcpu>],
) -> Result<(), WorkloadError> {
    let given = tables.len();
    let Some(v) = &vm.get_ref().vcpus else {
        if given > MAX_VCPUS as usize {
            let why = format!("{given} [[vcpu]] tables, but at most {MAX_VCPUS} vCPUs");
            return Err(src.err("vcpu", tables[MAX_VCPUS as usize].span(), why));
        }
        return Ok(());
    };
    let n = v.get_ref().0;
    if !(1..=u64::from(MAX_VCPUS)).contains(&n) {
        return Err(src.bad("vm.vcpus", v, format!("must be between 1 and {MAX_VCPUS}")));
    }
    if n != given as u64 {
        let plural = if given == 1 { "table" } else { "tables" };
        let why = format!(
            "vcpus = {n} but the file has {given} [[vcpu]] {plural}: give one table per vCPU"
        );
        return Err(src.bad("vm.vcpus", v, why));
    }
    Ok(())
}

/// A required key of op `key`.
fn req<'v, T>(
    src: &Source<'_>,
    key: &str,
    op: &Spanned<RawOp>,
    name: &str,
    v: &'v Option<Spanned<T>>,
) -> Result<&'v Spanned<T>, WorkloadError> {
    v.as_ref()
        .ok_or_else(|| src.missing(&format!("{key}.{name}"), op.span(), "missing"))
}

/// Refuses keys the op does not take (a `write` with `expect`, ...).
fn check_keys(
    src: &Source<'_>,
    key: &str,
    kind: OpKind,
    present: Vec<(&'static str, Range<usize>)>,
) -> Result<(), WorkloadError> {
    let allowed = kind.keys();
    match present.into_iter().find(|(k, _)| !allowed.contains(k)) {
        Some((k, span)) => {
            let mut expected = vec!["op"];
            expected.extend_from_slice(allowed);
            let why = format!("unknown key (expected one of: {})", expected.join(", "));
            Err(src.err(&format!("{key}.{k}"), span, why))
        }
        None => Ok(()),
    }
}

fn parse_op(
    src: &Source<'_>,
    key: &str,
    op: &Spanned<RawOp>,
    slots: &[SlotSpec],
) -> Result<GuestOp, WorkloadError> {
    let raw = op.get_ref();
    let kind = *req(src, key, op, "op", &raw.op)?.get_ref();
    check_keys(src, key, kind, raw.present())?;
    match kind {
        OpKind::Write | OpKind::Read => access_op(src, key, op, kind, slots),
        OpKind::Map => map_op(src, key, op),
        OpKind::Sync => Ok(GuestOp::Sync {
            tag: raw.tag.as_ref().map_or(0, |t| t.get_ref().0),
        }),
        OpKind::Halt => Ok(GuestOp::Halt),
        OpKind::Spin => Ok(GuestOp::Spin),
    }
}

fn byte(src: &Source<'_>, key: &str, v: &Spanned<Num>) -> Result<u8, WorkloadError> {
    u8::try_from(v.get_ref().0).map_err(|_| src.bad(key, v, "must be a byte (0..=255)"))
}

/// A `write` or a `read`.
fn access_op(
    src: &Source<'_>,
    key: &str,
    op: &Spanned<RawOp>,
    kind: OpKind,
    slots: &[SlotSpec],
) -> Result<GuestOp, WorkloadError> {
    let raw = op.get_ref();
    let gv = req(src, key, op, "gpa", &raw.gpa)?;
    let len = req(src, key, op, "len", &raw.len)?.get_ref().0;
    let range = in_memory(src, &format!("{key}.gpa"), gv, len, slots)?;
    let access = match raw.access.as_ref().map(|a| *a.get_ref()) {
        Some(Side::Private) => Access::Private,
        None | Some(Side::Shared) => Access::Shared,
    };
    let gpa = range.start();
    if kind == OpKind::Write {
        let b = req(src, key, op, "byte", &raw.byte)?;
        let byte = byte(src, &format!("{key}.byte"), b)?;
        Ok(GuestOp::Write {
            gpa,
            len,
            byte,
            access,
        })
    } else {
        let e = req(src, key, op, "expect", &raw.expect)?;
        let expect = byte(src, &format!("{key}.expect"), e)?;
        Ok(GuestOp::Read {
            gpa,
            len,
            expect,
            access,
        })
    }
}

/// Checks `[gpa, gpa+len)` lies inside the slots with no gaps.
fn in_memory(
    src: &Source<'_>,
    key: &str,
    gv: &Spanned<Num>,
    len: u64,
    slots: &[SlotSpec],
) -> Result<GpaRange, WorkloadError> {
    let range =
        GpaRange::new(Gpa(gv.get_ref().0), len).map_err(|e| src.bad(key, gv, e.to_string()))?;
    let mut cursor = range.start();
    for s in slots {
        if s.range.contains(cursor) {
            cursor = s.range.end().min(range.end());
        }
    }
    if cursor < range.end() {
        let why = format!("range {range} is outside guest memory (first uncovered byte {cursor})");
        return Err(src.bad(key, gv, why));
    }
    Ok(range)
}

/// A `map`: the guest's raw hypercall arguments. A hostile guest may pass
/// anything, so only their syntax is checked here; the runtime and the
/// kernel answer bad ranges with -22 (outside guest memory: see
/// `privmem_core::engine`).
fn map_op(src: &Source<'_>, key: &str, op: &Spanned<RawOp>) -> Result<GuestOp, WorkloadError> {
    let raw = op.get_ref();
    let gpa = req(src, key, op, "gpa", &raw.gpa)?.get_ref().0;
    let pages = req(src, key, op, "pages", &raw.pages)?.get_ref().0;
    let enc = match req(src, key, op, "to", &raw.to)?.get_ref() {
        Side::Private => MAP_GPA_RANGE_ENCRYPTED,
        Side::Shared => 0,
    };
    let size_bits = raw.page_size.as_ref().map_or(0, |p| p.get_ref().0);
    Ok(GuestOp::Map {
        gpa,
        pages,
        attrs: enc | size_bits,
        expect_ret: raw.expect_ret.as_ref().map(|r| *r.get_ref()),
    })
}
