//! Pooling and batch normalisation over channels-last data.

use crate::autodiff::Window2d;

/// Pooling on NHWC images (`c` channels). Max pooling records, per output, the
/// flat input index it picked (the first maximal cell); average pooling takes
/// `1 / valid cells` per output pixel from the op (padded cells never count).
#[derive(Debug)]
pub enum PoolCall<'a> {
    /// Windowed max: writes `y` and `argmax` (both `[N, OH, OW, C]`).
    MaxForward { win: &'a Window2d, c: usize, x: &'a [f32], y: &'a mut [f32], argmax: &'a mut [usize] },
    /// Windowed average: writes `y`; `inv_count` has one entry per output pixel of an image.
    AverageForward { win: &'a Window2d, c: usize, x: &'a [f32], inv_count: &'a [f32], y: &'a mut [f32] },
    /// `dx[argmax[i]] += dy[i]`: the backward pass of every max pooling.
    MaxBackward { dy: &'a [f32], argmax: &'a [usize], dx: &'a mut [f32] },
    /// Spreads `dy` back over each window, scaled by `inv_count`.
    AverageBackward { win: &'a Window2d, c: usize, dy: &'a [f32], inv_count: &'a [f32], dx: &'a mut [f32] },
    /// Global max over the `pixels` of each image: `y` and `argmax` are `[N, C]`.
    GlobalMaxForward { pixels: usize, c: usize, x: &'a [f32], y: &'a mut [f32], argmax: &'a mut [usize] },
    /// Global average over the `pixels` of each image: `y` is `[N, C]`.
    GlobalAverageForward { pixels: usize, c: usize, x: &'a [f32], y: &'a mut [f32] },
    /// Adds `dy / pixels` to every pixel of each image.
    GlobalAverageBackward { pixels: usize, c: usize, dy: &'a [f32], dx: &'a mut [f32] },
}

/// The per-channel statistics that normalise a batch: its own (training,
/// summed in f64) or given ones (the moving statistics, in inference).
#[derive(Clone, Copy, Debug)]
pub enum ChannelStats<'a> {
    Batch { mean: &'a [f64], variance: &'a [f64] },
    Given { mean: &'a [f32], variance: &'a [f32] },
}

/// Batch normalisation over the last axis (`c` channels, any number of rows).
/// Sums run in f64.
#[derive(Debug)]
pub enum BatchNormCall<'a> {
    /// Per-channel mean and biased variance of `x` (two passes).
    Moments { c: usize, x: &'a [f32], mean: &'a mut [f64], variance: &'a mut [f64] },
    /// `y = gamma · (x - mean) · inv_std + beta` per channel, with
    /// `inv_std = 1 / sqrt(variance + epsilon)` (absent gamma and beta: 1 and
    /// 0); writes what backward needs: `mean` and `inv_std` as f32 and
    /// `scale = gamma · inv_std`.
    Normalize {
        x: &'a [f32],
        stats: ChannelStats<'a>,
        epsilon: f32,
        gamma: Option<&'a [f32]>,
        beta: Option<&'a [f32]>,
        y: &'a mut [f32],
        mean: &'a mut [f32],
        inv_std: &'a mut [f32],
        scale: &'a mut [f32],
    },
    /// Per channel, `Σ dy` and `Σ dy · x̂` with `x̂ = (x - mean) · inv_std`:
    /// adds them to `dbeta` and `dgamma` (where given) and writes their means
    /// over the rows.
    BackwardSums {
        x: &'a [f32],
        dy: &'a [f32],
        mean: &'a [f32],
        inv_std: &'a [f32],
        dgamma: Option<&'a mut [f32]>,
        dbeta: Option<&'a mut [f32]>,
        mean_dy: &'a mut [f32],
        mean_dy_xhat: &'a mut [f32],
    },
    /// Adds the input gradient: with batch statistics
    /// `scale · (dy - mean_dy - x̂ · mean_dy_xhat)`, else `scale · dy`.
    BackwardInput {
        x: &'a [f32],
        dy: &'a [f32],
        mean: &'a [f32],
        inv_std: &'a [f32],
        scale: &'a [f32],
        /// `(mean_dy, mean_dy_xhat)` when the batch's own statistics normalised it.
        batch_means: Option<(&'a [f32], &'a [f32])>,
        dx: &'a mut [f32],
    },
}
