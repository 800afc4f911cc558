//! A benchmark's result rows: what a row's target compares ([`Target`]),
//! the row itself ([`Row`]), the paired samples it is built from
//! ([`Samples`], [`RowSpec`]) and the statistics over them ([`median`],
//! [`spread`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::injected;

/// What a row's target compares.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// `ratio <= x`.
    RatioAtMost(f64),
    /// `ratio >= x`.
    RatioAtLeast(f64),
    /// `ratio < x` (strictly faster than the baseline: x = 1).
    RatioBelow(f64),
    /// The privmem figure itself `>= x` (an absolute target).
    PrivmemAtLeast(f64),
    /// The privmem figure itself `<= x` (an absolute target).
    PrivmemAtMost(f64),
    /// No target: the row is context, a figure for the reader (e.g. what
    /// an option trades, where either side may be the larger). It is
    /// never met nor missed (`met` is null) and the regression guard does
    /// not read it (`worse_than_baseline` is null), since "worse" has no
    /// direction without a target.
    Context,
}

/// How many times worse than its baseline a row may be before the
/// regression guard fails the run.
pub const GUARD_FACTOR: f64 = 2.0;

impl Target {
    /// How many times worse than the baseline privmem did, by this
    /// target's direction (lower is better for `<=`/`<`, higher for `>=`);
    /// `None` for [`Target::Context`], which has no direction.
    fn worse_by(self, ratio: f64) -> Option<f64> {
        match self {
            Target::RatioAtMost(_) | Target::RatioBelow(_) | Target::PrivmemAtMost(_) => {
                Some(ratio)
            }
            Target::RatioAtLeast(_) | Target::PrivmemAtLeast(_) => Some(1.0 / ratio),
            Target::Context => None,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(x) => format!("<= {x}"),
            Target::RatioAtLeast(x) => format!(">= {x}"),
            Target::RatioBelow(x) => format!("< {x}"),
            Target::PrivmemAtLeast(x) => format!(">= {x} {unit}"),
            Target::PrivmemAtMost(x) => format!("<= {x} {unit}"),
            Target::Context => "none (context)".to_string(),
        }
    }

    /// Whether the figures meet the target; `None` for
    /// [`Target::Context`].
    fn met(self, privmem: f64, ratio: f64) -> Option<bool> {
        match self {
            Target::RatioAtMost(x) => Some(ratio <= x),
            Target::RatioAtLeast(x) => Some(ratio >= x),
            Target::RatioBelow(x) => Some(ratio < x),
            Target::PrivmemAtLeast(x) => Some(privmem >= x),
            Target::PrivmemAtMost(x) => Some(privmem <= x),
            Target::Context => None,
        }
    }
}

/// One result line (workload.md "`privmem bench --json`").
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `bench` or `bench/variant`.
    pub name: String,
    /// Unit of `baseline` and `privmem`.
    pub unit: &'static str,
    /// Median of the baseline.
    pub baseline: f64,
    /// Median of privmem.
    pub privmem: f64,
    /// Median of the per-round ratios (privmem / baseline, or
    /// privmem's throughput / the baseline's for `parallel`).
    pub ratio: f64,
    /// The target, as text.
    pub target: String,
    /// How many times worse than the baseline privmem did, in the
    /// target's direction (below 1 = better); the regression guard fails
    /// the run above [`GUARD_FACTOR`]. `None` (null) for a context row
    /// ([`Target::Context`]), which the guard does not read.
    pub worse_than_baseline: Option<f64>,
    /// Whether the target is met; `None` (null) for a context row, which
    /// has no target.
    pub met: Option<bool>,
    /// What the baseline is.
    pub baseline_is: String,
    /// Rounds measured.
    pub rounds: usize,
    /// (max - min) / median of the baseline samples.
    pub baseline_spread: f64,
    /// (max - min) / median of the privmem samples.
    pub privmem_spread: f64,
    /// Every baseline sample, in round order.
    pub baseline_samples: Vec<f64>,
    /// Every privmem sample, in round order.
    pub privmem_samples: Vec<f64>,
    /// Further figures measured in the same rounds (e.g. a second baseline).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, f64>,
    /// Anything a reader needs to interpret the figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Paired samples of the two sides.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Baseline, one per round.
    pub base: Vec<f64>,
    /// privmem, one per round.
    pub privmem: Vec<f64>,
}

impl Samples {
    /// The median of the per-round ratios privmem / baseline.
    pub fn ratio(&self) -> f64 {
        let ratios: Vec<f64> = self
            .base
            .iter()
            .zip(&self.privmem)
            .map(|(&b, &p)| p / b)
            .collect();
        median(&ratios)
    }
}

/// The median of `v` (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// (max - min) / median.
pub fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let m = median(v);
    if m == 0.0 || v.is_empty() {
        0.0
    } else {
        (hi - lo) / m
    }
}

/// Which side a round step measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The baseline.
    Baseline,
    /// privmem.
    Privmem,
}

/// Builder for a [`Row`] from samples.
pub struct RowSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// Unit.
    pub unit: &'static str,
    /// Target.
    pub target: Target,
    /// What the baseline is.
    pub baseline_is: &'a str,
    /// Anything a reader needs to interpret the figures.
    pub note: Option<String>,
}

impl RowSpec<'_> {
    /// The row for `s`; `ratio` = median of per-round privmem / baseline.
    pub fn row(self, s: &Samples) -> Row {
        self.row_with_ratio(s, s.ratio())
    }

    /// The row for `s` with an explicitly computed ratio; the regression
    /// guard reads the same ratio.
    pub fn row_with_ratio(self, s: &Samples, ratio: f64) -> Row {
        self.row_guarded_by(s, ratio, ratio)
    }

    /// The row for `s` whose target reads `ratio` (a figure normalized by
    /// something else measured in the run, as `parallel`'s) while the
    /// regression guard reads `own`, privmem against its own same-run
    /// baseline: the guard asks whether privmem got slower than that
    /// baseline, which a normalization must not change.
    pub fn row_guarded_by(self, s: &Samples, ratio: f64, own: f64) -> Row {
        let privmem = median(&s.privmem);
        let mut worse = self.target.worse_by(own);
        if injected(&format!("regress:{}", self.name)) {
            worse = worse.map(|w| w * 1000.0);
        }
        Row {
            name: self.name.to_string(),
            unit: self.unit,
            baseline: median(&s.base),
            privmem,
            ratio,
            target: self.target.text(self.unit),
            worse_than_baseline: worse,
            met: self.target.met(privmem, ratio),
            baseline_is: self.baseline_is.to_string(),
            rounds: s.base.len().min(s.privmem.len()),
            baseline_spread: spread(&s.base),
            privmem_spread: spread(&s.privmem),
            baseline_samples: s.base.clone(),
            privmem_samples: s.privmem.clone(),
            context: BTreeMap::new(),
            note: self.note,
        }
    }
}
