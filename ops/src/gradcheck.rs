//! Finite-difference gradient checks: the oracle every backward rule is tested
//! against.
//!
//! [`GradCheck::check`] builds a scalar `L = sum(f(inputs) * R)` with a fixed random `R`,
//! takes its gradient through the tape, and compares a sample of elements of
//! each input's gradient with central differences computed in f64 from f32
//! evaluations.

use crate::autodiff::{weighted_sum, Tape, Var};
use crate::error::Result;
use crate::init::Rng;
use crate::tensor::Tensor;

/// Settings of a check.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f32,
    /// Allowed |analytic - numeric| <= atol + rtol * |numeric|.
    pub atol: f32,
    pub rtol: f32,
    /// Elements checked per input (all when the input is smaller).
    pub samples_per_input: usize,
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-2, atol: 2e-3, rtol: 2e-2, samples_per_input: 24, seed: 7 }
    }
}

/// The worst element found by a check.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// (input index, element index, analytic, numeric) of every failing element.
    pub failures: Vec<(usize, usize, f32, f32)>,
    /// Number of elements compared.
    pub checked: usize,
    /// Largest |analytic - numeric| seen.
    pub max_abs_err: f32,
    /// The analytic gradients that were compared, per input.
    pub analytic: Vec<Vec<f32>>,
    /// The projection `R` of the scalar `sum(f(x) * R)`.
    pub proj: Tensor,
}

impl GradCheckReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.checked > 0
    }
}

impl GradCheck {
    /// Checks `f`'s gradient with respect to every tensor in `inputs`.
    /// `f` must be deterministic (no dropout sampling inside).
    pub fn check<F>(&self, inputs: &[Tensor], f: F) -> Result<GradCheckReport>
    where
        F: Fn(&mut Tape, &[Var]) -> Result<Var>,
    {
        let mut rng = Rng::new(self.seed);
        // The projection R, fixed from one forward pass.
        let mut tape = Tape::new();
        let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone(), true)).collect();
        let out = f(&mut tape, &vars)?;
        let proj = Tensor::new(tape.shape(out), (0..tape.value(out).len()).map(|_| rng.uniform(-1.0, 1.0)).collect())?;
        let loss = weighted_sum(&mut tape, out, proj.clone())?;
        let grads = tape.backward(loss)?;
        let analytic: Vec<Vec<f32>> = vars
            .iter()
            .zip(inputs)
            .map(|(v, t)| grads.get(*v).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; t.len()]))
            .collect();
        self.compare(inputs, &analytic, &proj, &f)
    }

    /// Compares given analytic gradients with finite differences (exposed so a test can
    /// show that a wrong gradient is caught).
    pub fn compare<F>(&self, inputs: &[Tensor], analytic: &[Vec<f32>], proj: &Tensor, f: &F) -> Result<GradCheckReport>
    where
        F: Fn(&mut Tape, &[Var]) -> Result<Var>,
    {
        let eval = |ins: &[Tensor]| -> Result<f64> {
            let mut tape = Tape::new();
            let vars: Vec<Var> = ins.iter().map(|t| tape.leaf(t.clone(), false)).collect();
            let out = f(&mut tape, &vars)?;
            Ok(tape.value(out).data().iter().zip(proj.data()).map(|(a, b)| *a as f64 * *b as f64).sum())
        };
        // The same element picks for every comparison with this seed.
        let mut rng = Rng::new(self.seed ^ 0x5eed);
        let mut report = GradCheckReport {
            failures: vec![],
            checked: 0,
            max_abs_err: 0.0,
            analytic: analytic.to_vec(),
            proj: proj.clone(),
        };
        for (idx, input) in inputs.iter().enumerate() {
            let n = input.len();
            let picks: Vec<usize> = if n <= self.samples_per_input {
                (0..n).collect()
            } else {
                (0..self.samples_per_input).map(|_| rng.below(n)).collect()
            };
            for k in picks {
                let mut work = inputs.to_vec();
                let orig = input.data()[k];
                work[idx].data_mut()[k] = orig + self.eps;
                let plus = eval(&work)?;
                work[idx].data_mut()[k] = orig - self.eps;
                let minus = eval(&work)?;
                let numeric = ((plus - minus) / (2.0 * self.eps as f64)) as f32;
                let a = analytic[idx][k];
                let err = (a - numeric).abs();
                report.max_abs_err = report.max_abs_err.max(err);
                report.checked += 1;
                if err > self.atol + self.rtol * numeric.abs() {
                    report.failures.push((idx, k, a, numeric));
                }
            }
        }
        Ok(report)
    }
}
