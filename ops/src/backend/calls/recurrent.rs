//! The per-step gate work of the recurrent layers. Buffers hold one row per
//! (batch, step), batch-major: row `r = b * steps + t`. The products
//! (`h_{t-1}·U`) are separate [`super::super::Backend::matmul`] calls.

/// Batch, steps and units of one recurrent op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceDims {
    pub batch: usize,
    pub steps: usize,
    pub units: usize,
}

/// One step of an LSTM or GRU (Keras layouts: LSTM gates i, f, c, o; GRU
/// gates z, r, h with the reset applied after the recurrent product).
/// `mask` (one flag per row, `None` = all valid) marks padding steps, which
/// carry `h` and `c` unchanged.
#[derive(Debug)]
pub enum RecurrentCall<'a> {
    /// Activates step `step`'s gate inputs in `gates` (`[rows, 4u]`, already
    /// `x·W + b + h_{t-1}·U`), then writes `c_t` into `cs`, `tanh(c_t)` into
    /// `tc`, and `h_t` into the next row of `hprev` (or into `h_last`, `[B, u]`,
    /// at the last step).
    LstmStep {
        step: usize,
        dims: SequenceDims,
        mask: Option<&'a [bool]>,
        gates: &'a mut [f32],
        cs: &'a mut [f32],
        tc: &'a mut [f32],
        hprev: &'a mut [f32],
        h_last: &'a mut [f32],
    },
    /// Back-propagates step `step` through the LSTM gates: from `dh` and `dc`
    /// (`[B, u]`, the gradients w.r.t. `h_t` and `c_t`) writes the step's
    /// gate-input gradients into `dz` and turns `dc` into the gradient w.r.t.
    /// `c_{t-1}`. Masked rows are left alone.
    LstmStepBackward {
        step: usize,
        dims: SequenceDims,
        mask: Option<&'a [bool]>,
        gates: &'a [f32],
        cs: &'a [f32],
        tc: &'a [f32],
        dh: &'a [f32],
        dc: &'a mut [f32],
        dz: &'a mut [f32],
    },
    /// `dh_prev[row] = dh[row]` for the rows of step `step` that the mask
    /// drops (their state was carried, so is their gradient).
    CarryMasked { step: usize, dims: SequenceDims, mask: &'a [bool], dh: &'a [f32], dh_prev: &'a mut [f32] },
    /// One GRU step: `xz` rows (`[rows, 3u]`, `x·W + b_in`) become the
    /// activated z, r and candidate; `rec` rows are `h_{t-1}·U + b_rec`; `h_t`
    /// goes into the next row of `hprev` or into `h_last`.
    GruStep {
        step: usize,
        dims: SequenceDims,
        mask: Option<&'a [bool]>,
        xz: &'a mut [f32],
        rec: &'a [f32],
        hprev: &'a mut [f32],
        h_last: &'a mut [f32],
    },
    /// Back-propagates step `step` through the GRU gates: from `dh` writes the
    /// gate gradients of the input side (`dxz`) and the recurrent side
    /// (`drec`), and the direct part of the gradient w.r.t. `h_{t-1}` into
    /// `dh_prev` (a masked row passes `dh` through).
    GruStepBackward {
        step: usize,
        dims: SequenceDims,
        mask: Option<&'a [bool]>,
        xz: &'a [f32],
        rec: &'a [f32],
        hprev: &'a [f32],
        dh: &'a [f32],
        dh_prev: &'a mut [f32],
        dxz: &'a mut [f32],
        drec: &'a mut [f32],
    },
}
