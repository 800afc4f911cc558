//! The workload file (shared/docs/workload.md): parsing and validation.
//!
//! Every error names the key path and the offending value; nothing here
//! allocates in proportion to a size the file states.

use std::path::Path;

use toml::Value;

use crate::backend::{Access, GuestOp};
use crate::types::{Gpa, GpaRange, VmType, PAGE_SIZE};

/// Guest-physical addresses must stay below x86's 52-bit MAXPHYADDR.
pub const MAX_GPA: u64 = 1 << 52;
/// At most this many vCPUs.
pub const MAX_VCPUS: u32 = 64;

/// A workload error: the key path, the value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {why}")]
    Read {
        /// File name.
        file: String,
        /// OS error text.
        why: String,
    },
    /// The file is not valid TOML.
    #[error("{file}: invalid toml: {why}")]
    Toml {
        /// File name.
        file: String,
        /// Parser message.
        why: String,
    },
    /// A key has a bad value.
    #[error("{file}: key `{key}` = {value}: {why}")]
    Key {
        /// File name.
        file: String,
        /// Key path, e.g. `vcpu[0].ops[2].gpa`.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is rejected.
        why: String,
    },
}

/// What to do on an implicit conversion request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Implicit {
    /// Convert the faulting page and re-enter.
    Convert,
    /// Stop the vCPU with `fault_denied`.
    Deny,
}

/// `[policy]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Policy {
    /// Implicit conversion policy.
    pub implicit: Implicit,
    /// Discard the backing no longer in use on conversion.
    pub discard: bool,
    /// The same fault this many times in a row stops the vCPU.
    pub max_repeats: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            implicit: Implicit::Convert,
            discard: true,
            max_repeats: 3,
        }
    }
}

/// One memslot of guest RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotSpec {
    /// Its GPA range.
    pub range: GpaRange,
    /// Backed by guest_memfd (else shared host memory only).
    pub guest_memfd: bool,
    /// Close privmem's guest_memfd handle right after binding the slot, so
    /// the binding dies (`kvm_gmem_release`): a VMM bug or a hostile teardown.
    pub close_guest_memfd: bool,
}

/// A parsed, validated workload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Workload {
    /// VM type.
    pub vm_type: VmType,
    /// Initial attribute of guest_memfd-backed memory.
    pub initial_private: bool,
    /// Policies.
    pub policy: Policy,
    /// Slots, sorted by GPA, disjoint.
    pub slots: Vec<SlotSpec>,
    /// Poisoned pages.
    pub poison: Vec<Gpa>,
    /// Per-vCPU programs.
    pub vcpus: Vec<Vec<GuestOp>>,
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: &str, value: &Value, why: impl Into<String>) -> WorkloadError {
        WorkloadError::Key {
            file: self.file.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            why: why.into(),
        }
    }

    fn table<'v>(&self, key: &str, v: &'v Value) -> Result<&'v toml::Table, WorkloadError> {
        v.as_table()
            .ok_or_else(|| self.err(key, v, "expected a table"))
    }

    fn check_keys(
        &self,
        key: &str,
        t: &toml::Table,
        allowed: &[&str],
    ) -> Result<(), WorkloadError> {
        match t.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, v)) => Err(self.err(
                &join(key, k),
                v,
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn number(&self, key: &str, v: &Value) -> Result<u64, WorkloadError> {
        match v {
            Value::Integer(i) => {
                u64::try_from(*i).map_err(|_| self.err(key, v, "must not be negative"))
            }
            Value::String(s) => parse_size(s).map_err(|why| self.err(key, v, why)),
            _ => Err(self.err(
                key,
                v,
                "expected an integer or a string such as \"0x1000\" or \"2MiB\"",
            )),
        }
    }

    fn byte(&self, key: &str, v: &Value) -> Result<u8, WorkloadError> {
        let n = self.number(key, v)?;
        u8::try_from(n).map_err(|_| self.err(key, v, "must be a byte (0..=255)"))
    }

    fn string<'v>(&self, key: &str, v: &'v Value) -> Result<&'v str, WorkloadError> {
        v.as_str()
            .ok_or_else(|| self.err(key, v, "expected a string"))
    }

    fn boolean(&self, key: &str, v: &Value) -> Result<bool, WorkloadError> {
        v.as_bool()
            .ok_or_else(|| self.err(key, v, "expected true or false"))
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// Parses `"4096"`, `"0x1000"`, `"4KiB"`, `"2MiB"`, `"1GiB"`, `"1TiB"` (also `K`/`M`/`G`/`T`, `KB`...).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16)
            .map_err(|e| format!("bad hex number: {e}"));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .replace('_', "")
        .parse()
        .map_err(|e| format!("bad number: {e}"))?;
    let shift = match suffix.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "KB" | "k" => 10,
        "M" | "MiB" | "MB" => 20,
        "G" | "GiB" | "GB" => 30,
        "T" | "TiB" | "TB" => 40,
        other => return Err(format!("unknown size suffix `{other}`")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size overflows 64 bits".to_string())
}

/// Reads and parses a workload file.
pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Read {
        file: file.clone(),
        why: e.to_string(),
    })?;
    parse(&file, &text)
}

/// Parses workload text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Workload, WorkloadError> {
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| WorkloadError::Toml {
            file: file.to_string(),
            why: e.message().to_string(),
        })?;
    let cx = Ctx { file };
    cx.check_keys("", &root, &["vm", "policy", "slot", "poison", "vcpu"])?;
    let vm_val = root
        .get("vm")
        .ok_or_else(|| cx.err("vm", &Value::String(String::new()), "missing [vm] table"))?;
    let vm = cx.table("vm", vm_val)?;
    cx.check_keys("vm", vm, &["type", "memory", "vcpus", "initial"])?;
    let vm_type = parse_vm_type(&cx, vm)?;
    let initial_private = parse_initial(&cx, vm, vm_type)?;
    let policy = parse_policy(&cx, root.get("policy"))?;
    let slots = parse_slots(&cx, vm, root.get("slot"))?;
    let poison = parse_poison(&cx, root.get("poison"), &slots)?;
    let vcpus = parse_vcpus(&cx, vm, root.get("vcpu"), &slots)?;
    Ok(Workload {
        vm_type,
        initial_private,
        policy,
        slots,
        poison,
        vcpus,
    })
}

fn parse_vm_type(cx: &Ctx<'_>, vm: &toml::Table) -> Result<VmType, WorkloadError> {
    let Some(v) = vm.get("type") else {
        return Ok(VmType::Default);
    };
    let s = cx.string("vm.type", v)?;
    VmType::from_name(s).ok_or_else(|| {
        cx.err(
            "vm.type",
            v,
            "expected \"default\", \"sw-protected\" or \"coco\"",
        )
    })
}

fn parse_initial(cx: &Ctx<'_>, vm: &toml::Table, ty: VmType) -> Result<bool, WorkloadError> {
    let Some(v) = vm.get("initial") else {
        return Ok(false);
    };
    let private = match cx.string("vm.initial", v)? {
        "private" => true,
        "shared" => false,
        _ => return Err(cx.err("vm.initial", v, "expected \"private\" or \"shared\"")),
    };
    if private && !ty.has_private_mem() {
        return Err(cx.err("vm.initial", v, "a default VM has no private memory"));
    }
    Ok(private)
}

fn parse_policy(cx: &Ctx<'_>, v: Option<&Value>) -> Result<Policy, WorkloadError> {
    let mut p = Policy::default();
    let Some(v) = v else { return Ok(p) };
    let t = cx.table("policy", v)?;
    cx.check_keys("policy", t, &["implicit", "discard", "max_repeats"])?;
    if let Some(v) = t.get("implicit") {
        p.implicit = match cx.string("policy.implicit", v)? {
            "convert" => Implicit::Convert,
            "deny" => Implicit::Deny,
            _ => return Err(cx.err("policy.implicit", v, "expected \"convert\" or \"deny\"")),
        };
    }
    if let Some(v) = t.get("discard") {
        p.discard = cx.boolean("policy.discard", v)?;
    }
    if let Some(v) = t.get("max_repeats") {
        let n = cx.number("policy.max_repeats", v)?;
        p.max_repeats = u32::try_from(n)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| cx.err("policy.max_repeats", v, "must be between 1 and 1000000"))?;
    }
    Ok(p)
}

fn array<'v>(cx: &Ctx<'_>, key: &str, v: Option<&'v Value>) -> Result<&'v [Value], WorkloadError> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(cx.err(key, other, "expected an array of tables ([[...]])")),
    }
}

fn page_range(
    cx: &Ctx<'_>,
    key: &str,
    gpa_v: &Value,
    size_v: &Value,
) -> Result<GpaRange, WorkloadError> {
    let gpa = cx.number(&format!("{key}.gpa"), gpa_v)?;
    let size = cx.number(&format!("{key}.size"), size_v)?;
    if gpa % PAGE_SIZE != 0 {
        return Err(cx.err(&format!("{key}.gpa"), gpa_v, "must be 4 KiB aligned"));
    }
    if size == 0 || size % PAGE_SIZE != 0 {
        return Err(cx.err(
            &format!("{key}.size"),
            size_v,
            "must be a nonzero multiple of 4 KiB",
        ));
    }
    let range = GpaRange::new(Gpa(gpa), size)
        .map_err(|e| cx.err(&format!("{key}.size"), size_v, e.to_string()))?;
    if range.end().raw() > MAX_GPA {
        return Err(cx.err(
            &format!("{key}.size"),
            size_v,
            "memory ends above the 52-bit guest-physical limit",
        ));
    }
    Ok(range)
}

fn parse_slots(
    cx: &Ctx<'_>,
    vm: &toml::Table,
    v: Option<&Value>,
) -> Result<Vec<SlotSpec>, WorkloadError> {
    let tables = array(cx, "slot", v)?;
    let mut slots = Vec::new();
    if tables.is_empty() {
        let mem = vm.get("memory").ok_or_else(|| {
            cx.err(
                "vm.memory",
                &Value::String(String::new()),
                "missing (or give [[slot]] tables)",
            )
        })?;
        slots.push(SlotSpec {
            range: page_range(cx, "vm", &Value::Integer(0), mem)
                .map_err(|e| rename(e, "vm.size", "vm.memory"))?,
            guest_memfd: true,
            close_guest_memfd: false,
        });
    }
    for (i, t) in tables.iter().enumerate() {
        let key = format!("slot[{i}]");
        let tab = cx.table(&key, t)?;
        cx.check_keys(
            &key,
            tab,
            &["gpa", "size", "guest_memfd", "close_guest_memfd"],
        )?;
        let gpa = tab.get("gpa").unwrap_or(&Value::Integer(0));
        let size = tab
            .get("size")
            .ok_or_else(|| cx.err(&format!("{key}.size"), t, "missing"))?;
        let guest_memfd = match tab.get("guest_memfd") {
            Some(v) => cx.boolean(&format!("{key}.guest_memfd"), v)?,
            None => true,
        };
        let close_guest_memfd = match tab.get("close_guest_memfd") {
            Some(v) if !guest_memfd => {
                return Err(cx.err(
                    &format!("{key}.close_guest_memfd"),
                    v,
                    "needs guest_memfd = true",
                ))
            }
            Some(v) => cx.boolean(&format!("{key}.close_guest_memfd"), v)?,
            None => false,
        };
        slots.push(SlotSpec {
            range: page_range(cx, &key, gpa, size)?,
            guest_memfd,
            close_guest_memfd,
        });
    }
    slots.sort_by_key(|s| s.range.start());
    if let Some(w) = slots.windows(2).find(|w| w[0].range.overlaps(w[1].range)) {
        let v = Value::String(format!("{} and {}", w[0].range, w[1].range));
        return Err(cx.err("slot", &v, "slots overlap"));
    }
    Ok(slots)
}

fn rename(e: WorkloadError, from: &str, to: &str) -> WorkloadError {
    match e {
        WorkloadError::Key {
            file,
            key,
            value,
            why,
        } if key == from => WorkloadError::Key {
            file,
            key: to.to_string(),
            value,
            why,
        },
        other => other,
    }
}

fn parse_poison(
    cx: &Ctx<'_>,
    v: Option<&Value>,
    slots: &[SlotSpec],
) -> Result<Vec<Gpa>, WorkloadError> {
    let mut out = Vec::new();
    for (i, t) in array(cx, "poison", v)?.iter().enumerate() {
        let key = format!("poison[{i}]");
        let tab = cx.table(&key, t)?;
        cx.check_keys(&key, tab, &["gpa"])?;
        let gv = tab
            .get("gpa")
            .ok_or_else(|| cx.err(&format!("{key}.gpa"), t, "missing"))?;
        let gpa = Gpa(cx.number(&format!("{key}.gpa"), gv)?);
        let in_gmem = slots
            .iter()
            .any(|s| s.guest_memfd && !s.close_guest_memfd && s.range.contains(gpa));
        if !gpa.is_page_aligned() || !in_gmem {
            return Err(cx.err(
                &format!("{key}.gpa"),
                gv,
                "must be a page-aligned address in guest_memfd-backed memory",
            ));
        }
        out.push(gpa);
    }
    Ok(out)
}

fn parse_vcpus(
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
        "private" => crate::exit::MAP_GPA_RANGE_ENCRYPTED,
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[vm]
type = "coco"
memory = "64MiB"
vcpus = 2
initial = "private"

[policy]
implicit = "convert"
discard = true
max_repeats = 3

[[poison]]
gpa = "0x300000"

[[vcpu]]
ops = [
  { op = "write", gpa = "0x100000", len = 4096, byte = 0xab, access = "private" },
  { op = "read",  gpa = "0x100000", len = 4096, expect = 0xab, access = "private" },
  { op = "map",   gpa = "0x100000", pages = 1, to = "shared", expect_ret = 0 },
  { op = "sync",  tag = 1 },
  { op = "halt" },
]
"#;

    fn key_of(e: WorkloadError) -> String {
        match e {
            WorkloadError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn parse_good_workload() {
        let w = parse("w.toml", GOOD).unwrap();
        assert_eq!(w.vm_type, VmType::Coco);
        assert!(w.initial_private);
        assert_eq!(w.vcpus.len(), 2);
        assert_eq!(w.vcpus[0].len(), 5);
        assert_eq!(w.vcpus[1], vec![GuestOp::Halt]);
        assert_eq!(w.slots[0].range.len(), 64 << 20);
        assert_eq!(w.poison, vec![Gpa(0x300000)]);
        assert!(matches!(
            w.vcpus[0][2],
            GuestOp::Map {
                attrs: 0,
                expect_ret: Some(0),
                ..
            }
        ));
    }

    #[test]
    fn parse_unknown_key_names_it() {
        let e = parse("w.toml", "[vm]\nmemory = 4096\nbogus = 1\n").unwrap_err();
        assert_eq!(key_of(e), "vm.bogus");
    }

    #[test]
    fn parse_negative_number_is_error() {
        let e = parse("w.toml", "[vm]\nmemory = -4096\n").unwrap_err();
        assert_eq!(key_of(e), "vm.memory");
    }

    #[test]
    fn parse_overflowing_size_is_error() {
        let e = parse("w.toml", "[vm]\nmemory = \"16777216TiB\"\n").unwrap_err();
        assert_eq!(key_of(e), "vm.memory");
    }

    #[test]
    fn parse_2_pow_64_bytes_is_error() {
        let e = parse("w.toml", "[vm]\nmemory = \"18446744073709551616\"\n").unwrap_err();
        assert_eq!(key_of(e), "vm.memory");
    }

    #[test]
    fn parse_huge_memory_beyond_52_bits_is_error() {
        let e = parse("w.toml", "[vm]\nmemory = \"0xfffffffffffff000\"\n").unwrap_err();
        assert_eq!(key_of(e), "vm.memory");
    }

    #[test]
    fn parse_op_outside_memory_is_error() {
        let text = "[vm]\nmemory = \"1MiB\"\n[[vcpu]]\nops = [{ op = \"write\", gpa = \"0x100000\", len = 1, byte = 1 }]\n";
        assert_eq!(
            key_of(parse("w.toml", text).unwrap_err()),
            "vcpu[0].ops[0].gpa"
        );
    }

    #[test]
    fn parse_default_vm_private_initial_is_error() {
        let e = parse("w.toml", "[vm]\nmemory = 4096\ninitial = \"private\"\n").unwrap_err();
        assert_eq!(key_of(e), "vm.initial");
    }

    #[test]
    fn parse_bad_toml_is_toml_error() {
        assert!(matches!(
            parse("w.toml", "[vm"),
            Err(WorkloadError::Toml { .. })
        ));
    }

    #[test]
    fn parse_overlapping_slots_is_error() {
        let text = "[vm]\n[[slot]]\ngpa=0\nsize=8192\n[[slot]]\ngpa=4096\nsize=4096\n";
        assert_eq!(key_of(parse("w.toml", text).unwrap_err()), "slot");
    }

    #[test]
    fn parse_op_across_slot_gap_is_error() {
        let text = "[vm]\n[[slot]]\ngpa=0\nsize=4096\n[[slot]]\ngpa=8192\nsize=4096\n[[vcpu]]\nops=[{op=\"read\",gpa=0,len=12288,expect=0}]\n";
        assert_eq!(
            key_of(parse("w.toml", text).unwrap_err()),
            "vcpu[0].ops[0].gpa"
        );
    }

    #[test]
    fn parse_byte_out_of_range_is_error() {
        let text = "[vm]\nmemory=4096\n[[vcpu]]\nops=[{op=\"write\",gpa=0,len=1,byte=256}]\n";
        assert_eq!(
            key_of(parse("w.toml", text).unwrap_err()),
            "vcpu[0].ops[0].byte"
        );
    }

    #[test]
    fn parse_size_suffixes() {
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1XB").is_err());
    }
}
