//! The `[vm]`, `[policy]`, `[[slot]]` and `[[poison]]` tables.

use privmem_core::types::{Gpa, GpaRange, VmType, PAGE_SIZE};
use toml::Value;

use super::{Implicit, Policy, SlotSpec, WorkloadError, MAX_GPA};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, key: &str, value: &Value, why: impl Into<String>) -> WorkloadError {
        WorkloadError::Key {
            file: self.file.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            why: why.into(),
        }
    }

    pub(super) fn table<'v>(
        &self,
        key: &str,
        v: &'v Value,
    ) -> Result<&'v toml::Table, WorkloadError> {
        v.as_table()
            .ok_or_else(|| self.err(key, v, "expected a table"))
    }

    pub(super) fn check_keys(
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

    pub(super) fn number(&self, key: &str, v: &Value) -> Result<u64, WorkloadError> {
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

    pub(super) fn byte(&self, key: &str, v: &Value) -> Result<u8, WorkloadError> {
        let n = self.number(key, v)?;
        u8::try_from(n).map_err(|_| self.err(key, v, "must be a byte (0..=255)"))
    }

    pub(super) fn string<'v>(&self, key: &str, v: &'v Value) -> Result<&'v str, WorkloadError> {
        v.as_str()
            .ok_or_else(|| self.err(key, v, "expected a string"))
    }

    pub(super) fn boolean(&self, key: &str, v: &Value) -> Result<bool, WorkloadError> {
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

pub(super) fn parse_vm_type(cx: &Ctx<'_>, vm: &toml::Table) -> Result<VmType, WorkloadError> {
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

pub(super) fn parse_initial(
    cx: &Ctx<'_>,
    vm: &toml::Table,
    ty: VmType,
) -> Result<bool, WorkloadError> {
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

pub(super) fn parse_policy(cx: &Ctx<'_>, v: Option<&Value>) -> Result<Policy, WorkloadError> {
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

pub(super) fn array<'v>(
    cx: &Ctx<'_>,
    key: &str,
    v: Option<&'v Value>,
) -> Result<&'v [Value], WorkloadError> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(cx.err(key, other, "expected an array of tables ([[...]])")),
    }
}

pub(super) fn page_range(
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

pub(super) fn parse_slots(
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

pub(super) fn parse_poison(
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
