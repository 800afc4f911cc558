//! What a differential run really compared. A step agrees trivially when
//! neither backend reached the kernel (`n/a`: nothing to operate on, or
//! privmem refused the arguments first), when the KVM backend answered it
//! with privmem's own emulation (the port-I/O hypercall transport, the
//! guest_memfd mapping for a NULL `userspace_addr`), or when its operation
//! kind gave one and the same errno on every call (a host without
//! guest_memfd answers every `KVM_CREATE_GUEST_MEMFD` with ENOTTY). Only
//! the rest, steps compared with a kernel result that varies, shows that the
//! model follows the kernel; [`Coverage::check_floor`] asserts a share of
//! them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use privmem_core::{Errno, VmType};

use super::exec::Res;
use super::ops::Sequence;

/// One operation kind's steps, by what they compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindCoverage {
    /// Steps of this kind.
    pub steps: u64,
    /// Steps that reached no kernel on either side (`n/a`, refused by
    /// privmem, unsupported by the backend).
    pub not_applicable: u64,
    /// Steps the KVM backend answered with privmem's own emulation.
    pub emulated: u64,
    /// Kernel results that were an errno, by errno.
    errnos: BTreeMap<i32, u64>,
    /// Kernel results that were not an errno.
    values: u64,
}

impl KindCoverage {
    /// Steps with a kernel result (neither n/a nor emulated).
    pub fn kernel(&self) -> u64 {
        self.values + self.errnos.values().sum::<u64>()
    }

    /// The errno every kernel result of this kind was, if they were all
    /// one errno.
    pub fn constant_errno(&self) -> Option<Errno> {
        match (self.values, self.errnos.len()) {
            (0, 1) => self.errnos.keys().next().map(|&e| Errno(e)),
            _ => None,
        }
    }

    /// Steps whose kernel result was that constant errno.
    pub fn constant(&self) -> u64 {
        if self.constant_errno().is_some() {
            self.kernel()
        } else {
            0
        }
    }

    /// Steps compared with a kernel result that varies.
    pub fn compared(&self) -> u64 {
        self.kernel() - self.constant()
    }

    fn record(&mut self, res: &Res, emulated: bool) {
        self.steps += 1;
        match res {
            _ if emulated => self.emulated += 1,
            Res::NotApplicable | Res::Refused | Res::Unsupported => self.not_applicable += 1,
            Res::Err(e) => *self.errnos.entry(*e).or_insert(0) += 1,
            _ => self.values += 1,
        }
    }
}

/// Every operation kind's coverage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// By operation kind (`SetRegion`, `Run`, ...).
    pub kinds: BTreeMap<&'static str, KindCoverage>,
}

/// The sums over every kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Steps.
    pub steps: u64,
    /// Compared with a kernel result that varies.
    pub compared: u64,
    /// Reached no kernel.
    pub not_applicable: u64,
    /// The same errno on every call of their kind.
    pub constant: u64,
    /// Answered by privmem's emulation.
    pub emulated: u64,
}

impl Totals {
    /// `compared / steps` (0 without steps).
    pub fn compared_share(&self) -> f64 {
        share(self.compared, self.steps)
    }
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

impl Coverage {
    /// Records one sequence: backend A's results, and per step whether
    /// either backend emulated it.
    pub(crate) fn record(&mut self, seq: &Sequence, res: &[Res], emulated: &[bool]) {
        for ((op, r), &em) in seq.ops.iter().zip(res).zip(emulated) {
            self.kinds.entry(op.kind()).or_default().record(r, em);
        }
    }

    /// The sums over every kind.
    pub fn totals(&self) -> Totals {
        self.kinds.values().fold(Totals::default(), |t, k| Totals {
            steps: t.steps + k.steps,
            compared: t.compared + k.compared(),
            not_applicable: t.not_applicable + k.not_applicable,
            constant: t.constant + k.constant(),
            emulated: t.emulated + k.emulated,
        })
    }

    /// One line per kind and a total: steps, compared, n/a, constant
    /// errno (which), emulated.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:>7} {:>9} {:>7} {:>15} {:>9}\n",
            "operation", "steps", "compared", "n/a", "constant errno", "emulated"
        );
        let mut row = |name: &str, steps, compared, na, constant: String, emulated| {
            let _ = writeln!(
                s,
                "{name:<20} {steps:>7} {compared:>9} {na:>7} {constant:>15} {emulated:>9}"
            );
        };
        for (k, c) in &self.kinds {
            let constant = match c.constant_errno() {
                Some(e) => format!("{} {e}", c.constant()),
                None => "0".into(),
            };
            row(
                k,
                c.steps,
                c.compared(),
                c.not_applicable,
                constant,
                c.emulated,
            );
        }
        let t = self.totals();
        row(
            "all",
            t.steps,
            t.compared,
            t.not_applicable,
            t.constant.to_string(),
            t.emulated,
        );
        let _ = write!(
            s,
            "compared with a kernel result that varies: {:.1}% of steps",
            100.0 * t.compared_share()
        );
        s
    }

    /// `Ok` if at least `floor` (0..=1) of all steps were compared with a
    /// kernel result that varies; otherwise what the rest were.
    ///
    /// # Errors
    /// The shortfall, with the n/a, constant-errno and emulated shares and
    /// the kinds that were constant.
    pub fn check_floor(&self, floor: f64) -> Result<(), String> {
        let t = self.totals();
        if t.steps > 0 && t.compared_share() >= floor {
            return Ok(());
        }
        let mut s = format!(
            "only {:.1}% of {} steps ({}) were compared with a kernel result that varies; the \
             floor is {:.1}%: n/a {:.1}%, constant errno {:.1}%, emulated {:.1}%",
            100.0 * t.compared_share(),
            t.steps,
            t.compared,
            100.0 * floor,
            100.0 * share(t.not_applicable, t.steps),
            100.0 * share(t.constant, t.steps),
            100.0 * share(t.emulated, t.steps),
        );
        let constant: Vec<String> = self
            .kinds
            .iter()
            .filter_map(|(k, c)| c.constant_errno().map(|e| format!("{k} always {e}")))
            .collect();
        if !constant.is_empty() {
            let _ = write!(s, " ({})", constant.join(", "));
        }
        Err(s)
    }
}

/// The floor a run is held to by default: the share of steps that must be
/// compared with a kernel result that varies, given the VM types both
/// backends run and whether the kernel has guest_memfd.
///
/// Measured with seeds 1-3, 64 sequences of 16 steps and 1000 of 40:
/// - private memory (sw-protected VMs and guest_memfd: the rig's 6.12 with
///   SMM, as the model sees it) compares 75-79%: floor 70%;
/// - no guest_memfd (a PVM host built without it, against real KVM)
///   compares 41-45%: every `KVM_CREATE_GUEST_MEMFD` and
///   `KVM_SET_MEMORY_ATTRIBUTES` is ENOTTY, and the file, mapping and
///   fallocate steps have no file to work on: floor 35%;
/// - guest_memfd on default VMs only (a PVM host with guest_memfd): the
///   model of it compares 71-78% before privmem's emulations (the port-I/O
///   hypercalls, the guest_memfd mapping for NULL `userspace_addr`), which
///   only a real run there counts; not measured on such a host: floor 50%.
pub fn default_floor(vm_types: &[VmType], guest_memfd: bool) -> f64 {
    match (vm_types.contains(&VmType::SwProtected), guest_memfd) {
        (true, true) => 0.70,
        (false, true) => 0.50,
        (_, false) => 0.35,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::differential::ops::{Op, VmSel};

    fn seq(ops: Vec<Op>) -> Sequence {
        Sequence {
            vm_type: VmType::Default,
            ops,
        }
    }

    fn check() -> Op {
        Op::CheckExtension {
            cap: privmem_core::Cap::GuestMemfd,
        }
    }

    #[test]
    fn constant_errnos_and_na_do_not_count_as_compared() {
        let mut c = Coverage::default();
        let ops = vec![
            Op::CreateGmem {
                vm: VmSel::Main,
                size: 4096,
                flags: 0,
            };
            4
        ];
        let s = seq(ops);
        // CreateGmem: always ENOTTY; then n/a steps; then varying values.
        c.record(
            &s,
            &[Res::Err(25), Res::Err(25), Res::Err(25), Res::NotApplicable],
            &[false; 4],
        );
        let k = &c.kinds["CreateGmem"];
        assert_eq!(k.constant_errno(), Some(Errno(25)));
        assert_eq!((k.constant(), k.compared(), k.not_applicable), (3, 0, 1));
        let checks = seq(vec![check(); 3]);
        c.record(
            &checks,
            &[Res::Value(1), Res::Err(22), Res::Value(0)],
            &[false, false, true],
        );
        let k = &c.kinds["CheckExtension"];
        assert_eq!((k.compared(), k.emulated, k.constant()), (2, 1, 0));
        let t = c.totals();
        assert_eq!(
            (
                t.steps,
                t.compared,
                t.constant,
                t.not_applicable,
                t.emulated
            ),
            (7, 2, 3, 1, 1)
        );
    }

    #[test]
    fn a_high_na_share_fails_the_floor() {
        let mut c = Coverage::default();
        let s = seq(vec![check(); 10]);
        let mut res = vec![Res::NotApplicable; 10];
        res[0] = Res::Value(1);
        res[1] = Res::Err(22);
        c.record(&s, &res, &[false; 10]);
        let err = c.check_floor(0.7).unwrap_err();
        assert!(err.starts_with("only 20.0% of 10 steps (2)"), "{err}");
        assert!(err.contains("n/a 80.0%"), "{err}");
        assert!(c.check_floor(0.2).is_ok());
        assert!(
            Coverage::default().check_floor(0.0).is_err(),
            "no steps never meet a floor"
        );
    }
}
