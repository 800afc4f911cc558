//! Per-exit decisions a VMM's vCPU loop takes from privmem: what to do with a
//! memory fault (convert, or stop and why) and with a hypercall (convert, or
//! complete it with a return value), and the per-vCPU repeat guard that keeps
//! an unresolvable fault from looping forever.
//!
//! Everything here is pure: no I/O, no engine, no locks. A VMM decodes an exit
//! (`abi::decode_exit` or its own decoder), asks [`decide_fault`] or
//! [`decide_hypercall`], and carries the answer out itself (usually with
//! [`Engine::convert`](crate::engine::Engine::convert)).
//!
//! ```
//! use privmem_core::decide::{decide_fault, FaultAction, FaultPolicy, RepeatGuard};
//! use privmem_core::{FaultErrno, Gpa, MemoryFault};
//!
//! let policy = FaultPolicy::default();
//! let mut guard = RepeatGuard::new(policy.max_repeats);
//! let f = MemoryFault { gpa: Gpa(0x1000), size: 4096, private: true, errno: FaultErrno::Efault };
//! // The first two identical faults ask for a conversion, the third stops.
//! assert!(matches!(decide_fault(&policy, &mut guard, &f), FaultAction::Convert(_)));
//! assert!(matches!(decide_fault(&policy, &mut guard, &f), FaultAction::Convert(_)));
//! assert!(matches!(decide_fault(&policy, &mut guard, &f), FaultAction::Stop(_)));
//! ```

use std::fmt;
use std::num::NonZeroU32;

use crate::exit::{hc_ret, FaultErrno, Hypercall, MapGpaRange, MemoryFault};
use crate::types::Gpa;

/// What to do when the guest faults on memory whose attribute does not match
/// its access (an implicit conversion request, `KVM_EXIT_MEMORY_FAULT` with
/// `EFAULT`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum ImplicitPolicy {
    /// Convert the faulting page to the access's attribute and re-enter the
    /// guest (what QEMU does for TDX/SNP guests).
    #[default]
    Convert,
    /// Refuse: stop the vCPU ([`FaultStop::Denied`]). For VMMs whose guests
    /// must convert explicitly with `MAP_GPA_RANGE`.
    Deny,
}

/// Whether a conversion frees the backing the guest no longer uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum DiscardPolicy {
    /// Free it: `PUNCH_HOLE` the guest_memfd pages going shared, discard the
    /// shared backing of pages going private. Reads after a round trip see
    /// zeros, never stale data, and the memory returns to the host.
    #[default]
    Discard,
    /// Keep it: a page converted back finds its old contents of that side
    /// (never the other side's).
    Keep,
}

impl DiscardPolicy {
    /// True for [`DiscardPolicy::Discard`].
    pub const fn discards(self) -> bool {
        matches!(self, DiscardPolicy::Discard)
    }
}

/// How a vCPU answers memory faults.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FaultPolicy {
    /// Implicit conversions: convert or deny.
    pub implicit: ImplicitPolicy,
    /// The same fault this many times in a row stops the vCPU
    /// ([`FaultStop::Loop`]): converting did not resolve it.
    pub max_repeats: NonZeroU32,
}

impl FaultPolicy {
    /// Three identical faults in a row are a loop: the first is answered
    /// with a conversion, the second means the conversion did not take (or
    /// raced with another vCPU converting back), the third stops.
    pub const DEFAULT_MAX_REPEATS: NonZeroU32 = match NonZeroU32::new(3) {
        Some(n) => n,
        None => unreachable!(),
    };
}

impl Default for FaultPolicy {
    fn default() -> Self {
        FaultPolicy {
            implicit: ImplicitPolicy::Convert,
            max_repeats: Self::DEFAULT_MAX_REPEATS,
        }
    }
}

/// The repeat guard's key: a fault is "the same" if all of these match.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct FaultKey {
    gpa: Gpa,
    size: u64,
    flags: u64,
    errno: FaultErrno,
}

impl From<&MemoryFault> for FaultKey {
    fn from(f: &MemoryFault) -> Self {
        FaultKey {
            gpa: f.gpa,
            size: f.size,
            flags: f.flags(),
            errno: f.errno,
        }
    }
}

/// One vCPU's repeat guard: counts identical memory faults in a row (same
/// GPA, size, flags and errno) and trips at a limit, so a fault that no
/// conversion resolves (missing backing, a kernel that refuses the access)
/// stops the vCPU instead of looping forever.
///
/// Keep one per vCPU; call [`observe`](Self::observe) on every memory-fault
/// exit and [`reset`](Self::reset) on every other exit (progress was made).
#[derive(Clone, Debug)]
pub struct RepeatGuard {
    max_repeats: NonZeroU32,
    last: Option<(FaultKey, u32)>,
}

/// The repeat guard tripped: the same fault came `count` times in a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("the same fault repeated {count} times in a row")]
pub struct FaultLoop {
    /// How many times in a row (the guard's limit).
    pub count: u32,
}

impl RepeatGuard {
    /// A guard that trips on the `max_repeats`-th identical fault in a row.
    pub const fn new(max_repeats: NonZeroU32) -> RepeatGuard {
        RepeatGuard {
            max_repeats,
            last: None,
        }
    }

    /// The limit.
    pub const fn max_repeats(&self) -> NonZeroU32 {
        self.max_repeats
    }

    /// Records fault `f`. `Ok(n)`: this is the `n`-th identical fault in a
    /// row, below the limit; `Err` once it reaches the limit.
    pub fn observe(&mut self, f: &MemoryFault) -> Result<u32, FaultLoop> {
        let key = FaultKey::from(f);
        let count = match self.last {
            Some((k, n)) if k == key => n.saturating_add(1),
            _ => 1,
        };
        self.last = Some((key, count));
        if count >= self.max_repeats.get() {
            Err(FaultLoop { count })
        } else {
            Ok(count)
        }
    }

    /// Forgets the last fault (call on any exit that is not a memory fault).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Why a memory fault stops the vCPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultStop {
    /// `EHWPOISON`: the guest touched a hardware-poisoned guest_memfd page.
    /// Never converted: the page is gone, and converting would hide that.
    Hwpoison(MemoryFault),
    /// The repeat guard tripped.
    Loop {
        /// The fault.
        fault: MemoryFault,
        /// How many times in a row it came.
        count: u32,
    },
    /// [`ImplicitPolicy::Deny`] refused the implicit conversion.
    Denied(MemoryFault),
}

impl FaultStop {
    /// The fault that stopped the vCPU.
    pub const fn fault(&self) -> &MemoryFault {
        match self {
            FaultStop::Hwpoison(f) | FaultStop::Denied(f) | FaultStop::Loop { fault: f, .. } => f,
        }
    }
}

fn access(private: bool) -> &'static str {
    if private {
        "private"
    } else {
        "shared"
    }
}

impl fmt::Display for FaultStop {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultStop::Hwpoison(f) => write!(
                out,
                "guest touched hardware-poisoned page {} ({})",
                f.gpa,
                access(f.private)
            ),
            FaultStop::Loop { fault: f, count } => write!(
                out,
                "the same {} fault at {} (size {}, {}) repeated {count} times in a row: converting did not resolve it, \
                 so the backing is missing or the kernel refuses the access",
                f.errno.name(),
                f.gpa,
                f.size,
                access(f.private)
            ),
            FaultStop::Denied(f) => write!(
                out,
                "implicit conversion of {} to {} denied by policy",
                f.gpa,
                access(f.private)
            ),
        }
    }
}

/// What to do with a memory fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultAction {
    /// Convert the faulting page(s) to the access's attribute
    /// (`f.private`), then re-enter the guest; stop it if the conversion is
    /// refused (the fault cannot be resolved).
    Convert(MemoryFault),
    /// Stop the vCPU.
    Stop(FaultStop),
}

/// Decides what to do with memory fault `f` on the vCPU that owns `guard`:
/// hwpoison first (never converted, never counted), then the repeat guard,
/// then the implicit-conversion policy.
pub fn decide_fault(policy: &FaultPolicy, guard: &mut RepeatGuard, f: &MemoryFault) -> FaultAction {
    if f.errno == FaultErrno::Ehwpoison {
        return FaultAction::Stop(FaultStop::Hwpoison(*f));
    }
    if let Err(FaultLoop { count }) = guard.observe(f) {
        return FaultAction::Stop(FaultStop::Loop { fault: *f, count });
    }
    match policy.implicit {
        ImplicitPolicy::Convert => FaultAction::Convert(*f),
        ImplicitPolicy::Deny => FaultAction::Stop(FaultStop::Denied(*f)),
    }
}

/// What to do with a `KVM_EXIT_HYPERCALL`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HypercallAction {
    /// A valid `MAP_GPA_RANGE`: convert, then complete the hypercall with
    /// `hc_ret::OK`, or `hc_ret::EINVAL` if the conversion fails.
    Convert(MapGpaRange),
    /// Complete the hypercall with this return value right away: `-22`
    /// (`EINVAL`) for a malformed `MAP_GPA_RANGE`, `-1000` (`ENOSYS`) for a
    /// hypercall privmem does not serve.
    Complete(i64),
}

/// Decides what to do with hypercall `h`.
pub fn decide_hypercall(h: &Hypercall) -> HypercallAction {
    match h {
        Hypercall::MapGpaRange(m) => HypercallAction::Convert(*m),
        Hypercall::InvalidMapGpaRange { .. } => HypercallAction::Complete(hc_ret::EINVAL),
        Hypercall::Other { .. } => HypercallAction::Complete(hc_ret::ENOSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::PageSizeHint;

    fn fault(gpa: u64, private: bool, errno: FaultErrno) -> MemoryFault {
        MemoryFault {
            gpa: Gpa(gpa),
            size: 4096,
            private,
            errno,
        }
    }

    fn guard() -> RepeatGuard {
        RepeatGuard::new(FaultPolicy::DEFAULT_MAX_REPEATS)
    }

    #[test]
    fn decide_hwpoison_stops_with_hwpoison_never_converts() {
        let f = fault(0x300000, true, FaultErrno::Ehwpoison);
        let a = decide_fault(&FaultPolicy::default(), &mut guard(), &f);
        assert_eq!(a, FaultAction::Stop(FaultStop::Hwpoison(f)));
        let msg = FaultStop::Hwpoison(f).to_string();
        assert!(msg.contains("hardware-poisoned page 0x300000"), "{msg}");
    }

    #[test]
    fn decide_convert_policy_asks_for_implicit_conversion() {
        let f = fault(0x1000, true, FaultErrno::Efault);
        let a = decide_fault(&FaultPolicy::default(), &mut guard(), &f);
        assert_eq!(a, FaultAction::Convert(f));
    }

    #[test]
    fn decide_deny_policy_stops_with_denied() {
        let p = FaultPolicy {
            implicit: ImplicitPolicy::Deny,
            ..FaultPolicy::default()
        };
        let f = fault(0x1000, true, FaultErrno::Efault);
        assert_eq!(
            decide_fault(&p, &mut guard(), &f),
            FaultAction::Stop(FaultStop::Denied(f))
        );
    }

    #[test]
    fn guard_same_fault_max_repeats_times_is_a_loop() {
        let mut g = guard();
        let p = FaultPolicy::default();
        let f = fault(0x2000, false, FaultErrno::Efault);
        assert_eq!(decide_fault(&p, &mut g, &f), FaultAction::Convert(f));
        assert_eq!(decide_fault(&p, &mut g, &f), FaultAction::Convert(f));
        assert_eq!(
            decide_fault(&p, &mut g, &f),
            FaultAction::Stop(FaultStop::Loop { fault: f, count: 3 })
        );
    }

    #[test]
    fn guard_limit_one_trips_on_the_first_fault() {
        let mut g = RepeatGuard::new(NonZeroU32::MIN);
        let f = fault(0x2000, false, FaultErrno::Efault);
        assert_eq!(g.observe(&f), Err(FaultLoop { count: 1 }));
    }

    #[test]
    fn guard_reset_between_faults_starts_the_count_again() {
        let mut g = guard();
        let f = fault(0x2000, false, FaultErrno::Efault);
        assert_eq!(g.observe(&f), Ok(1));
        assert_eq!(g.observe(&f), Ok(2));
        g.reset();
        assert_eq!(g.observe(&f), Ok(1));
    }

    #[test]
    fn guard_counts_only_identical_faults() {
        let mut g = guard();
        for i in 0..10 {
            assert_eq!(g.observe(&fault(i * 4096, true, FaultErrno::Efault)), Ok(1));
        }
        // Same address, other intent: a different fault.
        assert_eq!(g.observe(&fault(0x1000, true, FaultErrno::Efault)), Ok(1));
        assert_eq!(g.observe(&fault(0x1000, false, FaultErrno::Efault)), Ok(1));
    }

    #[test]
    fn decide_invalid_map_completes_with_einval() {
        let h = Hypercall::decode(12, [1, 1, 0, 0, 0, 0]);
        assert_eq!(decide_hypercall(&h), HypercallAction::Complete(-22));
    }

    #[test]
    fn decide_unknown_hypercall_completes_with_enosys() {
        let h = Hypercall::decode(99, [0; 6]);
        assert_eq!(decide_hypercall(&h), HypercallAction::Complete(-1000));
    }

    #[test]
    fn decide_valid_map_converts() {
        let h = Hypercall::decode(12, [0x1000, 2, 0x10, 0, 0, 0]);
        assert!(matches!(
            decide_hypercall(&h),
            HypercallAction::Convert(m) if m.to_private && m.pages == 2 && m.page_size_hint == PageSizeHint::Size4K
        ));
    }
}
