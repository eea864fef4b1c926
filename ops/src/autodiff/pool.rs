//! Pooling on NHWC tensors: windowed max and average (Keras `MaxPooling2D`,
//! `AveragePooling2D`) and global max and average over height and width.
//!
//! With `'same'` padding the padded cells are ignored, as in TensorFlow: a
//! max never picks them and an average divides by the number of valid cells
//! of its window only. Max pooling sends the gradient to the first maximal
//! cell of each window (the one the forward pass picked).

use super::tape::{Backward, Gradients, Tape, Var};
use super::window::{nhwc, Padding, Window2d};
use crate::backend::calls::PoolCall;
use crate::error::Result;
use crate::tensor::Tensor;

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average,
}

/// Windowed pooling: x `[N, H, W, C]` -> `[N, OH, OW, C]`.
pub fn pool2d(
    tape: &mut Tape,
    x: Var,
    kind: PoolKind,
    pool: (usize, usize),
    strides: (usize, usize),
    padding: Padding,
) -> Result<Var> {
    let op = match kind {
        PoolKind::Max => "max_pool2d",
        PoolKind::Average => "avg_pool2d",
    };
    let (n, h, w, c) = nhwc(op, tape.shape(x))?;
    let win = Window2d::new(op, (h, w), pool, strides, (1, 1), padding)?;
    let xv = tape.value(x).data();
    let out_px = win.out_h * win.out_w;
    let mut y = vec![0.0; n * out_px * c];
    // Max: the flat input index chosen for each output; average: 1 / valid cells per output pixel.
    let mut argmax = vec![];
    let mut inv_count = vec![];
    let be = tape.backend();
    match kind {
        PoolKind::Max => {
            argmax = vec![0usize; y.len()];
            be.pool(PoolCall::MaxForward { win: &win, c, x: xv, y: &mut y, argmax: &mut argmax })?;
        }
        PoolKind::Average => {
            inv_count = (0..out_px)
                .map(|p| {
                    let mut k = 0usize;
                    win.for_each_tap(p / win.out_w, p % win.out_w, |_, _| k += 1);
                    1.0 / k as f32
                })
                .collect();
            be.pool(PoolCall::AverageForward { win: &win, c, x: xv, inv_count: &inv_count, y: &mut y })?;
        }
    }
    let shape = [n, win.out_h, win.out_w, c];
    Ok(tape.push(Tensor::new(&shape, y)?, Box::new(PoolBackward { x, win, c, argmax, inv_count })))
}

struct PoolBackward {
    x: Var,
    win: Window2d,
    c: usize,
    argmax: Vec<usize>,
    inv_count: Vec<f32>,
}

impl Backward for PoolBackward {
    fn name(&self) -> &'static str {
        if self.argmax.is_empty() {
            "avg_pool2d"
        } else {
            "max_pool2d"
        }
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let len = tape.value(self.x).len();
        let Some(dx) = grads.slot(self.x, len)? else { return Ok(()) };
        let call = if self.argmax.is_empty() {
            PoolCall::AverageBackward { win: &self.win, c: self.c, dy, inv_count: &self.inv_count, dx }
        } else {
            PoolCall::MaxBackward { dy, argmax: &self.argmax, dx }
        };
        tape.backend().pool(call)
    }
}

/// Global pooling over height and width: x `[N, H, W, C]` -> `[N, C]` (or `[N, 1, 1, C]` with `keepdims`).
pub fn global_pool2d(tape: &mut Tape, x: Var, kind: PoolKind, keepdims: bool) -> Result<Var> {
    let op = match kind {
        PoolKind::Max => "global_max_pool2d",
        PoolKind::Average => "global_avg_pool2d",
    };
    let (n, h, w, c) = nhwc(op, tape.shape(x))?;
    let xv = tape.value(x).data();
    let px = h * w;
    let mut y = vec![0.0; n * c];
    let mut argmax = vec![];
    let be = tape.backend();
    match kind {
        PoolKind::Average => be.pool(PoolCall::GlobalAverageForward { pixels: px, c, x: xv, y: &mut y })?,
        PoolKind::Max => {
            argmax = vec![0usize; n * c];
            be.pool(PoolCall::GlobalMaxForward { pixels: px, c, x: xv, y: &mut y, argmax: &mut argmax })?;
        }
    }
    let shape = if keepdims { vec![n, 1, 1, c] } else { vec![n, c] };
    Ok(tape.push(Tensor::new(&shape, y)?, Box::new(GlobalPoolBackward { x, px, c, argmax })))
}

struct GlobalPoolBackward {
    x: Var,
    px: usize,
    c: usize,
    argmax: Vec<usize>,
}

impl Backward for GlobalPoolBackward {
    fn name(&self) -> &'static str {
        "global_pool2d"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let len = tape.value(self.x).len();
        let Some(dx) = grads.slot(self.x, len)? else { return Ok(()) };
        let call = if self.argmax.is_empty() {
            PoolCall::GlobalAverageBackward { pixels: self.px, c: self.c, dy, dx }
        } else {
            PoolCall::MaxBackward { dy, argmax: &self.argmax, dx }
        };
        tape.backend().pool(call)
    }
}
