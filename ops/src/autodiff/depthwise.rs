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
    let xv = tape.value(x).data();
    let kv = tape.value(kernel).data();
    let mut y = vec![0.0; n * win.out_h * win.out_w * oc];
    if let Some(b) = bias {
        let bv = tape.value(b).data();
        y.chunks_mut(oc).for_each(|r| r.copy_from_slice(bv));
    }
    let img = h * w * c;
    for (p, out) in y.chunks_exact_mut(oc).enumerate() {
        let (f, oy, ox) = (p / (win.out_h * win.out_w), p / win.out_w % win.out_h, p % win.out_w);
        for_taps(&win, oy, ox, |tap, pix| {
            let xp = &xv[f * img + pix * c..f * img + (pix + 1) * c];
            let kt = &kv[tap * oc..(tap + 1) * oc];
            for (ci, &xc) in xp.iter().enumerate() {
                let o = &mut out[ci * dm..(ci + 1) * dm];
                o.iter_mut().zip(&kt[ci * dm..(ci + 1) * dm]).for_each(|(a, k)| *a += xc * k);
            }
        });
    }
    let shape = [n, win.out_h, win.out_w, oc];
    Ok(tape.push(Tensor::new(&shape, y)?, Box::new(DepthwiseBackward { x, kernel, bias, win, c, dm })))
}

/// Calls `f(tap, input_pixel)` for every kernel tap `ky * kw + kx` of output `(oy, ox)` that lies in the input.
#[inline]
fn for_taps(win: &Window2d, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    for ky in 0..win.kh {
        let Some(iy) = win.in_row(oy, ky) else { continue };
        for kx in 0..win.kw {
            if let Some(ix) = win.in_col(ox, kx) {
                f(ky * win.kw + kx, iy * win.in_w + ix);
            }
        }
    }
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
        let (win, c, dm) = (&self.win, self.c, self.dm);
        let oc = c * dm;
        if let Some(b) = self.bias {
            if let Some(db) = grads.slot(b, oc) {
                for r in dy.chunks_exact(oc) {
                    db.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                }
            }
        }
        let xv = tape.value(self.x).data();
        let kv = tape.value(self.kernel).data();
        let img = win.in_h * win.in_w * c;
        let want_dx = grads.wants(self.x);
        let want_dk = grads.wants(self.kernel);
        let mut dx = if want_dx { vec![0.0; xv.len()] } else { vec![] };
        let mut dk = if want_dk { vec![0.0; kv.len()] } else { vec![] };
        for (p, g) in dy.chunks_exact(oc).enumerate() {
            let (f, oy, ox) = (p / (win.out_h * win.out_w), p / win.out_w % win.out_h, p % win.out_w);
            for_taps(win, oy, ox, |tap, pix| {
                let at = f * img + pix * c;
                for ci in 0..c {
                    let gs = &g[ci * dm..(ci + 1) * dm];
                    if want_dx {
                        let ks = &kv[tap * oc + ci * dm..tap * oc + (ci + 1) * dm];
                        dx[at + ci] += gs.iter().zip(ks).map(|(a, b)| a * b).sum::<f32>();
                    }
                    if want_dk {
                        let xc = xv[at + ci];
                        let d = &mut dk[tap * oc + ci * dm..tap * oc + (ci + 1) * dm];
                        d.iter_mut().zip(gs).for_each(|(a, b)| *a += xc * b);
                    }
                }
            });
        }
        if want_dk {
            grads.accumulate(self.kernel, dk);
        }
        if want_dx {
            grads.accumulate(self.x, dx);
        }
        Ok(())
    }
}
