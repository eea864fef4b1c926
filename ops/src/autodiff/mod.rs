//! Reverse-mode automatic differentiation on an eager tape.
//!
//! Each op runs its forward kernel at once, pushes its output on the [`Tape`]
//! and records a [`Backward`] rule next to it (in the same file: forward and
//! backward side by side). [`Tape::backward`] walks the tape in reverse and
//! returns a [`Gradients`] store. Only values that depend on a leaf created
//! with `requires_grad` get a gradient: data inputs and frozen weights cost
//! nothing in the backward pass.
//!
//! Recurrent layers are single fused ops over the whole sequence (as cuDNN
//! does): the input projection of all time steps is one GEMM, and so are the
//! weight gradients after back-propagation through time.

mod activation;
mod batchnorm;
mod conv;
mod depthwise;
mod embedding;
mod gru;
mod linear;
mod loss;
mod lstm;
mod pool;
mod sequence;
mod shape;
mod tape;
mod window;

pub use activation::activation;
pub use batchnorm::{batch_norm, BatchMoments, BatchNormStats};
pub use conv::{conv2d, Conv2dOptions};
pub use depthwise::depthwise_conv2d;
pub use embedding::embedding;
pub use gru::{gru, GruOptions};
pub use linear::{add, dense, dropout, scale_shift, weighted_sum};
pub use loss::{binary_crossentropy, categorical_crossentropy, mean_squared_error, sparse_categorical_crossentropy};
pub use lstm::{input_projection, lstm, lstm_over_projected_tokens, LstmOptions};
pub use pool::{global_pool2d, pool2d, PoolKind};
pub use shape::{concat_last, reshape, zero_pad2d};
pub use tape::{Backward, Gradients, Tape, TouchedRows, Var};
pub use window::{Padding, Window2d};

/// A `[batch, time]` mask of valid time steps (true = keep), from an Embedding with `mask_zero`.
pub type Mask = std::sync::Arc<Vec<bool>>;

/// A row-major `rows x cols` matrix transposed into a new row-major `cols x rows` one.
pub(crate) fn transpose(
    be: &dyn crate::backend::Backend,
    a: &[f32],
    rows: usize,
    cols: usize,
) -> crate::Result<crate::buf::Buf> {
    use crate::backend::{MatMut, MatRef};
    let mut t = be.zeros(rows * cols)?;
    be.copy(MatRef::dense(a, rows, cols).t(), MatMut::dense(&mut t, cols, rows), false)?;
    Ok(t)
}
