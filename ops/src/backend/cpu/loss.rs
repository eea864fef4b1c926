//! The CPU's loss kernels, as Keras 3 computes each loss (see
//! [`crate::backend::calls::LossCall`]).

use super::super::calls::{LossCall, Targets};
use super::super::math;
use crate::error::{OpsError, Result};

/// Keras's `backend.epsilon()`.
const EPSILON: f32 = 1e-7;

pub(super) fn loss(call: LossCall<'_>) -> Result<f64> {
    match call {
        LossCall::CrossEntropy { pred, classes, target, from_logits, grad } => {
            cross_entropy(pred, classes, target, from_logits, grad)
        }
        LossCall::Binary { pred, target, from_logits, grad } => {
            check_lengths("binary_crossentropy", pred.len(), target.len(), grad.len())?;
            Ok(binary(pred, target, from_logits, grad))
        }
        LossCall::MeanSquared { pred, target, grad } => {
            check_lengths("mean_squared_error", pred.len(), target.len(), grad.len())?;
            Ok(mean_squared(pred, target, grad))
        }
    }
}

pub(in crate::backend) fn check_lengths(op: &str, pred: usize, target: usize, grad: usize) -> Result<()> {
    if pred != target || pred != grad {
        return Err(OpsError::shape(op, "predictions, targets and gradient differ in size", &[&[pred, target, grad]]));
    }
    Ok(())
}

fn cross_entropy(pred: &[f32], c: usize, target: Targets<'_>, from_logits: bool, grad: &mut [f32]) -> Result<f64> {
    const OP: &str = "categorical_crossentropy";
    super::super::check_rows(OP, pred.len(), c)?;
    let rows = pred.len() / c;
    let targets = match target {
        Targets::Sparse(labels) => labels.len(),
        Targets::Dense(t) => t.len() / c,
    };
    if grad.len() != pred.len() || targets != rows {
        return Err(OpsError::shape(OP, "one target per prediction row", &[&[rows, c], &[targets], &[grad.len()]]));
    }
    let mut total = 0.0;
    for r in 0..rows {
        let (p, g) = (&pred[r * c..(r + 1) * c], &mut grad[r * c..(r + 1) * c]);
        total += match target {
            Targets::Sparse(labels) => {
                let label = labels[r];
                if label < 0 || label as usize >= c {
                    return Err(OpsError::shape(OP, format!("label {label} at row {r} is outside [0, {c})"), &[&[c]]));
                }
                let l = label as usize;
                ce_row(p, from_logits, &mut |j| if j == l { 1.0 } else { 0.0 }, g)
            }
            Targets::Dense(t) => {
                let tr = &t[r * c..(r + 1) * c];
                ce_row(p, from_logits, &mut |j| tr[j], g)
            }
        };
    }
    let inv = 1.0 / rows as f32;
    grad.iter_mut().for_each(|g| *g *= inv);
    Ok(total / rows as f64)
}

/// The loss of one row, `-Σ t_j log p_j`, and its gradient w.r.t. the row.
fn ce_row(row: &[f32], from_logits: bool, target: &mut dyn FnMut(usize) -> f32, grad: &mut [f32]) -> f64 {
    let c = row.len();
    let mut loss = 0.0f64;
    if from_logits {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| math::exp(v - max) as f64).sum();
        let lse = max as f64 + sum.ln();
        let tsum: f32 = (0..c).map(&mut *target).sum();
        for j in 0..c {
            let t = target(j);
            let logp = row[j] as f64 - lse;
            loss -= t as f64 * logp;
            grad[j] = tsum * logp.exp() as f32 - t;
        }
    } else {
        let s: f32 = row.iter().sum();
        let mut dsum = 0.0f32;
        for j in 0..c {
            let t = target(j);
            let p = row[j] / s;
            let pc = p.clamp(EPSILON, 1.0 - EPSILON);
            loss -= t as f64 * (pc as f64).ln();
            // d(-t log(y_j / s)) / dy_j = -t / y_j (when unclipped); the 1/s part is below.
            let unclipped = p == pc;
            grad[j] = if unclipped && t != 0.0 { -t / row[j] } else { 0.0 };
            if unclipped {
                dsum += t;
            }
        }
        // d(-t_j log(y_j / s)) / dy_k gets + t_j / s for every k through s.
        grad.iter_mut().for_each(|g| *g += dsum / s);
    }
    loss
}

fn binary(p: &[f32], target: &[f32], from_logits: bool, grad: &mut [f32]) -> f64 {
    let n = target.len();
    let mut total = 0.0f64;
    let inv = 1.0 / n as f32;
    for k in 0..n {
        let (x, t) = (p[k], target[k]);
        if from_logits {
            // -t log σ(x) - (1-t) log σ(-x) = softplus(x) - t x, stable form.
            total += (x.max(0.0) - x * t + (1.0 + math::exp(-x.abs())).ln()) as f64;
            grad[k] = (math::sigmoid(x) - t) * inv;
        } else {
            let pc = x.clamp(EPSILON, 1.0 - EPSILON);
            total -= (t as f64) * (pc as f64).ln() + (1.0 - t as f64) * (1.0 - pc as f64).ln();
            grad[k] = if pc == x { (-t / pc + (1.0 - t) / (1.0 - pc)) * inv } else { 0.0 };
        }
    }
    total / n as f64
}

fn mean_squared(p: &[f32], target: &[f32], grad: &mut [f32]) -> f64 {
    let n = target.len();
    let mut total = 0.0f64;
    for k in 0..n {
        let d = p[k] - target[k];
        total += (d as f64) * (d as f64);
        grad[k] = 2.0 * d / n as f32;
    }
    total / n as f64
}
