//! Batch normalisation over the last (channel) axis (Keras
//! `BatchNormalization(axis=-1)`): `y = gamma * (x - mean) / sqrt(var + eps) + beta`.
//!
//! In training mode `mean` and `var` are the statistics of this batch over
//! every axis but the last (the biased variance, dividing by the number of
//! values, as Keras normalises and updates its moving variance with), and the
//! backward pass goes through them:
//! `dx = gamma / sqrt(var + eps) * (dy - mean(dy) - x̂ · mean(dy · x̂))`.
//! In inference mode they are given (the moving statistics) and are constants.
//! Sums run in f64 so that large batches of images lose no precision.

use super::tape::{Backward, Gradients, Tape, Var};
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;

/// Which statistics normalise the input.
#[derive(Clone, Copy, Debug)]
pub enum BatchNormStats {
    /// This batch's mean and biased variance (training).
    Batch,
    /// Fixed `[C]` mean and variance vars (inference on the moving statistics).
    Given { mean: Var, variance: Var },
}

/// Per-channel statistics of a batch (training mode), for the moving-average update.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMoments {
    pub mean: Vec<f32>,
    /// Biased: divided by the number of values per channel.
    pub variance: Vec<f32>,
}

/// Normalises `x [..., C]` per channel; returns the output and, for [`BatchNormStats::Batch`],
/// the batch moments. `gamma` and `beta` are `[C]` (absent: 1 and 0).
pub fn batch_norm(
    tape: &mut Tape,
    x: Var,
    gamma: Option<Var>,
    beta: Option<Var>,
    stats: BatchNormStats,
    epsilon: f32,
) -> Result<(Var, Option<BatchMoments>)> {
    let xs = tape.shape(x).to_vec();
    let c = *xs.last().unwrap_or(&0);
    if xs.len() < 2 || c == 0 {
        return Err(OpsError::shape("batch_norm", "input must be [batch, ..., channels]", &[&xs]));
    }
    for v in [gamma, beta].into_iter().flatten() {
        if tape.shape(v) != [c] {
            return Err(OpsError::shape("batch_norm", "gamma and beta must be [channels]", &[&xs, tape.shape(v)]));
        }
    }
    let xv = tape.value(x).data();
    let rows = xv.len() / c;
    let (mean, var, moments) = match stats {
        BatchNormStats::Batch => {
            if rows == 0 {
                return Err(OpsError::shape("batch_norm", "batch statistics of an empty batch", &[&xs]));
            }
            let mut sum = vec![0f64; c];
            for r in xv.chunks_exact(c) {
                sum.iter_mut().zip(r).for_each(|(s, v)| *s += *v as f64);
            }
            let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
            let mut sq = vec![0f64; c];
            for r in xv.chunks_exact(c) {
                sq.iter_mut().zip(r).zip(&mean).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2));
            }
            let var: Vec<f64> = sq.iter().map(|s| s / rows as f64).collect();
            let moments = BatchMoments {
                mean: mean.iter().map(|v| *v as f32).collect(),
                variance: var.iter().map(|v| *v as f32).collect(),
            };
            (mean, var, Some(moments))
        }
        BatchNormStats::Given { mean, variance } => {
            if tape.shape(mean) != [c] || tape.shape(variance) != [c] {
                return Err(OpsError::shape(
                    "batch_norm",
                    "moving mean and variance must be [channels]",
                    &[&xs, tape.shape(mean), tape.shape(variance)],
                ));
            }
            let m = tape.value(mean).data().iter().map(|v| *v as f64).collect();
            let v = tape.value(variance).data().iter().map(|v| *v as f64).collect();
            (m, v, None)
        }
    };
    let inv_std: Vec<f32> = var.iter().map(|v| (1.0 / (v + epsilon as f64).sqrt()) as f32).collect();
    let mean: Vec<f32> = mean.iter().map(|v| *v as f32).collect();
    let g: Vec<f32> = gamma.map_or(vec![1.0; c], |v| tape.value(v).data().to_vec());
    let b: Vec<f32> = beta.map_or(vec![0.0; c], |v| tape.value(v).data().to_vec());
    // y = x * scale + shift with scale = gamma * inv_std, shift = beta - mean * scale.
    let scale: Vec<f32> = g.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let shift: Vec<f32> = b.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    let mut y = vec![0.0; xv.len()];
    for (yr, xr) in y.chunks_exact_mut(c).zip(xv.chunks_exact(c)) {
        for (((o, v), s), t) in yr.iter_mut().zip(xr).zip(&scale).zip(&shift) {
            *o = v * s + t;
        }
    }
    let training = matches!(stats, BatchNormStats::Batch);
    let rule = BatchNormBackward { x, gamma, beta, mean, inv_std, scale, training };
    Ok((tape.push(Tensor::new(&xs, y)?, Box::new(rule)), moments))
}

struct BatchNormBackward {
    x: Var,
    gamma: Option<Var>,
    beta: Option<Var>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// gamma * inv_std.
    scale: Vec<f32>,
    training: bool,
}

impl Backward for BatchNormBackward {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x];
        v.extend(self.gamma);
        v.extend(self.beta);
        v
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let xv = tape.value(self.x).data();
        let c = self.mean.len();
        let rows = xv.len() / c;
        // Per channel: sum(dy) and sum(dy * x̂).
        let mut sum_dy = vec![0f64; c];
        let mut sum_dy_xhat = vec![0f64; c];
        for (g, xr) in dy.chunks_exact(c).zip(xv.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (xr[ch] - self.mean[ch]) * self.inv_std[ch];
                sum_dy[ch] += g[ch] as f64;
                sum_dy_xhat[ch] += (g[ch] * xhat) as f64;
            }
        }
        if let Some(b) = self.beta {
            if let Some(db) = grads.slot(b, c) {
                db.iter_mut().zip(&sum_dy).for_each(|(d, s)| *d += *s as f32);
            }
        }
        if let Some(gm) = self.gamma {
            if let Some(dg) = grads.slot(gm, c) {
                dg.iter_mut().zip(&sum_dy_xhat).for_each(|(d, s)| *d += *s as f32);
            }
        }
        let Some(dx) = grads.slot(self.x, xv.len()) else { return Ok(()) };
        if !self.training {
            for (d, g) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)) {
                d.iter_mut().zip(g).zip(&self.scale).for_each(|((d, g), s)| *d += g * s);
            }
            return Ok(());
        }
        let mean_dy: Vec<f32> = sum_dy.iter().map(|s| (s / rows as f64) as f32).collect();
        let mean_dy_xhat: Vec<f32> = sum_dy_xhat.iter().map(|s| (s / rows as f64) as f32).collect();
        for ((d, g), xr) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(xv.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (xr[ch] - self.mean[ch]) * self.inv_std[ch];
                d[ch] += self.scale[ch] * (g[ch] - mean_dy[ch] - xhat * mean_dy_xhat[ch]);
            }
        }
        Ok(())
    }
}
