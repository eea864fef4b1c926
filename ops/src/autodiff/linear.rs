//! Affine and elementwise ops: `dense` (x·kernel + bias), `add`, `dropout`,
//! and `weighted_sum` (the scalar projection gradient checks use).

use super::tape::{Backward, Gradients, Tape, Var};
use crate::backend::{calls::Elementwise, MatMut, MatRef};
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// `x · kernel + bias` over the last axis: x `[..., in]`, kernel `[in, out]`, bias `[out]`.
pub fn dense(tape: &mut Tape, x: Var, kernel: Var, bias: Option<Var>) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let ks = tape.shape(kernel).to_vec();
    let inp = *xs.last().unwrap_or(&0);
    if ks.len() != 2 || ks[0] != inp || xs.is_empty() {
        return Err(OpsError::shape("dense", "x [..., in] against kernel [in, out]", &[&xs, &ks]));
    }
    let out = ks[1];
    if let Some(b) = bias {
        if tape.shape(b) != [out] {
            return Err(OpsError::shape("dense", "bias must be [out]", &[&ks, tape.shape(b)]));
        }
    }
    let rows = tape.value(x).len() / inp.max(1);
    let mut y = match bias {
        Some(b) => tape.backend().rows_of(tape.value(b).data(), rows)?,
        None => tape.backend().zeros(rows * out)?,
    };
    tape.backend().matmul(
        MatRef::dense(tape.value(x).data(), rows, inp),
        MatRef::dense(tape.value(kernel).data(), inp, out),
        MatMut::dense(&mut y, rows, out),
        bias.is_some(),
    )?;
    let mut ys = xs.clone();
    *ys.last_mut().expect("non-empty") = out;
    Ok(tape.push(Tensor::from_buf(&ys, y)?, Box::new(DenseBackward { x, kernel, bias, rows, inp, out })))
}

struct DenseBackward {
    x: Var,
    kernel: Var,
    bias: Option<Var>,
    rows: usize,
    inp: usize,
    out: usize,
}

impl Backward for DenseBackward {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x, self.kernel];
        v.extend(self.bias);
        v
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let (rows, inp, out) = (self.rows, self.inp, self.out);
        let dy_m = MatRef::dense(dy, rows, out);
        if let Some(dx) = grads.slot(self.x, rows * inp)? {
            // dX = dY · K^T
            let k = MatRef::dense(tape.value(self.kernel).data(), inp, out).t();
            tape.backend().matmul(dy_m, k, MatMut::dense(dx, rows, inp), true)?;
        }
        if let Some(dk) = grads.slot(self.kernel, inp * out)? {
            // dK = X^T · dY
            let x = MatRef::dense(tape.value(self.x).data(), rows, inp).t();
            tape.backend().matmul(x, dy_m, MatMut::dense(dk, inp, out), true)?;
        }
        if let Some(b) = self.bias {
            if let Some(db) = grads.slot(b, out)? {
                tape.backend().sum_rows(dy, out, db)?;
            }
        }
        Ok(())
    }
}

/// Elementwise `a + b` (same shapes).
pub fn add(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    if tape.shape(a) != tape.shape(b) {
        return Err(OpsError::shape("add", "operands must have the same shape", &[tape.shape(a), tape.shape(b)]));
    }
    let mut y = tape.backend().zeros(tape.value(a).len())?;
    tape.backend().elementwise(Elementwise::Add { a: tape.value(a).data(), b: tape.value(b).data(), out: &mut y })?;
    let shape = tape.shape(a).to_vec();
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(AddBackward { a, b })))
}

struct AddBackward {
    a: Var,
    b: Var,
}

impl Backward for AddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.a, self.b]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.a, tape.backend().buf_from(dy)?)?;
        grads.accumulate(self.b, tape.backend().buf_from(dy)?)?;
        Ok(())
    }
}

/// Multiplies `x` by a fixed `keep` mask already scaled by `1 / (1 - rate)` (inverted dropout).
pub fn dropout(tape: &mut Tape, x: Var, scale: Arc<Vec<f32>>) -> Result<Var> {
    if scale.len() != tape.value(x).len() {
        return Err(OpsError::shape("dropout", "mask size differs from input", &[tape.shape(x), &[scale.len()]]));
    }
    let mut y = tape.backend().zeros(scale.len())?;
    let call = Elementwise::Mul { a: tape.value(x).data(), b: &scale, out: &mut y, accumulate: false };
    tape.backend().elementwise(call)?;
    let shape = tape.shape(x).to_vec();
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(DropoutBackward { x, scale })))
}

struct DropoutBackward {
    x: Var,
    scale: Arc<Vec<f32>>,
}

impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if let Some(dx) = grads.slot(self.x, dy.len())? {
            tape.backend().elementwise(Elementwise::Mul { a: dy, b: &self.scale, out: dx, accumulate: true })?;
        }
        Ok(())
    }
}

/// `sum(x * w)` for a fixed tensor `w`: a scalar whose gradient w.r.t. `x` is `w`.
pub fn weighted_sum(tape: &mut Tape, x: Var, w: Tensor) -> Result<Var> {
    if tape.shape(x) != w.shape() {
        return Err(OpsError::shape("weighted_sum", "weights must match x", &[tape.shape(x), w.shape()]));
    }
    let s = tape.backend().dot(tape.value(x).data(), w.data())?;
    Ok(tape.push(Tensor::scalar(s as f32), Box::new(WeightedSumBackward { x, w })))
}

struct WeightedSumBackward {
    x: Var,
    w: Tensor,
}

impl Backward for WeightedSumBackward {
    fn name(&self) -> &'static str {
        "weighted_sum"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if let Some(dx) = grads.slot(self.x, self.w.len())? {
            let call = Elementwise::AddScaled { x: self.w.data(), scale: dy[0], out: dx };
            tape.backend().elementwise(call)?;
        }
        Ok(())
    }
}

/// `x * scale + offset` elementwise with scalar constants (Keras `Rescaling`).
pub fn scale_shift(tape: &mut Tape, x: Var, scale: f32, offset: f32) -> Result<Var> {
    let mut y = tape.backend().zeros(tape.value(x).len())?;
    let call = Elementwise::ScaleShift { x: tape.value(x).data(), scale, offset, out: &mut y };
    tape.backend().elementwise(call)?;
    let shape = tape.shape(x).to_vec();
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(ScaleShiftBackward { x, scale })))
}

struct ScaleShiftBackward {
    x: Var,
    scale: f32,
}

impl Backward for ScaleShiftBackward {
    fn name(&self) -> &'static str {
        "scale_shift"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if let Some(dx) = grads.slot(self.x, dy.len())? {
            let call = Elementwise::AddScaled { x: dy, scale: self.scale, out: dx };
            tape.backend().elementwise(call)?;
        }
        Ok(())
    }
}
