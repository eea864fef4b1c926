//! Depthwise 2-D convolution on NHWC tensors (Keras `DepthwiseConv2D`):
//! each input channel `c` is convolved with its own `depth_multiplier`
//! filters; output channel `c * dm + m` uses kernel slice `[:, :, c, m]`.
//!
//! Kernel `[kh, kw, C, dm]`, bias `[C * dm]`. A direct loop: for each kernel
//! tap, the `[C * dm]` slice of the kernel lines up with the output channels,
//! so the inner loop is a contiguous multiply-add that the compiler vectorises
//! (there is no GEMM to win: each output reads only `kh * kw` products).

use super::conv::Conv2dOptions;
use super::tape::{Backward, Gradients, Tape, Var};
use super::window::{nhwc, Window2d};
use crate::backend::calls::DepthwiseCall;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;

/// Depthwise conv: x `[N, H, W, C]`, kernel `[kh, kw, C, dm]`, bias `[C * dm]` -> `[N, OH, OW, C * dm]`.
pub fn depthwise_conv2d(tape: &mut Tape, x: Var, kernel: Var, bias: Option<Var>, opts: Conv2dOptions) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let ks = tape.shape(kernel).to_vec();
    let (n, h, w, c) = nhwc("depthwise_conv2d", &xs)?;
    if ks.len() != 4 || ks[2] != c || ks[3] == 0 {
        return Err(OpsError::shape("depthwise_conv2d", "x [N, H, W, C] against kernel [kh, kw, C, dm]", &[&xs, &ks]));
    }
    let dm = ks[3];
    let oc = c * dm;
    if let Some(b) = bias {
        if tape.shape(b) != [oc] {
            return Err(OpsError::shape("depthwise_conv2d", "bias must be [C * dm]", &[&ks, tape.shape(b)]));
        }
    }
    let win = Window2d::new("depthwise_conv2d", (h, w), (ks[0], ks[1]), opts.strides, opts.dilation, opts.padding)?;
    let be = tape.backend();
    let mut y = match bias {
        Some(b) => be.rows_of(tape.value(b).data(), n * win.out_h * win.out_w)?,
        None => be.zeros(n * win.out_h * win.out_w * oc)?,
    };
    let (xv, kv) = (tape.value(x).data(), tape.value(kernel).data());
    be.depthwise(DepthwiseCall::Forward { win: &win, c, dm, x: xv, kernel: kv, y: &mut y })?;
    let shape = [n, win.out_h, win.out_w, oc];
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(DepthwiseBackward { x, kernel, bias, win, c, dm })))
}

struct DepthwiseBackward {
    x: Var,
    kernel: Var,
    bias: Option<Var>,
    win: Window2d,
    c: usize,
    dm: usize,
}

impl Backward for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "depthwise_conv2d"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x, self.kernel];
        v.extend(self.bias);
        v
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let (c, dm) = (self.c, self.dm);
        let be = tape.backend();
        if let Some(b) = self.bias {
            if let Some(db) = grads.slot(b, c * dm)? {
                be.sum_rows(dy, c * dm, db)?;
            }
        }
        let xv = tape.value(self.x).data();
        let kv = tape.value(self.kernel).data();
        let want_dx = grads.wants(self.x);
        let want_dk = grads.wants(self.kernel);
        let mut dx = if want_dx { vec![0.0; xv.len()] } else { vec![] };
        let mut dk = if want_dk { vec![0.0; kv.len()] } else { vec![] };
        be.depthwise(DepthwiseCall::Backward {
            win: &self.win,
            c,
            dm,
            x: xv,
            kernel: kv,
            dy,
            dx: want_dx.then_some(&mut dx[..]),
            dkernel: want_dk.then_some(&mut dk[..]),
        })?;
        if want_dk {
            grads.accumulate(self.kernel, tape.backend().adopt(dk)?)?;
        }
        if want_dx {
            grads.accumulate(self.x, tape.backend().adopt(dx)?)?;
        }
        Ok(())
    }
}
