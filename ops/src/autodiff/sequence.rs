//! What the recurrent ops (LSTM, GRU) share around their steps: the output
//! assembled from each step's `h`, and the output gradient each step adds.

use crate::backend::calls::SequenceDims;
use crate::backend::{Backend, MatMut, MatRef};
use crate::buf::Buf;
use crate::error::Result;
use crate::tensor::Tensor;

/// The recurrent op's output: every step's `h` (`[B, T, u]`, step `t` being
/// row `t + 1` of `hprev`, the last step `h_last`) or the last one (`[B, u]`).
pub(crate) fn sequence_output(
    be: &dyn Backend,
    hprev: &[f32],
    h_last: Buf,
    SequenceDims { batch: b, steps: t, units: u }: SequenceDims,
    return_sequences: bool,
) -> Result<Tensor> {
    if !return_sequences {
        return Tensor::from_buf(&[b, u], h_last);
    }
    let mut y = be.zeros(b * t * u)?;
    if t == 0 {
        return Tensor::from_buf(&[b, t, u], y);
    }
    let earlier = (t - 1) * u;
    let src = MatRef { data: hprev, offset: u, rows: b, cols: earlier, row_stride: t * u, col_stride: 1 };
    be.copy(src, MatMut { data: &mut y, offset: 0, rows: b, cols: earlier, row_stride: t * u, col_stride: 1 }, false)?;
    let last = MatMut { data: &mut y, offset: earlier, rows: b, cols: u, row_stride: t * u, col_stride: 1 };
    be.copy(MatRef::dense(&h_last, b, u), last, false)?;
    Tensor::from_buf(&[b, t, u], y)
}

/// `dh += dy[:, step]`: the gradient a `return_sequences` output adds at each step.
pub(crate) fn add_step_gradient(
    be: &dyn Backend,
    dy: &[f32],
    step: usize,
    dims: SequenceDims,
    dh: &mut [f32],
) -> Result<()> {
    let SequenceDims { batch: b, steps: t, units: u } = dims;
    let src = MatRef { data: dy, offset: step * u, rows: b, cols: u, row_stride: t * u, col_stride: 1 };
    be.copy(src, MatMut::dense(dh, b, u), true)
}
