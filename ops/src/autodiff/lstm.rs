//! The LSTM over a whole sequence as one op (Keras layout and gate order
//! i, f, c, o; sigmoid gates, tanh cell activation).
//!
//! Forward: one GEMM projects all time steps (`x·kernel + bias`), then each
//! step adds `h_{t-1}·recurrent_kernel` and applies the gates. Backward:
//! back-propagation through time fills `dZ` step by step (one small GEMM per
//! step for `dh_{t-1}`), and the weight gradients are then single large GEMMs
//! over all steps. Masked steps (padding) carry `h` and `c` unchanged, and
//! their output repeats the previous one, as Keras does.

use super::sequence::{add_step_gradient, sequence_output};
use super::tape::{Backward, Gradients, Tape, Var};
use super::Mask;
use crate::backend::calls::{RecurrentCall, SequenceDims};
use crate::backend::{Backend, MatMut, MatRef, PackedMat, PackedWeights};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::tensor::{IntTensor, Tensor};

/// Options of [`lstm`].
#[derive(Clone, Debug, Default)]
pub struct LstmOptions {
    /// Return `[B, T, u]` (all steps) instead of `[B, u]` (last step).
    pub return_sequences: bool,
    /// `[B * T]` valid-step mask.
    pub mask: Option<Mask>,
    /// Weights packed for this pass (a batch of several shards), found by their values.
    pub packed: Option<std::sync::Arc<PackedWeights>>,
}

impl LstmOptions {
    /// The packed form of `weight`, if this pass has one.
    fn packed_form(&self, weight: &Tensor) -> Option<&PackedMat> {
        self.packed.as_deref().and_then(|p| p.find(weight))
    }
}

/// LSTM forward over `x: [B, T, I]` with `kernel: [I, 4u]`, `recurrent: [u, 4u]`, `bias: [4u]`.
pub fn lstm(tape: &mut Tape, x: Var, kernel: Var, recurrent: Var, bias: Option<Var>, opts: LstmOptions) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let ks = tape.shape(kernel).to_vec();
    let rs = tape.shape(recurrent).to_vec();
    if xs.len() != 3 || ks.len() != 2 || rs.len() != 2 || ks[0] != xs[2] || rs[1] != ks[1] || rs[1] != 4 * rs[0] {
        return Err(OpsError::shape("lstm", "x [B,T,I], kernel [I,4u], recurrent_kernel [u,4u]", &[&xs, &ks, &rs]));
    }
    let (b, t, i, u) = (xs[0], xs[1], xs[2], rs[0]);
    let g4 = 4 * u;
    if let Some(bv) = bias {
        if tape.shape(bv) != [g4] {
            return Err(OpsError::shape("lstm", "bias must be [4u]", &[&[g4], tape.shape(bv)]));
        }
    }
    if let Some(m) = &opts.mask {
        if m.len() != b * t {
            return Err(OpsError::shape("lstm", "mask must be [B, T]", &[&[b, t], &[m.len()]]));
        }
    }
    let be = tape.backend();
    let bias_values = bias.map(|v| tape.value(v).data());
    let kernel_value = tape.value(kernel);
    let packed_kernel = opts.packed_form(kernel_value);
    let gates =
        input_projection(be, tape.value(x).data(), b * t, (kernel_value.data(), packed_kernel), (i, g4), bias_values)?;
    let Recurrence { out, gates, cs, tc, hprev } = recur(be, gates, tape.value(recurrent), (b, t, u), &opts)?;
    let rule = LstmBackward { x, kernel, recurrent, bias, opts, dims: (b, t, i, u), gates, cs, tc, hprev };
    Ok(tape.push(out, Box::new(rule)))
}

/// The LSTM in inference over token ids whose input projections were made
/// beforehand: row `id` of `table: [V, 4u]` is `embeddings[id]·kernel + bias`
/// ([`input_projection`] of the embedding table). Where the backend's rows are
/// independent this gives the bits of [`lstm`] over the embedded tokens,
/// without a product per token. Nothing here has a gradient: the output is a
/// constant of the tape. An id outside the table is the error the embedding
/// lookup gives, naming `embedding_layer`.
pub fn lstm_over_projected_tokens(
    tape: &mut Tape,
    table: &Tensor,
    ids: &IntTensor,
    recurrent: Var,
    opts: LstmOptions,
    embedding_layer: &str,
) -> Result<Var> {
    let (ts, rs, is) = (table.shape().to_vec(), tape.shape(recurrent).to_vec(), ids.shape().to_vec());
    if ts.len() != 2 || rs.len() != 2 || is.len() != 2 || rs[1] != ts[1] || rs[1] != 4 * rs[0] {
        return Err(OpsError::shape("lstm", "ids [B,T], table [V,4u], recurrent_kernel [u,4u]", &[&is, &ts, &rs]));
    }
    let (b, t, vocab, g4) = (is[0], is[1], ts[0], ts[1]);
    if opts.mask.as_ref().is_some_and(|m| m.len() != b * t) {
        return Err(OpsError::shape("lstm", "mask must be [B, T]", &[&[b, t]]));
    }
    super::embedding::check_ids(ids, vocab, embedding_layer)?;
    let be = tape.backend();
    let mut gates = be.zeros(b * t * g4)?;
    be.gather_rows(table.data(), g4, ids.data(), &mut gates)?;
    let run = recur(be, gates, tape.value(recurrent), (b, t, rs[0]), &opts)?;
    Ok(tape.leaf(run.out, false))
}

/// `x·kernel + bias` for every row of `x: [rows, I]` (`kernel: [I, 4u]`, its
/// shape given as `(I, 4u)`, with its packed form where the pass has one): the
/// gate inputs of all steps at once, rows (batch, step), batch-major. The one
/// place this product is made, so that a table of projected tokens has the
/// bits [`lstm`] computes.
pub fn input_projection(
    be: &dyn Backend,
    x: &[f32],
    rows: usize,
    (kernel, packed): (&[f32], Option<&PackedMat>),
    (inputs, g4): (usize, usize),
    bias: Option<&[f32]>,
) -> Result<Buf> {
    let mut gates = match bias {
        Some(bd) => be.rows_of(bd, rows)?,
        None => be.zeros(rows * g4)?,
    };
    let (x, k) = (MatRef::dense(x, rows, inputs), MatRef::dense(kernel, inputs, g4));
    be.matmul_packed(x, k, packed, MatMut::dense(&mut gates, rows, g4), bias.is_some())?;
    Ok(gates)
}

/// What the recurrence computed: the output, and what backward needs.
struct Recurrence {
    out: Tensor,
    /// Activated gates of every (batch, step) row.
    gates: Buf,
    /// `c_t`, `tanh(c_t)` and `h_{t-1}` of every row.
    cs: Buf,
    tc: Buf,
    hprev: Buf,
}

/// The steps of the LSTM, given every row's projected gate inputs: each step
/// adds `h_{t-1}·recurrent_kernel` and applies the gates.
fn recur(
    be: &dyn Backend,
    mut gates: Buf,
    recurrent: &Tensor,
    dims: (usize, usize, usize),
    opts: &LstmOptions,
) -> Result<Recurrence> {
    let (b, t, u) = dims;
    let g4 = 4 * u;
    let (rk, packed_rk) = (recurrent.data(), opts.packed_form(recurrent));
    // hprev[(b, t)] = h_{t-1}; c[(b, t)] = c_t; tc = tanh(c_t).
    let mut hprev = be.zeros(b * t * u)?;
    let mut cs = be.zeros(b * t * u)?;
    let mut tc = be.zeros(b * t * u)?;
    let mut h_last = be.zeros(b * u)?;
    let dims = SequenceDims { batch: b, steps: t, units: u };
    let mask = opts.mask.as_ref().map(|m| m.as_slice());
    for step in 0..t {
        if step > 0 {
            let h = MatRef { data: &hprev, offset: step * u, rows: b, cols: u, row_stride: t * u, col_stride: 1 };
            let z =
                MatMut { data: &mut gates, offset: step * g4, rows: b, cols: g4, row_stride: t * g4, col_stride: 1 };
            be.matmul_packed(h, MatRef::dense(rk, u, g4), packed_rk, z, true)?;
        }
        let (gates, cs, tc, hprev, h_last) = (&mut gates, &mut cs, &mut tc, &mut hprev, &mut h_last);
        be.recurrent(RecurrentCall::LstmStep { step, dims, mask, gates, cs, tc, hprev, h_last })?;
    }
    let out = sequence_output(be, &hprev, h_last, dims, opts.return_sequences)?;
    Ok(Recurrence { out, gates, cs, tc, hprev })
}

struct LstmBackward {
    x: Var,
    kernel: Var,
    recurrent: Var,
    bias: Option<Var>,
    opts: LstmOptions,
    dims: (usize, usize, usize, usize),
    gates: Buf,
    cs: Buf,
    tc: Buf,
    hprev: Buf,
}

impl Backward for LstmBackward {
    fn name(&self) -> &'static str {
        "lstm"
    }
    fn inputs(&self) -> Vec<Var> {
        let mut v = vec![self.x, self.kernel, self.recurrent];
        v.extend(self.bias);
        v
    }
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let (b, t, i, u) = self.dims;
        let g4 = 4 * u;
        let be = tape.backend();
        // U^T, contiguous: the per-step dh GEMM runs much faster on a row-major operand.
        let rk_t = super::transpose(be, tape.value(self.recurrent).data(), u, g4)?;
        let dims = SequenceDims { batch: b, steps: t, units: u };
        let mask = self.opts.mask.as_ref().map(|m| m.as_slice());
        let mut dz = be.zeros(b * t * g4)?;
        let mut dh = if self.opts.return_sequences { be.zeros(b * u)? } else { be.buf_from(dy)? };
        let mut dc = be.zeros(b * u)?;
        let mut dh_next = be.zeros(b * u)?;
        for step in (0..t).rev() {
            if self.opts.return_sequences {
                add_step_gradient(be, dy, step, dims, &mut dh)?;
            }
            be.recurrent(RecurrentCall::LstmStepBackward {
                step,
                dims,
                mask,
                gates: &self.gates,
                cs: &self.cs,
                tc: &self.tc,
                dh: &dh,
                dc: &mut dc,
                dz: &mut dz,
            })?;
            if step == 0 {
                break;
            }
            // dh_{t-1} = dZ_t · U^T for valid rows; masked rows carry dh.
            be.matmul(
                MatRef { data: &dz, offset: step * g4, rows: b, cols: g4, row_stride: t * g4, col_stride: 1 },
                MatRef::dense(&rk_t, g4, u),
                MatMut::dense(&mut dh_next, b, u),
                false,
            )?;
            if let Some(mask) = mask {
                be.recurrent(RecurrentCall::CarryMasked { step, dims, mask, dh: &dh, dh_prev: &mut dh_next })?;
            }
            std::mem::swap(&mut dh, &mut dh_next);
        }
        let dz_m = MatRef::dense(&dz, b * t, g4);
        if let Some(dk) = grads.slot(self.kernel, i * g4)? {
            be.matmul(MatRef::dense(tape.value(self.x).data(), b * t, i).t(), dz_m, MatMut::dense(dk, i, g4), true)?;
        }
        if let Some(du) = grads.slot(self.recurrent, u * g4)? {
            be.matmul(MatRef::dense(&self.hprev, b * t, u).t(), dz_m, MatMut::dense(du, u, g4), true)?;
        }
        if let Some(bv) = self.bias {
            if let Some(db) = grads.slot(bv, g4)? {
                be.sum_rows(&dz, g4, db)?;
            }
        }
        if let Some(dx) = grads.slot(self.x, b * t * i)? {
            be.matmul(
                dz_m,
                MatRef::dense(tape.value(self.kernel).data(), i, g4).t(),
                MatMut::dense(dx, b * t, i),
                true,
            )?;
        }
        Ok(())
    }
}
