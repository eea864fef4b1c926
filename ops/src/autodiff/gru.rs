//! The GRU over a whole sequence as one op, as Keras computes it with
//! `reset_after=True`: gate order z, r, h; kernel `[I, 3u]`, recurrent kernel
//! `[u, 3u]`, bias `[2, 3u]` (input bias, recurrent bias); the reset gate
//! applies after the recurrent product:
//! `hh = tanh(x_h + r * (h_{t-1}·U_h + b_rh))`, `h = z * h_{t-1} + (1 - z) * hh`.
//! Masked steps carry `h` and repeat the previous output.

use super::tape::{Backward, Gradients, Tape, Var};
use super::Mask;
use crate::backend::{math, MatMut, MatRef};
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;

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
    let zero_bias = vec![0.0; 2 * g3];
    let bd: &[f32] = bias.map_or(&zero_bias, |bv| tape.value(bv).data());
    // xz rows: x·K + b_in for all steps; after the step they hold z, r, hh (activated).
    let mut xz = vec![0.0; b * t * g3];
    xz.chunks_mut(g3).for_each(|r| r.copy_from_slice(&bd[..g3]));
    be.matmul(
        MatRef::dense(tape.value(x).data(), b * t, i),
        MatRef::dense(tape.value(kernel).data(), i, g3),
        MatMut::dense(&mut xz, b * t, g3),
        true,
    )?;
    let rk = tape.value(recurrent).data();
    // rec rows: h_{t-1}·U + b_rec (raw; its h part is needed by the backward pass).
    let mut rec = vec![0.0; b * t * g3];
    rec.chunks_mut(g3).for_each(|r| r.copy_from_slice(&bd[g3..]));
    let mut hprev = vec![0.0; b * t * u];
    let mut h_last = vec![0.0; b * u];
    let mut h_new = vec![0.0; u];
    for step in 0..t {
        if step > 0 {
            be.matmul(
                MatRef { data: &hprev, offset: step * u, rows: b, cols: u, row_stride: t * u, col_stride: 1 },
                MatRef::dense(rk, u, g3),
                MatMut { data: &mut rec, offset: step * g3, rows: b, cols: g3, row_stride: t * g3, col_stride: 1 },
                true,
            )?;
        }
        for row in 0..b {
            let r = row * t + step;
            let valid = opts.mask.as_ref().is_none_or(|m| m[r]);
            let z = &mut xz[r * g3..(r + 1) * g3];
            let rc = &rec[r * g3..(r + 1) * g3];
            for k in 0..2 * u {
                z[k] += rc[k];
            }
            math::sigmoid_inplace(&mut z[..2 * u]);
            for k in 0..u {
                z[2 * u + k] += z[u + k] * rc[2 * u + k];
            }
            math::tanh_inplace(&mut z[2 * u..]);
            let hp = &hprev[r * u..(r + 1) * u];
            if valid {
                for k in 0..u {
                    h_new[k] = z[k] * hp[k] + (1.0 - z[k]) * z[2 * u + k];
                }
            } else {
                h_new.copy_from_slice(hp);
            }
            if step + 1 < t {
                hprev[(r + 1) * u..(r + 2) * u].copy_from_slice(&h_new);
            } else {
                h_last[row * u..(row + 1) * u].copy_from_slice(&h_new);
            }
        }
    }
    let out = if opts.return_sequences {
        let mut y = vec![0.0; b * t * u];
        for row in 0..b {
            for step in 0..t {
                let r = row * t + step;
                let src = if step + 1 < t { &hprev[(r + 1) * u..(r + 2) * u] } else { &h_last[row * u..(row + 1) * u] };
                y[r * u..(r + 1) * u].copy_from_slice(src);
            }
        }
        Tensor::new(&[b, t, u], y)?
    } else {
        Tensor::new(&[b, u], h_last)?
    };
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
    xz: Vec<f32>,
    rec: Vec<f32>,
    hprev: Vec<f32>,
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
        let rk_t = super::transpose(tape.value(self.recurrent).data(), u, g3);
        let mut dxz = vec![0.0; b * t * g3];
        let mut drec = vec![0.0; b * t * g3];
        let mut dh = if self.opts.return_sequences { vec![0.0; b * u] } else { dy.to_vec() };
        let mut dh_next = vec![0.0; b * u];
        for step in (0..t).rev() {
            if self.opts.return_sequences {
                for row in 0..b {
                    let src = &dy[(row * t + step) * u..(row * t + step + 1) * u];
                    dh[row * u..(row + 1) * u].iter_mut().zip(src).for_each(|(a, g)| *a += g);
                }
            }
            for row in 0..b {
                let r = row * t + step;
                let valid = self.opts.mask.as_ref().is_none_or(|m| m[r]);
                let dhr = &dh[row * u..(row + 1) * u];
                let dnr = &mut dh_next[row * u..(row + 1) * u];
                if !valid {
                    dnr.copy_from_slice(dhr);
                    continue;
                }
                let z = &self.xz[r * g3..(r + 1) * g3];
                let rc = &self.rec[r * g3..(r + 1) * g3];
                let hp = &self.hprev[r * u..(r + 1) * u];
                let dx_r = &mut dxz[r * g3..(r + 1) * g3];
                let dr_r = &mut drec[r * g3..(r + 1) * g3];
                for k in 0..u {
                    let (zg, rg, hh) = (z[k], z[u + k], z[2 * u + k]);
                    let dzg = dhr[k] * (hp[k] - hh);
                    let dah = dhr[k] * (1.0 - zg) * (1.0 - hh * hh);
                    let drg = dah * rc[2 * u + k];
                    let daz = dzg * zg * (1.0 - zg);
                    let dar = drg * rg * (1.0 - rg);
                    dx_r[k] = daz;
                    dx_r[u + k] = dar;
                    dx_r[2 * u + k] = dah;
                    dr_r[k] = daz;
                    dr_r[u + k] = dar;
                    dr_r[2 * u + k] = dah * rg;
                    dnr[k] = dhr[k] * zg;
                }
            }
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
        if let Some(dk) = grads.slot(self.kernel, i * g3) {
            be.matmul(MatRef::dense(tape.value(self.x).data(), b * t, i).t(), dxz_m, MatMut::dense(dk, i, g3), true)?;
        }
        if let Some(du) = grads.slot(self.recurrent, u * g3) {
            be.matmul(
                MatRef::dense(&self.hprev, b * t, u).t(),
                MatRef::dense(&drec, b * t, g3),
                MatMut::dense(du, u, g3),
                true,
            )?;
        }
        if let Some(bv) = self.bias {
            if let Some(db) = grads.slot(bv, 2 * g3) {
                for (rx, rr) in dxz.chunks(g3).zip(drec.chunks(g3)) {
                    db[..g3].iter_mut().zip(rx).for_each(|(a, g)| *a += g);
                    db[g3..].iter_mut().zip(rr).for_each(|(a, g)| *a += g);
                }
            }
        }
        if let Some(dx) = grads.slot(self.x, b * t * i) {
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
