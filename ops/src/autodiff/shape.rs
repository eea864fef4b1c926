//! Shape ops: `reshape` and `concat_last` (concatenation on the last axis).

use super::tape::{Backward, Gradients, Tape, Var};
use crate::backend::{MatMut, MatRef};
use crate::error::{OpsError, Result};

/// The same values under a new shape with as many elements.
pub fn reshape(tape: &mut Tape, x: Var, shape: &[usize]) -> Result<Var> {
    let y = tape.value(x).reshape(shape)?;
    Ok(tape.push(y, Box::new(ReshapeBackward { x })))
}

struct ReshapeBackward {
    x: Var,
}

impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        grads.accumulate(self.x, tape.backend().buf_from(dy)?)
    }
}

/// Concatenates on the last axis; all leading dimensions must agree.
pub fn concat_last(tape: &mut Tape, xs: &[Var]) -> Result<Var> {
    if xs.is_empty() {
        return Err(OpsError::shape("concatenate", "needs at least one input", &[]));
    }
    let lead = tape.shape(xs[0])[..tape.shape(xs[0]).len() - 1].to_vec();
    let mut widths = Vec::with_capacity(xs.len());
    for &x in xs {
        let s = tape.shape(x);
        if s.len() != lead.len() + 1 || s[..lead.len()] != lead[..] {
            let shapes: Vec<&[usize]> = xs.iter().map(|v| tape.shape(*v)).collect();
            return Err(OpsError::shape("concatenate", "all dimensions but the last must agree", &shapes));
        }
        widths.push(s[lead.len()]);
    }
    let rows: usize = lead.iter().product();
    let total: usize = widths.iter().sum();
    let mut y = tape.backend().zeros(rows * total)?;
    let mut off = 0;
    for (&x, &w) in xs.iter().zip(&widths) {
        let dst = MatMut { data: &mut y, offset: off, rows, cols: w, row_stride: total, col_stride: 1 };
        tape.backend().copy(MatRef::dense(tape.value(x).data(), rows, w), dst, false)?;
        off += w;
    }
    let mut shape = lead;
    shape.push(total);
    let t = crate::tensor::Tensor::from_buf(&shape, y)?;
    Ok(tape.push(t, Box::new(ConcatBackward { xs: xs.to_vec(), widths, rows })))
}

struct ConcatBackward {
    xs: Vec<Var>,
    widths: Vec<usize>,
    rows: usize,
}

impl Backward for ConcatBackward {
    fn name(&self) -> &'static str {
        "concatenate"
    }
    fn inputs(&self) -> Vec<Var> {
        self.xs.clone()
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let total: usize = self.widths.iter().sum();
        let mut off = 0;
        for (&x, &w) in self.xs.iter().zip(&self.widths) {
            if let Some(dx) = grads.slot(x, self.rows * w)? {
                let src = MatRef { data: dy, offset: off, rows: self.rows, cols: w, row_stride: total, col_stride: 1 };
                tape.backend().copy(src, MatMut::dense(dx, self.rows, w), true)?;
            }
            off += w;
        }
        Ok(())
    }
}

/// Zero padding of height and width: x `[N, H, W, C]` -> `[N, top + H + bottom, left + W + right, C]`.
pub fn zero_pad2d(tape: &mut Tape, x: Var, rows: (usize, usize), cols: (usize, usize)) -> Result<Var> {
    let (n, h, w, c) = super::window::nhwc("zero_pad2d", tape.shape(x))?;
    let (oh, ow) = (rows.0 + h + rows.1, cols.0 + w + cols.1);
    let xv = tape.value(x).data();
    let mut y = vec![0.0; n * oh * ow * c];
    for f in 0..n {
        let src = MatRef { data: xv, offset: f * h * w * c, rows: h, cols: w * c, row_stride: w * c, col_stride: 1 };
        let at = ((f * oh + rows.0) * ow + cols.0) * c;
        let dst = MatMut { data: &mut y, offset: at, rows: h, cols: w * c, row_stride: ow * c, col_stride: 1 };
        tape.backend().copy(src, dst, false)?;
    }
    let t = crate::tensor::Tensor::new(&[n, oh, ow, c], y)?;
    Ok(tape.push(t, Box::new(ZeroPadBackward { x, dims: (n, h, w, c), rows: rows.0, cols: cols.0, oh, ow })))
}

struct ZeroPadBackward {
    x: Var,
    dims: (usize, usize, usize, usize),
    rows: usize,
    cols: usize,
    oh: usize,
    ow: usize,
}

impl Backward for ZeroPadBackward {
    fn name(&self) -> &'static str {
        "zero_pad2d"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let (n, h, w, c) = self.dims;
        let Some(dx) = grads.slot(self.x, n * h * w * c)? else { return Ok(()) };
        for f in 0..n {
            let at = ((f * self.oh + self.rows) * self.ow + self.cols) * c;
            let src = MatRef { data: dy, offset: at, rows: h, cols: w * c, row_stride: self.ow * c, col_stride: 1 };
            let dst = MatMut {
                data: &mut *dx,
                offset: f * h * w * c,
                rows: h,
                cols: w * c,
                row_stride: w * c,
                col_stride: 1,
            };
            tape.backend().copy(src, dst, true)?;
        }
        Ok(())
    }
}
