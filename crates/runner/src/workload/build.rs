//! From the file as written ([`super::raw`]) to a validated [`Workload`]:
//! required keys, ranges, alignment, limits and cross-references (slots
//! that overlap, poison outside guest_memfd, the vCPU count).

use privmem_core::types::{Gpa, GpaRange, VmType, PAGE_SIZE};
use toml::Spanned;

use super::ops::vcpus;
use super::raw::VmTypeName;
use super::raw::{ImplicitName, Num, RawPoison, RawPolicy, RawSlot, RawVm, RawWorkload, Side};
use super::source::Source;
use super::{Implicit, Policy, SlotSpec, Workload, WorkloadError, GPA_LIMIT};

/// Checks and assembles the whole workload.
pub(super) fn workload(src: &Source<'_>, raw: RawWorkload) -> Result<Workload, WorkloadError> {
    let doc = 0..src.text.len();
    let vm = raw
        .vm
        .ok_or_else(|| src.missing("vm", doc, "missing [vm] table"))?;
    let vm_type = match vm.get_ref().ty.as_ref().map(|t| *t.get_ref()) {
        None | Some(VmTypeName::Default) => VmType::Default,
        Some(VmTypeName::SwProtected) => VmType::SwProtected,
        Some(VmTypeName::Coco) => VmType::Coco,
    };
    let initial_private = initial(src, vm.get_ref(), vm_type)?;
    let policy = policy(src, raw.policy.as_ref())?;
    let slots = slots(src, &vm, &raw.slot)?;
    let poison = poison(src, &raw.poison, &slots)?;
    let vcpus = vcpus(src, &vm, &raw.vcpu, &slots)?;
    Ok(Workload {
        vm_type,
        initial_private,
        policy,
        slots,
        poison,
        vcpus,
    })
}

fn initial(src: &Source<'_>, vm: &RawVm, ty: VmType) -> Result<bool, WorkloadError> {
    let Some(v) = &vm.initial else {
        return Ok(false);
    };
    let private = *v.get_ref() == Side::Private;
    if private && !ty.has_private_mem() {
        return Err(src.bad("vm.initial", v, "a default VM has no private memory"));
    }
    Ok(private)
}

fn policy(src: &Source<'_>, raw: Option<&Spanned<RawPolicy>>) -> Result<Policy, WorkloadError> {
    let mut p = Policy::default();
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Ok(p);
    };
    if let Some(v) = &raw.implicit {
        p.implicit = match v.get_ref() {
            ImplicitName::Convert => Implicit::Convert,
            ImplicitName::Deny => Implicit::Deny,
        };
    }
    if let Some(v) = &raw.discard {
        p.discard = *v.get_ref();
    }
    if let Some(v) = &raw.max_repeats {
        p.max_repeats = u32::try_from(v.get_ref().0)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| src.bad("policy.max_repeats", v, "must be between 1 and 1000000"))?;
    }
    Ok(p)
}

/// `[gpa, gpa+size)`, page-aligned, non-empty, below [`GPA_LIMIT`].
/// `gpa_key`/`size_key` name the keys in errors; a missing `gpa` is 0.
fn page_range(
    src: &Source<'_>,
    (gpa_key, gpa): (&str, Option<&Spanned<Num>>),
    (size_key, size): (&str, &Spanned<Num>),
) -> Result<GpaRange, WorkloadError> {
    let start = gpa.map_or(0, |g| g.get_ref().0);
    let len = size.get_ref().0;
    if let Some(g) = gpa.filter(|_| !start.is_multiple_of(PAGE_SIZE)) {
        return Err(src.bad(gpa_key, g, "must be 4 KiB aligned"));
    }
    if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
        return Err(src.bad(size_key, size, "must be a nonzero multiple of 4 KiB"));
    }
    let range =
        GpaRange::new(Gpa(start), len).map_err(|e| src.bad(size_key, size, e.to_string()))?;
    if !GPA_LIMIT.contains(range) {
        let why = format!("memory ends above the {GPA_LIMIT}");
        return Err(src.bad(size_key, size, why));
    }
    Ok(range)
}

fn slots(
    src: &Source<'_>,
    vm: &Spanned<RawVm>,
    raw: &[Spanned<RawSlot>],
) -> Result<Vec<SlotSpec>, WorkloadError> {
    if raw.is_empty() {
        let mem = vm.get_ref().memory.as_ref().ok_or_else(|| {
            src.missing("vm.memory", vm.span(), "missing (or give [[slot]] tables)")
        })?;
        return Ok(vec![SlotSpec {
            range: page_range(src, ("vm.gpa", None), ("vm.memory", mem))?,
            guest_memfd: true,
            close_guest_memfd: false,
        }]);
    }
    let mut slots = raw
        .iter()
        .enumerate()
        .map(|(i, s)| slot(src, &format!("slot[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| slots[i].range.start());
    if let Some(w) = order
        .windows(2)
        .find(|w| slots[w[0]].range.overlaps(slots[w[1]].range))
    {
        let (a, b) = (slots[w[0]].range, slots[w[1]].range);
        let why = format!("slot[{}] {b} overlaps slot[{}] {a}", w[1], w[0]);
        let later = raw[w[1]].get_ref();
        return Err(match &later.gpa {
            Some(g) => src.bad(&format!("slot[{}].gpa", w[1]), g, why),
            None => src.err(&format!("slot[{}]", w[1]), raw[w[1]].span(), why),
        });
    }
    slots.sort_by_key(|s| s.range.start());
    Ok(slots)
}

fn slot(src: &Source<'_>, key: &str, raw: &Spanned<RawSlot>) -> Result<SlotSpec, WorkloadError> {
    let s = raw.get_ref();
    let size = s
        .size
        .as_ref()
        .ok_or_else(|| src.missing(&format!("{key}.size"), raw.span(), "missing"))?;
    let guest_memfd = s.guest_memfd.as_ref().is_none_or(|g| *g.get_ref());
    let close_guest_memfd = match &s.close_guest_memfd {
        Some(v) if !guest_memfd => {
            let k = format!("{key}.close_guest_memfd");
            return Err(src.bad(&k, v, "needs guest_memfd = true"));
        }
        Some(v) => *v.get_ref(),
        None => false,
    };
    let range = page_range(
        src,
        (&format!("{key}.gpa"), s.gpa.as_ref()),
        (&format!("{key}.size"), size),
    )?;
    Ok(SlotSpec {
        range,
        guest_memfd,
        close_guest_memfd,
    })
}

fn poison(
    src: &Source<'_>,
    raw: &[Spanned<RawPoison>],
    slots: &[SlotSpec],
) -> Result<Vec<Gpa>, WorkloadError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let key = format!("poison[{i}].gpa");
        let v = p
            .get_ref()
            .gpa
            .as_ref()
            .ok_or_else(|| src.missing(&key, p.span(), "missing"))?;
        let gpa = Gpa(v.get_ref().0);
        let in_gmem = slots
            .iter()
            .any(|s| s.guest_memfd && !s.close_guest_memfd && s.range.contains(gpa));
        if !gpa.is_page_aligned() || !in_gmem {
            let why = "must be a page-aligned address in guest_memfd-backed memory";
            return Err(src.bad(&key, v, why));
        }
        out.push(gpa);
    }
    Ok(out)
}
