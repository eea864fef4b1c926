//! Elementwise activations (and row softmax) with their derivative.

use super::tape::{Backward, Gradients, Tape, Var};
use crate::backend::Activation;
use crate::error::Result;
use crate::tensor::Tensor;

/// `act(x)`; softmax runs over the last axis.
pub fn activation(tape: &mut Tape, x: Var, act: Activation) -> Result<Var> {
    if act == Activation::Linear {
        return Ok(x);
    }
    let xv = tape.value(x).clone();
    let cols = *xv.shape().last().unwrap_or(&1);
    let mut y = tape.backend().buf_from(xv.data())?;
    tape.backend().activation_forward(act, &mut y, cols.max(1))?;
    let shape = xv.shape().to_vec();
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(ActivationBackward { x, act, cols: cols.max(1) })))
}

struct ActivationBackward {
    x: Var,
    act: Activation,
    cols: usize,
}

impl Backward for ActivationBackward {
    fn name(&self) -> &'static str {
        "activation"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if !grads.wants(self.x) {
            return Ok(());
        }
        let mut g = tape.backend().buf_from(dy)?;
        tape.backend().activation_backward(
            self.act,
            tape.value(self.x).data(),
            tape.value(out).data(),
            &mut g,
            self.cols,
        )?;
        grads.accumulate(self.x, g)
    }
}
