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
use crate::backend::calls::{BatchNormCall, ChannelStats};
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
    let be = tape.backend();
    let training = matches!(stats, BatchNormStats::Batch);
    let (mut mean, mut inv_std, mut scale) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    let mut y = vec![0.0; xv.len()];
    // The batch's own moments (training), in f64.
    let (mut batch_mean, mut batch_var) = (vec![], vec![]);
    let channel_stats = match stats {
        BatchNormStats::Batch => {
            if xv.is_empty() {
                return Err(OpsError::shape("batch_norm", "batch statistics of an empty batch", &[&xs]));
            }
            (batch_mean, batch_var) = (vec![0f64; c], vec![0f64; c]);
            be.batch_norm(BatchNormCall::Moments { c, x: xv, mean: &mut batch_mean, variance: &mut batch_var })?;
            ChannelStats::Batch { mean: &batch_mean, variance: &batch_var }
        }
        BatchNormStats::Given { mean, variance } => {
            if tape.shape(mean) != [c] || tape.shape(variance) != [c] {
                return Err(OpsError::shape(
                    "batch_norm",
                    "moving mean and variance must be [channels]",
                    &[&xs, tape.shape(mean), tape.shape(variance)],
                ));
            }
            ChannelStats::Given { mean: tape.value(mean).data(), variance: tape.value(variance).data() }
        }
    };
    be.batch_norm(BatchNormCall::Normalize {
        x: xv,
        stats: channel_stats,
        epsilon,
        gamma: gamma.map(|v| tape.value(v).data()),
        beta: beta.map(|v| tape.value(v).data()),
        y: &mut y,
        mean: &mut mean,
        inv_std: &mut inv_std,
        scale: &mut scale,
    })?;
    let narrow = |v: &[f64]| v.iter().map(|v| *v as f32).collect();
    let moments = training.then(|| BatchMoments { mean: narrow(&batch_mean), variance: narrow(&batch_var) });
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
        let be = tape.backend();
        let want = |v: Option<Var>| v.is_some_and(|v| grads.wants(v));
        let mut dgamma = if want(self.gamma) { vec![0.0; c] } else { vec![] };
        let mut dbeta = if want(self.beta) { vec![0.0; c] } else { vec![] };
        let (mut mean_dy, mut mean_dy_xhat) = (vec![0.0; c], vec![0.0; c]);
        be.batch_norm(BatchNormCall::BackwardSums {
            x: xv,
            dy,
            mean: &self.mean,
            inv_std: &self.inv_std,
            dgamma: want(self.gamma).then_some(&mut dgamma[..]),
            dbeta: want(self.beta).then_some(&mut dbeta[..]),
            mean_dy: &mut mean_dy,
            mean_dy_xhat: &mut mean_dy_xhat,
        })?;
        if let (Some(b), true) = (self.beta, !dbeta.is_empty()) {
            grads.accumulate(b, tape.backend().adopt(dbeta)?)?;
        }
        if let (Some(g), true) = (self.gamma, !dgamma.is_empty()) {
            grads.accumulate(g, tape.backend().adopt(dgamma)?)?;
        }
        let Some(dx) = grads.slot(self.x, xv.len())? else { return Ok(()) };
        be.batch_norm(BatchNormCall::BackwardInput {
            x: xv,
            dy,
            mean: &self.mean,
            inv_std: &self.inv_std,
            scale: &self.scale,
            batch_means: self.training.then_some((&mean_dy[..], &mean_dy_xhat[..])),
            dx,
        })
    }
}
