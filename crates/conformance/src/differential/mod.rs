//! The differential test: proptest-generated operation sequences (see
//! [`ops`]) run on two backends — the model with the profile matching the
//! kernel, and real KVM — must give identical results, step for step
//! (Ok/errno/bytes/exits; see [`exec::Res`]).
//!
//! Sequences run on a default VM, and also on a SW_PROTECTED VM when both
//! backends have that type (the rig), so attributes and private faults are
//! compared too. A disagreement is shrunk by proptest to a minimal sequence
//! and reported with both backends' results side by side; the kernel is the
//! oracle.

pub mod coverage;
pub mod exec;
#[cfg(test)]
mod exec_tests;
pub mod ops;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use privmem_core::{Cap, Hypervisor, VmType};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

pub use coverage::{default_floor, Coverage, KindCoverage, Totals};
use exec::{execute, Res};
use ops::{sequence, Sequence};

/// The default seed: runs are reproducible unless a seed is given.
pub const DEFAULT_SEED: u64 = 0x5eed_c0de_0000_0001;

/// How much to generate.
#[derive(Clone, Copy, Debug)]
pub struct DiffConfig {
    /// Number of sequences.
    pub cases: u32,
    /// Longest sequence.
    pub max_steps: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for DiffConfig {
    fn default() -> Self {
        DiffConfig {
            cases: 64,
            max_steps: 16,
            seed: DEFAULT_SEED,
        }
    }
}

/// The outcome of a differential run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffReport {
    /// The two backends' names (A, B).
    pub backends: (&'static str, &'static str),
    /// VM types the sequences used.
    pub vm_types: Vec<VmType>,
    /// Sequences run (including shrinking).
    pub sequences: u64,
    /// Steps run per backend.
    pub steps: u64,
    /// The seed.
    pub seed: u64,
    /// How often each operation kind gave each kind of result (on backend
    /// A), e.g. `"SetRegion: ok"`: shows what the sequences exercised.
    pub results: BTreeMap<String, u64>,
    /// Per operation kind: steps compared with a kernel result that varies,
    /// n/a, one constant errno, emulated by privmem.
    pub coverage: Coverage,
    /// The minimal disagreeing sequence with both results, if any.
    pub difference: Option<String>,
}

impl DiffReport {
    /// True when the backends agreed on everything.
    pub fn agreed(&self) -> bool {
        self.difference.is_none()
    }
}

/// VM types both backends can create.
fn common_vm_types<A: Hypervisor, B: Hypervisor>(a: &A, b: &B) -> Vec<VmType> {
    let bits = |types: u64| if types == 0 { 1 } else { types };
    let ta = bits(a.check_extension(Cap::VmTypes).unwrap_or(0));
    let tb = bits(b.check_extension(Cap::VmTypes).unwrap_or(0));
    [VmType::Default, VmType::SwProtected]
        .into_iter()
        .filter(|t| ta & tb & (1 << t.kvm_type()) != 0)
        .collect()
}

/// Compares the results step by step; the first difference, formatted with
/// the whole sequence and both backends' results.
fn compare(names: (&str, &str), seq: &Sequence, ra: &[Res], rb: &[Res]) -> Result<(), String> {
    let Some(first) = ra.iter().zip(rb).position(|(x, y)| x != y) else {
        return Ok(());
    };
    let mut s = format!(
        "step {first} differs: {} gave {:?}, {} gave {:?}\nsequence on a {} VM:\n",
        names.0,
        ra[first],
        names.1,
        rb[first],
        seq.vm_type.name()
    );
    for (i, op) in seq.ops.iter().enumerate().take(first + 1) {
        let mark = if i == first { ">>" } else { "  " };
        let _ = writeln!(s, "{mark}{i:2}: {op:x?}");
        let _ = writeln!(s, "      {}: {:?}", names.0, ra[i]);
        if ra[i] != rb[i] {
            let _ = writeln!(s, "      {}: {:?}", names.1, rb[i]);
        }
    }
    Err(s)
}

/// How far a differential run has got, told after every sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffProgress {
    /// Sequences run so far, shrinking runs included.
    pub sequences: u64,
    /// The sequences asked for ([`DiffConfig::cases`]).
    pub total: u64,
    /// True once a difference was found: the runs since then shrink it to
    /// a minimal sequence.
    pub shrinking: bool,
}

/// Runs the differential between `a` and `b`.
///
/// # Errors
/// A message if a backend could not even create the sequence's VMs.
pub fn run<A: Hypervisor, B: Hypervisor>(
    a: &A,
    b: &B,
    cfg: &DiffConfig,
) -> Result<DiffReport, String> {
    run_with_progress(a, b, cfg, &|_| {})
}

/// [`run`], calling `progress` after every sequence (for a progress bar).
///
/// # Errors
/// A message if a backend could not even create the sequence's VMs.
pub fn run_with_progress<A: Hypervisor, B: Hypervisor>(
    a: &A,
    b: &B,
    cfg: &DiffConfig,
    progress: &dyn Fn(DiffProgress),
) -> Result<DiffReport, String> {
    let names = (a.name(), b.name());
    let vm_types = common_vm_types(a, b);
    let config = Config {
        cases: cfg.cases,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(cfg.seed));
    let mut runner = TestRunner::new_with_rng(config, rng);
    let sequences = Cell::new(0u64);
    let steps = Cell::new(0u64);
    let results = RefCell::new(BTreeMap::new());
    let coverage = RefCell::new(Coverage::default());
    let shrinking = Cell::new(false);
    let result = runner.run(&sequence(vm_types.clone(), cfg.max_steps), |seq| {
        sequences.set(sequences.get() + 1);
        steps.set(steps.get() + seq.ops.len() as u64);
        let outcome = run_one(a, b, &seq, names, &results, &coverage);
        shrinking.set(shrinking.get() || outcome.is_err());
        progress(DiffProgress {
            sequences: sequences.get(),
            total: u64::from(cfg.cases),
            shrinking: shrinking.get(),
        });
        outcome
    });
    let difference = match result {
        Ok(()) => None,
        Err(TestError::Fail(why, _)) => Some(why.message().to_string()),
        Err(TestError::Abort(why)) => return Err(format!("differential aborted: {why}")),
    };
    Ok(DiffReport {
        backends: names,
        vm_types,
        sequences: sequences.get(),
        steps: steps.get(),
        seed: cfg.seed,
        results: results.into_inner(),
        coverage: coverage.into_inner(),
        difference,
    })
}

/// Runs `seq` on both backends, records its results and coverage, and
/// compares them.
fn run_one<A: Hypervisor, B: Hypervisor>(
    a: &A,
    b: &B,
    seq: &Sequence,
    names: (&'static str, &'static str),
    results: &RefCell<BTreeMap<String, u64>>,
    coverage: &RefCell<Coverage>,
) -> Result<(), TestCaseError> {
    let ea = execute(a, seq).map_err(TestCaseError::fail)?;
    let eb = execute(b, seq).map_err(TestCaseError::fail)?;
    tally(&mut results.borrow_mut(), seq, &ea.res);
    let emulated: Vec<bool> = ea
        .emulated
        .iter()
        .zip(&eb.emulated)
        .map(|(x, y)| *x || *y)
        .collect();
    coverage.borrow_mut().record(seq, &ea.res, &emulated);
    compare(names, seq, &ea.res, &eb.res).map_err(TestCaseError::fail)
}

/// Runs one given sequence on `a` and `b` and compares them step by step
/// (pinned regression sequences); the difference, formatted as [`run`]
/// reports it.
///
/// # Errors
/// The formatted first difference, or why a backend could not run it.
pub fn check<A: Hypervisor, B: Hypervisor>(a: &A, b: &B, seq: &Sequence) -> Result<(), String> {
    let ra = execute(a, seq)?;
    let rb = execute(b, seq)?;
    compare((a.name(), b.name()), seq, &ra.res, &rb.res)
}

/// Counts `"<op kind>: <result kind>"` for every step of `seq`.
fn tally(cov: &mut BTreeMap<String, u64>, seq: &Sequence, res: &[Res]) {
    for (op, r) in seq.ops.iter().zip(res) {
        let kind = op.kind();
        let class = match r {
            Res::Err(_) | Res::Refused | Res::Unsupported => format!("{r:?}"),
            Res::Exits(e) => match e.last() {
                Some(last) => format!("{last:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("?")
                    .to_string(),
                None => "no exit".into(),
            },
            Res::NotApplicable => "n/a".into(),
            Res::HostFault(h) => h.signal.name().into(),
            _ => "ok".into(),
        };
        *cov.entry(format!("{kind}: {class}")).or_insert(0) += 1;
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let v = seed.rotate_left(i as u32 * 16) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use ops::Op;

    #[test]
    fn compare_marks_the_first_differing_step() {
        let seq = Sequence {
            vm_type: VmType::Default,
            ops: vec![
                Op::EnableExitHypercall { mask: 0 },
                Op::EnableExitHypercall { mask: 1 << 11 },
            ],
        };
        let a = [Res::Ok, Res::Ok];
        let b = [Res::Ok, Res::Err(22)];
        let msg = compare(("model", "kvm"), &seq, &a, &b).unwrap_err();
        assert!(
            msg.starts_with("step 1 differs: model gave ok, kvm gave EINVAL"),
            "{msg}"
        );
        assert!(msg.contains(">> 1: EnableExitHypercall"), "{msg}");
        assert!(compare(("model", "kvm"), &seq, &a, &a).is_ok());
    }

    #[test]
    fn seeds_give_distinct_rng_states() {
        assert_ne!(seed_bytes(1), seed_bytes(2));
    }
}
