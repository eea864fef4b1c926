//! Losses as Keras 3 computes them, each reduced to the mean over the batch
//! ("sum_over_batch_size"). The forward pass also forms the gradient with
//! respect to the prediction (it is as cheap as the loss), and the backward
//! rule scales it by the incoming gradient.
//!
//! With `from_logits = false`, predictions are probabilities: Keras divides
//! them by their sum and clips them to `[1e-7, 1 - 1e-7]`; a clipped value has
//! zero gradient, as in Keras.

use super::tape::{Backward, Gradients, Tape, Var};
use crate::backend::calls::{Elementwise, LossCall, Targets};
use crate::backend::Backend;
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::tensor::{IntTensor, Tensor};

/// Runs a loss kernel (`call`, given the tape's backend, the predictions and
/// a gradient buffer) and records the loss and gradient.
fn push_loss(
    tape: &mut Tape,
    pred: Var,
    call: impl FnOnce(&dyn Backend, &[f32], &mut [f32]) -> Result<f64>,
) -> Result<Var> {
    let mut grad = tape.backend().zeros(tape.value(pred).len())?;
    let loss = call(tape.backend(), tape.value(pred).data(), &mut grad)?;
    Ok(tape.push(Tensor::scalar(loss as f32), Box::new(LossBackward { pred, grad })))
}

struct LossBackward {
    pred: Var,
    grad: Buf,
}

impl Backward for LossBackward {
    fn name(&self) -> &'static str {
        "loss"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.pred]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if let Some(dp) = grads.slot(self.pred, self.grad.len())? {
            let call = Elementwise::AddScaled { x: &self.grad, scale: dy[0], out: dp };
            tape.backend().elementwise(call)?;
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

/// Sparse categorical cross-entropy: `pred [..., C]`, integer `labels [...]` in `[0, C)`.
pub fn sparse_categorical_crossentropy(
    tape: &mut Tape,
    pred: Var,
    labels: &IntTensor,
    from_logits: bool,
) -> Result<Var> {
    const OP: &str = "sparse_categorical_crossentropy";
    let (rows, c) = rows_of(tape, pred, OP)?;
    if labels.len() != rows {
        return Err(OpsError::shape(OP, "one label per prediction row", &[tape.shape(pred), labels.shape()]));
    }
    if let Some(r) = labels.data().iter().position(|&l| l < 0 || l as usize >= c) {
        let label = labels.data()[r];
        return Err(OpsError::shape(
            OP,
            format!("label {label} at row {r} is outside [0, {c})"),
            &[tape.shape(pred), labels.shape()],
        ));
    }
    push_loss(tape, pred, |be, pred, grad| {
        let target = Targets::Sparse(labels.data());
        be.loss(LossCall::CrossEntropy { pred, classes: c, target, from_logits, grad })
    })
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
    let (_, c) = rows_of(tape, pred, "categorical_crossentropy")?;
    push_loss(tape, pred, |be, pred, grad| {
        let target = Targets::Dense(target.data());
        be.loss(LossCall::CrossEntropy { pred, classes: c, target, from_logits, grad })
    })
}

/// Binary cross-entropy, averaged over the last axis and then the batch.
pub fn binary_crossentropy(tape: &mut Tape, pred: Var, target: &Tensor, from_logits: bool) -> Result<Var> {
    same_shape(tape, pred, target, "binary_crossentropy")?;
    push_loss(tape, pred, |be, pred, grad| be.loss(LossCall::Binary { pred, target: target.data(), from_logits, grad }))
}

/// Mean squared error over all elements (the last-axis mean, then the batch mean).
pub fn mean_squared_error(tape: &mut Tape, pred: Var, target: &Tensor) -> Result<Var> {
    same_shape(tape, pred, target, "mean_squared_error")?;
    push_loss(tape, pred, |be, pred, grad| be.loss(LossCall::MeanSquared { pred, target: target.data(), grad }))
}
