//! 2-D convolution on NHWC tensors (Keras `Conv2D`): kernel `[kh, kw, in, out]`,
//! bias `[out]`, strides, dilation, `'valid'` / `'same'` padding.
//!
//! Forward is im2col + GEMM: each output pixel's receptive field becomes one
//! row of `kh * kw * in` values (in the kernel's `(ky, kx, c)` order), so that
//! `rows · kernel` is directly the NHWC output. The rows are built and
//! multiplied block by block (whole images, about [`BLOCK_FLOATS`] values of
//! im2col at a time) so that each block stays in cache between being written
//! and being read by the GEMM, and the full im2col matrix is never stored.
//! The activation is fused: applied in place on each block of the GEMM's
//! output, and undone in backward from the output alone (so Keras's
//! `Conv2D(..., activation='relu')` costs no extra tensor or pass).
//! Backward, block by block: `dZ = dY ⊙ act'(Y)`, `dBias += colsum(dZ)`,
//! `dKernel += colsᵀ · dZ` (the im2col block rebuilt), `dCols = dZ · kernelᵀ`
//! scattered back onto the input (col2im).

use super::tape::{Backward, Gradients, Tape, Var};
use super::window::{nhwc, Padding, Window2d};
use crate::backend::{calls::Im2colCall, Activation, Backend, MatMut, MatRef};
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;

/// Target size, in f32 values, of one block of im2col rows (about 1 MiB).
const BLOCK_FLOATS: usize = 1 << 18;

/// Strides, dilation and padding of a 2-D window op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub strides: (usize, usize),
    pub dilation: (usize, usize),
    pub padding: Padding,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { strides: (1, 1), dilation: (1, 1), padding: Padding::Valid }
    }
}

/// `act(conv2d(x, kernel) + bias)`: x `[N, H, W, C]`, kernel `[kh, kw, C, O]`, bias `[O]` -> `[N, OH, OW, O]`.
/// Every activation but GELU (whose derivative needs its input) is fused.
pub fn conv2d(
    tape: &mut Tape,
    x: Var,
    kernel: Var,
    bias: Option<Var>,
    opts: Conv2dOptions,
    act: Activation,
) -> Result<Var> {
    if act == Activation::Gelu {
        let z = conv2d(tape, x, kernel, bias, opts, Activation::Linear)?;
        return super::activation(tape, z, act);
    }
    let xs = tape.shape(x).to_vec();
    let ks = tape.shape(kernel).to_vec();
    let (n, h, w, c) = nhwc("conv2d", &xs)?;
    if ks.len() != 4 || ks[2] != c {
        return Err(OpsError::shape("conv2d", "x [N, H, W, C] against kernel [kh, kw, C, O]", &[&xs, &ks]));
    }
    let o = ks[3];
    if let Some(b) = bias {
        if tape.shape(b) != [o] {
            return Err(OpsError::shape("conv2d", "bias must be [O]", &[&ks, tape.shape(b)]));
        }
    }
    let win = Window2d::new("conv2d", (h, w), (ks[0], ks[1]), opts.strides, opts.dilation, opts.padding)?;
    let geo = ConvGeometry { win, n, c, o };
    // Grown block by block, each block set to the bias (or zero) just before
    // the GEMM adds onto it (in cache), not zeroed all at once ahead of the
    // loop (tens of MB through memory) and the bias added in a pass of its own.
    let mut y = Vec::with_capacity(n * geo.out_pixels() * o);
    let xv = tape.value(x).data();
    let kv = tape.value(kernel).data();
    let bv = bias.map(|b| tape.value(b).data());
    let be = tape.backend();
    with_scratch(|scratch| -> Result<()> {
        for (f0, f1) in geo.blocks() {
            let rows = (f1 - f0) * geo.out_pixels();
            let lhs = geo.cols(be, xv, f0, f1, &mut scratch.cols)?;
            match bv {
                Some(bv) => crate::buf::extend_with_rows(&mut y, bv, rows),
                None => y.resize(f1 * geo.out_pixels() * o, 0.0),
            }
            let out = &mut y[f0 * geo.out_pixels() * o..];
            be.matmul(
                MatRef::dense(lhs, rows, geo.kk()),
                MatRef::dense(kv, geo.kk(), o),
                MatMut::dense(out, rows, o),
                bv.is_some(),
            )?;
            // The activation while the block is still in cache.
            be.activation_forward(act, out, o)?;
        }
        Ok(())
    })?;
    let shape = [n, win.out_h, win.out_w, o];
    Ok(tape.push(Tensor::new(&shape, y)?, Box::new(Conv2dBackward { x, kernel, bias, geo, act })))
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct ConvGeometry {
    win: Window2d,
    n: usize,
    c: usize,
    o: usize,
}

impl ConvGeometry {
    fn out_pixels(&self) -> usize {
        self.win.out_h * self.win.out_w
    }

    /// Length of one im2col row.
    fn kk(&self) -> usize {
        self.win.kh * self.win.kw * self.c
    }

    /// `[first, end)` image ranges of about [`BLOCK_FLOATS`] im2col values each.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let per_image = (self.out_pixels() * self.kk()).max(1);
        let step = (BLOCK_FLOATS / per_image).max(1);
        let n = self.n;
        (0..n).step_by(step).map(move |f| (f, (f + step).min(n)))
    }

    /// The im2col rows of images `[f0, f1)`: `x` itself for a pointwise conv, else built in `buf`.
    fn cols<'a>(
        &self,
        be: &dyn Backend,
        x: &'a [f32],
        f0: usize,
        f1: usize,
        buf: &'a mut Vec<f32>,
    ) -> Result<&'a [f32]> {
        let img = self.win.in_h * self.win.in_w * self.c;
        if self.win.is_pointwise() {
            return Ok(&x[f0 * img..f1 * img]);
        }
        buf.resize((f1 - f0) * self.out_pixels() * self.kk(), 0.0);
        be.im2col(Im2colCall::Gather { win: &self.win, c: self.c, x, images: (f0, f1), cols: buf })?;
        Ok(buf)
    }

    /// Adds the im2col-shaped gradient `dcols` of images `[f0, f1)` onto `dx` (col2im).
    fn add_cols(&self, be: &dyn Backend, dcols: &[f32], f0: usize, f1: usize, dx: &mut [f32]) -> Result<()> {
        let img = self.win.in_h * self.win.in_w * self.c;
        if self.win.is_pointwise() {
            let n = (f1 - f0) * img;
            let dst = MatMut { data: dx, offset: f0 * img, rows: 1, cols: n, row_stride: n, col_stride: 1 };
            return be.copy(MatRef::dense(dcols, 1, n), dst, true);
        }
        be.im2col(Im2colCall::ScatterAdd { win: &self.win, c: self.c, cols: dcols, images: (f0, f1), dx })
    }
}

/// Per-thread work buffers of the blocked loops (im2col rows, their gradient,
/// the activation's gradient): a few MiB that would otherwise be allocated, and
/// page-faulted in by the allocator, on every call of every convolution.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    dcols: Vec<f32>,
    dz: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's [`Scratch`] (fresh buffers if it is in use), and
/// releases buffers that an unusually large image made bigger than a few blocks.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let out = f(&mut s);
            let Scratch { cols, dcols, dz } = &mut *s;
            for v in [cols, dcols, dz] {
                if v.capacity() > 4 * BLOCK_FLOATS {
                    *v = Vec::new();
                }
            }
            out
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

struct Conv2dBackward {
    x: Var,
    kernel: Var,
    bias: Option<Var>,
    geo: ConvGeometry,
    act: Activation,
}

impl Backward for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x, self.kernel];
        v.extend(self.bias);
        v
    }
    fn backward(&self, tape: &Tape, out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let g = &self.geo;
        let (kk, o, px) = (g.kk(), g.o, g.out_pixels());
        let be = tape.backend();
        let xv = tape.value(self.x).data();
        let yv = tape.value(out).data();
        let want_dx = grads.wants(self.x);
        let want_dk = grads.wants(self.kernel);
        let want_db = self.bias.is_some_and(|b| grads.wants(b));
        // kernelᵀ as a dense [O, kk] matrix, so that the dCols GEMM reads both operands row-major.
        let kt =
            if want_dx { super::transpose(be, tape.value(self.kernel).data(), kk, o)? } else { Default::default() };
        let mut dk = if want_dk { vec![0.0; kk * o] } else { vec![] };
        let mut db = vec![0.0; if want_db { o } else { 0 }];
        let mut dx = if want_dx { vec![0.0; xv.len()] } else { vec![] };
        with_scratch(|Scratch { cols, dcols, dz }| -> Result<()> {
            for (f0, f1) in g.blocks() {
                let rows = (f1 - f0) * px;
                let span = f0 * px * o..f1 * px * o;
                dz.resize(rows * o, 0.0);
                be.copy(MatRef::dense(&dy[span.clone()], rows, o), MatMut::dense(dz, rows, o), false)?;
                be.activation_backward(self.act, &[], &yv[span], dz, o)?;
                if want_db {
                    be.sum_rows(dz, o, &mut db)?;
                }
                let dz_m = MatRef::dense(dz, rows, o);
                if want_dk {
                    let lhs = g.cols(be, xv, f0, f1, cols)?;
                    be.matmul(MatRef::dense(lhs, rows, kk).t(), dz_m, MatMut::dense(&mut dk, kk, o), true)?;
                }
                if want_dx {
                    dcols.resize(rows * kk, 0.0);
                    be.matmul(dz_m, MatRef::dense(&kt, o, kk), MatMut::dense(dcols, rows, kk), false)?;
                    g.add_cols(be, dcols, f0, f1, &mut dx)?;
                }
            }
            Ok(())
        })?;
        if let (true, Some(b)) = (want_db, self.bias) {
            grads.accumulate(b, tape.backend().adopt(db)?)?;
        }
        if want_dk {
            grads.accumulate(self.kernel, tape.backend().adopt(dk)?)?;
        }
        if want_dx {
            grads.accumulate(self.x, tape.backend().adopt(dx)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    /// Direct convolution: y, and for a given dy the gradients dx and dk.
    fn naive(
        x: &[f32],
        k: &[f32],
        dy: &[f32],
        (n, c, o): (usize, usize, usize),
        w: &Window2d,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut y, mut dx, mut dk) = (vec![0.0; n * w.out_h * w.out_w * o], vec![0.0; x.len()], vec![0.0; k.len()]);
        for f in 0..n {
            for oy in 0..w.out_h {
                for ox in 0..w.out_w {
                    let out = ((f * w.out_h + oy) * w.out_w + ox) * o;
                    for ky in 0..w.kh {
                        for kx in 0..w.kw {
                            let (Some(iy), Some(ix)) = (w.in_row(oy, ky), w.in_col(ox, kx)) else { continue };
                            for ci in 0..c {
                                let xi = ((f * w.in_h + iy) * w.in_w + ix) * c + ci;
                                for oc in 0..o {
                                    let ki = ((ky * w.kw + kx) * c + ci) * o + oc;
                                    y[out + oc] += x[xi] * k[ki];
                                    dx[xi] += dy[out + oc] * k[ki];
                                    dk[ki] += dy[out + oc] * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dk)
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
        a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
    }

    #[test]
    fn matches_direct_convolution_across_blocks() {
        // (n, h, w, c, kh, kw, o, strides, dilation, padding); the first spans several im2col blocks.
        let cases = [
            (20, 20, 20, 8, 3, 3, 4, (1, 1), (1, 1), Padding::Same),
            (3, 9, 8, 3, 3, 2, 5, (2, 3), (1, 1), Padding::Same),
            (2, 9, 10, 2, 3, 3, 3, (1, 1), (2, 2), Padding::Valid),
            (2, 7, 7, 4, 1, 1, 6, (1, 1), (1, 1), Padding::Valid),
            (2, 6, 6, 3, 4, 4, 2, (2, 2), (1, 1), Padding::Same),
        ];
        for (i, &(n, h, w, c, kh, kw, o, s, d, p)) in cases.iter().enumerate() {
            let win = Window2d::new("t", (h, w), (kh, kw), s, d, p).unwrap();
            let x = rand(n * h * w * c, i as u64);
            let k = rand(kh * kw * c * o, 100 + i as u64);
            let dy = rand(n * win.out_h * win.out_w * o, 200 + i as u64);
            let (y0, dx0, dk0) = naive(&x, &k, &dy, (n, c, o), &win);
            let mut tape = Tape::new();
            let xv = tape.leaf(Tensor::new(&[n, h, w, c], x).unwrap(), true);
            let kv = tape.leaf(Tensor::new(&[kh, kw, c, o], k).unwrap(), true);
            let opts = Conv2dOptions { strides: s, dilation: d, padding: p };
            let y = conv2d(&mut tape, xv, kv, None, opts, Activation::Linear).unwrap();
            assert_eq!(tape.shape(y), [n, win.out_h, win.out_w, o]);
            assert!(max_rel(tape.value(y).data(), &y0) < 1e-5, "case {i}: forward");
            let g = tape.backward_with(y, dy).unwrap();
            assert!(max_rel(g.get(xv).unwrap(), &dx0) < 1e-5, "case {i}: dx");
            assert!(max_rel(g.get(kv).unwrap(), &dk0) < 1e-5, "case {i}: dkernel");
        }
    }
}
