//! Losses as Keras 3 computes them, each reduced to the mean over the batch
//! ("sum_over_batch_size"). The forward pass also forms the gradient with
//! respect to the prediction (it is as cheap as the loss), and the backward
//! rule scales it by the incoming gradient.
//!
//! With `from_logits = false`, predictions are probabilities: Keras divides
//! them by their sum and clips them to `[1e-7, 1 - 1e-7]`; a clipped value has
//! zero gradient, as in Keras.

use super::tape::{Backward, Gradients, Tape, Var};
use crate::backend::math;
use crate::error::{OpsError, Result};
use crate::tensor::{IntTensor, Tensor};

/// Keras's `backend.epsilon()`.
pub const EPSILON: f32 = 1e-7;

fn push_loss(tape: &mut Tape, pred: Var, loss: f64, grad: Vec<f32>) -> Result<Var> {
    Ok(tape.push(Tensor::scalar(loss as f32), Box::new(LossBackward { pred, grad })))
}

struct LossBackward {
    pred: Var,
    grad: Vec<f32>,
}

impl Backward for LossBackward {
    fn name(&self) -> &'static str {
        "loss"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.pred]
    }
    fn backward(&self, _tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let g = dy[0];
        if let Some(dp) = grads.slot(self.pred, self.grad.len()) {
            dp.iter_mut().zip(&self.grad).for_each(|(a, b)| *a += g * b);
        }
        Ok(())
    }
}

fn rows_of(tape: &Tape, pred: Var, op: &str) -> Result<(usize, usize)> {
    let s = tape.shape(pred);
    if s.len() < 2 {
        return Err(OpsError::shape(op, "predictions must be [batch, ..., classes]", &[s]));
    }
    let c = s[s.len() - 1];
    Ok((tape.value(pred).len() / c.max(1), c))
}

/// Log-probabilities of one row and the gradient of `-log p[label]` w.r.t. the row's input.
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

/// Sparse categorical cross-entropy: `pred [..., C]`, integer `labels [...]` in `[0, C)`.
pub fn sparse_categorical_crossentropy(
    tape: &mut Tape,
    pred: Var,
    labels: &IntTensor,
    from_logits: bool,
) -> Result<Var> {
    let (rows, c) = rows_of(tape, pred, "sparse_categorical_crossentropy")?;
    if labels.len() != rows {
        return Err(OpsError::shape(
            "sparse_categorical_crossentropy",
            "one label per prediction row",
            &[tape.shape(pred), labels.shape()],
        ));
    }
    let p = tape.value(pred).data();
    let mut grad = vec![0.0; rows * c];
    let mut total = 0.0;
    for (r, &label) in labels.data().iter().enumerate() {
        if label < 0 || label as usize >= c {
            return Err(OpsError::shape(
                "sparse_categorical_crossentropy",
                format!("label {label} at row {r} is outside [0, {c})"),
                &[tape.shape(pred), labels.shape()],
            ));
        }
        let l = label as usize;
        total += ce_row(
            &p[r * c..(r + 1) * c],
            from_logits,
            &mut |j| if j == l { 1.0 } else { 0.0 },
            &mut grad[r * c..(r + 1) * c],
        );
    }
    let inv = 1.0 / rows as f32;
    grad.iter_mut().for_each(|g| *g *= inv);
    push_loss(tape, pred, total / rows as f64, grad)
}

fn same_shape(tape: &Tape, pred: Var, target: &Tensor, op: &str) -> Result<()> {
    if tape.shape(pred) != target.shape() {
        return Err(OpsError::shape(
            op,
            "targets must have the predictions' shape",
            &[tape.shape(pred), target.shape()],
        ));
    }
    Ok(())
}

/// Categorical cross-entropy against dense (one-hot or soft) targets of the same shape.
pub fn categorical_crossentropy(tape: &mut Tape, pred: Var, target: &Tensor, from_logits: bool) -> Result<Var> {
    same_shape(tape, pred, target, "categorical_crossentropy")?;
    let (rows, c) = rows_of(tape, pred, "categorical_crossentropy")?;
    let p = tape.value(pred).data();
    let t = target.data();
    let mut grad = vec![0.0; rows * c];
    let mut total = 0.0;
    for r in 0..rows {
        let tr = &t[r * c..(r + 1) * c];
        total += ce_row(&p[r * c..(r + 1) * c], from_logits, &mut |j| tr[j], &mut grad[r * c..(r + 1) * c]);
    }
    let inv = 1.0 / rows as f32;
    grad.iter_mut().for_each(|g| *g *= inv);
    push_loss(tape, pred, total / rows as f64, grad)
}

/// Binary cross-entropy, averaged over the last axis and then the batch.
pub fn binary_crossentropy(tape: &mut Tape, pred: Var, target: &Tensor, from_logits: bool) -> Result<Var> {
    same_shape(tape, pred, target, "binary_crossentropy")?;
    let n = target.len();
    let p = tape.value(pred).data();
    let mut grad = vec![0.0; n];
    let mut total = 0.0f64;
    let inv = 1.0 / n as f32;
    for k in 0..n {
        let (x, t) = (p[k], target.data()[k]);
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
    push_loss(tape, pred, total / n as f64, grad)
}

/// Mean squared error over all elements (the last-axis mean, then the batch mean).
pub fn mean_squared_error(tape: &mut Tape, pred: Var, target: &Tensor) -> Result<Var> {
    same_shape(tape, pred, target, "mean_squared_error")?;
    let n = target.len();
    let p = tape.value(pred).data();
    let mut grad = vec![0.0; n];
    let mut total = 0.0f64;
    for k in 0..n {
        let d = p[k] - target.data()[k];
        total += (d as f64) * (d as f64);
        grad[k] = 2.0 * d / n as f32;
    }
    push_loss(tape, pred, total / n as f64, grad)
}
