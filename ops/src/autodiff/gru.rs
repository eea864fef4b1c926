//! The GRU over a whole sequence as one op, as Keras computes it with
//! `reset_after=True`: gate order z, r, h; kernel `[I, 3u]`, recurrent kernel
//! `[u, 3u]`, bias `[2, 3u]` (input bias, recurrent bias); the reset gate
//! applies after the recurrent product:
//! `hh = tanh(x_h + r * (h_{t-1}·U_h + b_rh))`, `h = z * h_{t-1} + (1 - z) * hh`.
//! Masked steps carry `h` and repeat the previous output.

use super::sequence::{add_step_gradient, sequence_output};
use super::tape::{Backward, Gradients, Tape, Var};
use super::Mask;
use crate::backend::calls::{RecurrentCall, SequenceDims};
use crate::backend::{MatMut, MatRef};
use crate::buf::Buf;
use crate::error::{OpsError, Result};

/// Options of [`gru`].
#[derive(Clone, Debug, Default)]
pub struct GruOptions {
    /// Return `[B, T, u]` (all steps) instead of `[B, u]` (last step).
    pub return_sequences: bool,
    /// `[B * T]` valid-step mask.
    pub mask: Option<Mask>,
}

/// GRU forward over `x: [B, T, I]`.
pub fn gru(tape: &mut Tape, x: Var, kernel: Var, recurrent: Var, bias: Option<Var>, opts: GruOptions) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let ks = tape.shape(kernel).to_vec();
    let rs = tape.shape(recurrent).to_vec();
    if xs.len() != 3 || ks.len() != 2 || rs.len() != 2 || ks[0] != xs[2] || rs[1] != ks[1] || rs[1] != 3 * rs[0] {
        return Err(OpsError::shape("gru", "x [B,T,I], kernel [I,3u], recurrent_kernel [u,3u]", &[&xs, &ks, &rs]));
    }
    let (b, t, i, u) = (xs[0], xs[1], xs[2], rs[0]);
    let g3 = 3 * u;
    if let Some(bv) = bias {
        if tape.shape(bv) != [2, g3] {
            return Err(OpsError::shape("gru", "bias must be [2, 3u]", &[&[2, g3], tape.shape(bv)]));
        }
    }
    if let Some(m) = &opts.mask {
        if m.len() != b * t {
            return Err(OpsError::shape("gru", "mask must be [B, T]", &[&[b, t], &[m.len()]]));
        }
    }
    let be = tape.backend();
    let zero_bias = be.zeros(2 * g3)?;
    let bd: &[f32] = bias.map_or(&zero_bias[..], |bv| tape.value(bv).data());
    // xz rows: x·K + b_in for all steps; after the step they hold z, r, hh (activated).
    let mut xz = be.rows_of(&bd[..g3], b * t)?;
    be.matmul(
        MatRef::dense(tape.value(x).data(), b * t, i),
        MatRef::dense(tape.value(kernel).data(), i, g3),
        MatMut::dense(&mut xz, b * t, g3),
        true,
    )?;
    let rk = tape.value(recurrent).data();
    // rec rows: h_{t-1}·U + b_rec (raw; its h part is needed by the backward pass).
    let mut rec = be.rows_of(&bd[g3..], b * t)?;
    let mut hprev = be.zeros(b * t * u)?;
    let mut h_last = be.zeros(b * u)?;
    let dims = SequenceDims { batch: b, steps: t, units: u };
    let mask = opts.mask.as_ref().map(|m| m.as_slice());
    for step in 0..t {
        if step > 0 {
            be.matmul(
                MatRef { data: &hprev, offset: step * u, rows: b, cols: u, row_stride: t * u, col_stride: 1 },
                MatRef::dense(rk, u, g3),
                MatMut { data: &mut rec, offset: step * g3, rows: b, cols: g3, row_stride: t * g3, col_stride: 1 },
                true,
            )?;
        }
        let (xz, rec, hprev, h_last) = (&mut xz, &rec, &mut hprev, &mut h_last);
        be.recurrent(RecurrentCall::GruStep { step, dims, mask, xz, rec, hprev, h_last })?;
    }
    let out = sequence_output(be, &hprev, h_last, dims, opts.return_sequences)?;
    let rule = GruBackward { x, kernel, recurrent, bias, opts, dims: (b, t, i, u), xz, rec, hprev };
    Ok(tape.push(out, Box::new(rule)))
}

struct GruBackward {
    x: Var,
    kernel: Var,
    recurrent: Var,
    bias: Option<Var>,
    opts: GruOptions,
    dims: (usize, usize, usize, usize),
    xz: Buf,
    rec: Buf,
    hprev: Buf,
}

impl Backward for GruBackward {
    fn name(&self) -> &'static str {
        "gru"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x, self.kernel, self.recurrent];
        v.extend(self.bias);
        v
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let (b, t, i, u) = self.dims;
        let g3 = 3 * u;
        let be = tape.backend();
        let rk_t = super::transpose(be, tape.value(self.recurrent).data(), u, g3)?;
        let dims = SequenceDims { batch: b, steps: t, units: u };
        let mask = self.opts.mask.as_ref().map(|m| m.as_slice());
        let mut dxz = be.zeros(b * t * g3)?;
        let mut drec = be.zeros(b * t * g3)?;
        let mut dh = if self.opts.return_sequences { be.zeros(b * u)? } else { be.buf_from(dy)? };
        let mut dh_next = be.zeros(b * u)?;
        for step in (0..t).rev() {
            if self.opts.return_sequences {
                add_step_gradient(be, dy, step, dims, &mut dh)?;
            }
            be.recurrent(RecurrentCall::GruStepBackward {
                step,
                dims,
                mask,
                xz: &self.xz,
                rec: &self.rec,
                hprev: &self.hprev,
                dh: &dh,
                dh_prev: &mut dh_next,
                dxz: &mut dxz,
                drec: &mut drec,
            })?;
            if step > 0 {
                // dh_{t-1} += dREC_t · U^T (masked rows have dREC = 0).
                be.matmul(
                    MatRef { data: &drec, offset: step * g3, rows: b, cols: g3, row_stride: t * g3, col_stride: 1 },
                    MatRef::dense(&rk_t, g3, u),
                    MatMut::dense(&mut dh_next, b, u),
                    true,
                )?;
            }
            std::mem::swap(&mut dh, &mut dh_next);
        }
        let dxz_m = MatRef::dense(&dxz, b * t, g3);
        if let Some(dk) = grads.slot(self.kernel, i * g3)? {
            be.matmul(MatRef::dense(tape.value(self.x).data(), b * t, i).t(), dxz_m, MatMut::dense(dk, i, g3), true)?;
        }
        if let Some(du) = grads.slot(self.recurrent, u * g3)? {
            be.matmul(
                MatRef::dense(&self.hprev, b * t, u).t(),
                MatRef::dense(&drec, b * t, g3),
                MatMut::dense(du, u, g3),
                true,
            )?;
        }
        if let Some(bv) = self.bias {
            if let Some(db) = grads.slot(bv, 2 * g3)? {
                let (db_in, db_rec) = db.split_at_mut(g3);
                be.sum_rows(&dxz, g3, db_in)?;
                be.sum_rows(&drec, g3, db_rec)?;
            }
        }
        if let Some(dx) = grads.slot(self.x, b * t * i)? {
            be.matmul(
                dxz_m,
                MatRef::dense(tape.value(self.kernel).data(), i, g3).t(),
                MatMut::dense(dx, b * t, i),
                true,
            )?;
        }
        Ok(())
    }
}
