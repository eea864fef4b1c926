//! Seeded weight initialisers with Keras names and formulas.
//!
//! Every random draw in Kallista goes through [`Rng`] (ChaCha8), so the same
//! seed gives the same weights on every machine.

use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seeded random source of initialisers and dropout.
#[derive(Clone, Debug)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.0.gen::<f32>()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1: f64 = self.0.gen::<f64>().max(1e-300);
        let u2: f64 = self.0.gen::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.gen_range(0..n)
    }

    /// A fresh 64-bit seed (to derive per-layer generators).
    pub fn next_seed(&mut self) -> u64 {
        self.0.gen()
    }
}

/// A Keras initialiser.
#[derive(Clone, Debug, PartialEq)]
pub enum Initializer {
    Zeros,
    Ones,
    /// U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)).
    GlorotUniform,
    /// Keras `orthogonal` (gain 1).
    Orthogonal,
    /// U(minval, maxval); Keras's Embedding default is (-0.05, 0.05).
    RandomUniform(f32, f32),
    /// LSTM bias `[4u]`: zeros, except ones on the forget gate `[u, 2u)` (Keras `unit_forget_bias`).
    UnitForgetBias,
}

impl Initializer {
    /// Parses a Keras initialiser name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "zeros" => Initializer::Zeros,
            "ones" => Initializer::Ones,
            "glorot_uniform" => Initializer::GlorotUniform,
            "orthogonal" => Initializer::Orthogonal,
            "uniform" | "random_uniform" => Initializer::RandomUniform(-0.05, 0.05),
            other => return Err(OpsError::Config(format!("unknown initializer '{other}'"))),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Initializer::Zeros => "zeros",
            Initializer::Ones => "ones",
            Initializer::GlorotUniform => "glorot_uniform",
            Initializer::Orthogonal => "orthogonal",
            Initializer::RandomUniform(..) => "random_uniform",
            Initializer::UnitForgetBias => "zeros",
        }
    }

    /// A tensor of `shape` drawn from this initialiser.
    pub fn init(&self, shape: &[usize], rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        match self {
            Initializer::Zeros => Tensor::zeros(shape),
            Initializer::Ones => Tensor::full(shape, 1.0),
            Initializer::RandomUniform(lo, hi) => uniform(shape, *lo, *hi, rng),
            Initializer::UnitForgetBias => {
                let u = n / 4;
                Tensor::new(shape, (0..n).map(|i| if (u..2 * u).contains(&i) { 1.0 } else { 0.0 }).collect())
                    .expect("sizes match")
            }
            Initializer::GlorotUniform => {
                let (fan_in, fan_out) = fans(shape);
                let limit = (6.0 / (fan_in + fan_out).max(1.0)).sqrt();
                uniform(shape, -limit, limit, rng)
            }
            Initializer::Orthogonal => {
                let cols = *shape.last().unwrap_or(&1);
                let rows = n / cols.max(1);
                Tensor::new(shape, orthogonal(rows, cols, rng)).expect("sizes match")
            }
        }
    }
}

fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.uniform(lo, hi)).collect()).expect("sizes match")
}

/// Keras's fan computation: dense `[in, out]`; conv `[kh, kw, in, out]` scales by the receptive field.
fn fans(shape: &[usize]) -> (f32, f32) {
    match shape.len() {
        0 => (1.0, 1.0),
        1 => (shape[0] as f32, shape[0] as f32),
        2 => (shape[0] as f32, shape[1] as f32),
        _ => {
            let rf: usize = shape[..shape.len() - 2].iter().product();
            ((shape[shape.len() - 2] * rf) as f32, (shape[shape.len() - 1] * rf) as f32)
        }
    }
}

/// A `rows x cols` matrix with orthonormal rows or columns (whichever are fewer),
/// as Keras: QR of a Gaussian matrix, signs fixed by the diagonal of R.
fn orthogonal(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let (tall, short) = (rows.max(cols), rows.min(cols));
    // Gaussian tall x short matrix, column-major for Gram-Schmidt.
    let mut q: Vec<Vec<f64>> = (0..short).map(|_| (0..tall).map(|_| rng.normal() as f64).collect()).collect();
    for j in 0..short {
        for p in 0..j {
            let (done, rest) = q.split_at_mut(j);
            let dot: f64 = done[p].iter().zip(&rest[0]).map(|(a, b)| a * b).sum();
            rest[0].iter_mut().zip(&done[p]).for_each(|(v, d)| *v -= dot * d);
        }
        let norm = q[j].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        // R's diagonal is `norm` > 0 here, so Keras's sign fix leaves Q as is.
        q[j].iter_mut().for_each(|v| *v /= norm);
    }
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            // Q is tall x short; Keras transposes it when rows < cols.
            out[r * cols + c] = if rows >= cols { q[c][r] } else { q[r][c] } as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights() {
        let a = Initializer::GlorotUniform.init(&[5, 7], &mut Rng::new(3));
        let b = Initializer::GlorotUniform.init(&[5, 7], &mut Rng::new(3));
        let c = Initializer::GlorotUniform.init(&[5, 7], &mut Rng::new(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let limit = (6.0f32 / 12.0).sqrt();
        assert!(a.data().iter().all(|v| v.abs() <= limit));
    }

    #[test]
    fn orthogonal_rows_are_orthonormal_for_wide_matrices() {
        let (r, c) = (8, 32);
        let w = Initializer::Orthogonal.init(&[r, c], &mut Rng::new(1));
        let d = w.data();
        for i in 0..r {
            for j in 0..r {
                let dot: f32 = (0..c).map(|k| d[i * c + k] * d[j * c + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "({i},{j}) = {dot}");
            }
        }
    }
}
