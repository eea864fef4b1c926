//! The op families beyond products and activations, each against an f64
//! oracle written here from the op's formula (not from the CPU kernel's
//! code); the adjoints (col2im, pooling and depthwise backward) against the
//! identity `<A x, y> = <x, Aᵀ y>`. Each `check` returns every failure as text.

pub mod conv_pool;
pub mod elementwise;
pub mod loss;
pub mod norm;
pub mod optimizer;
pub mod recurrent;

use kallista_ops::backend::Backend;
use kallista_ops::init::Rng;

pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| scale * rng.normal()).collect()
}

pub fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Failures of one backend, with the first few mismatches of each case.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    /// Each `got[i]` must be within `tol` of `want[i]`, relative to `max(|want[i]|, scale)`.
    pub fn compare(&mut self, case: &str, got: &[f32], want: &[f64], scale: f64, tol: f64) {
        if got.len() != want.len() {
            self.0.push(format!("{case}: {} values, want {}", got.len(), want.len()));
            return;
        }
        let mut shown = 0;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = g.is_finite() && (g as f64 - w).abs() <= tol * w.abs().max(scale) + 1e-6;
            if !ok && shown < 3 {
                self.0.push(format!("{case}: [{i}] = {g}, want {w}"));
                shown += 1;
            }
        }
    }

    /// A kernel call that must succeed.
    pub fn ok<T>(&mut self, case: &str, r: kallista_ops::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{case}: {e}"));
                None
            }
        }
    }

    /// A kernel call that must be refused with a typed error.
    pub fn refused<T>(&mut self, case: &str, r: kallista_ops::Result<T>) {
        if r.is_ok() {
            self.0.push(format!("{case}: accepted"));
        }
    }
}

/// Every family on `be`.
pub fn check_families(be: &dyn Backend) -> Vec<String> {
    let mut f = Failures::default();
    elementwise::check(be, &mut f);
    loss::check(be, &mut f);
    recurrent::check(be, &mut f);
    conv_pool::check(be, &mut f);
    norm::check(be, &mut f);
    optimizer::check(be, &mut f);
    f.0
}

/// `Σ a_i b_i` in f64.
pub fn inner(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
