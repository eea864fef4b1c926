//! Sliding-window geometry shared by the convolutions and the pooling ops on
//! NHWC tensors: strides, dilation, and Keras/TensorFlow `'valid'` and
//! `'same'` padding.
//!
//! `'same'` pads exactly as TensorFlow does, so that weights trained in Keras
//! see the same pixels here: `out = ceil(in / stride)`, total padding
//! `max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)`, of which
//! `total / 2` goes before (top, left) and the rest after. With stride 2 on an
//! even size that is 0 before and 1 after, unlike PyTorch's symmetric padding.

use crate::error::{OpsError, Result};
use serde::{Deserialize, Serialize};

/// Keras `padding` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: windows lie inside the input.
    Valid,
    /// Zero padding (or, for pooling, ignored cells) so that `out = ceil(in / stride)`.
    Same,
}

/// Where each window of a 2-D op lands on its `[H, W]` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2d {
    pub in_h: usize,
    pub in_w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Output size and padding before, along one axis; `None` if no window fits.
fn axis(input: usize, k: usize, stride: usize, dilation: usize, padding: Padding) -> Option<(usize, usize)> {
    let span = (k - 1) * dilation + 1;
    match padding {
        Padding::Valid => (input >= span).then(|| ((input - span) / stride + 1, 0)),
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + span).saturating_sub(input);
            (out > 0).then_some((out, total / 2))
        }
    }
}

impl Window2d {
    /// The geometry of a `kernel` window moved by `strides` with `dilation` over an `[in_h, in_w]` input.
    /// `op` names the caller in the error when a size is zero or no window fits.
    pub fn new(
        op: &str,
        input: (usize, usize),
        kernel: (usize, usize),
        strides: (usize, usize),
        dilation: (usize, usize),
        padding: Padding,
    ) -> Result<Self> {
        let all = [kernel.0, kernel.1, strides.0, strides.1, dilation.0, dilation.1];
        if all.contains(&0) {
            return Err(OpsError::shape(
                op,
                "kernel, strides and dilation must be positive",
                &[&[kernel.0, kernel.1], &[strides.0, strides.1], &[dilation.0, dilation.1]],
            ));
        }
        let h = axis(input.0, kernel.0, strides.0, dilation.0, padding);
        let w = axis(input.1, kernel.1, strides.1, dilation.1, padding);
        let (Some((out_h, pad_top)), Some((out_w, pad_left))) = (h, w) else {
            return Err(OpsError::shape(
                op,
                format!(
                    "a {}x{} window (dilation {:?}) does not fit the input with {padding:?} padding",
                    kernel.0, kernel.1, dilation
                ),
                &[&[input.0, input.1]],
            ));
        };
        Ok(Window2d {
            in_h: input.0,
            in_w: input.1,
            kh: kernel.0,
            kw: kernel.1,
            sh: strides.0,
            sw: strides.1,
            dh: dilation.0,
            dw: dilation.1,
            pad_top,
            pad_left,
            out_h,
            out_w,
        })
    }

    /// Input row of kernel row `ky` for output row `oy`, or `None` in the padding.
    #[inline]
    pub fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.sh + ky * self.dh).checked_sub(self.pad_top).filter(|&r| r < self.in_h)
    }

    /// Input column of kernel column `kx` for output column `ox`, or `None` in the padding.
    #[inline]
    pub fn in_col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.sw + kx * self.dw).checked_sub(self.pad_left).filter(|&c| c < self.in_w)
    }

    /// Calls `f(tap, input_pixel)` for every tap `ky * kw + kx` of output `(oy, ox)`
    /// that lies inside the input (pixels are `iy * in_w + ix`).
    #[inline]
    pub fn for_each_tap(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for ky in 0..self.kh {
            let Some(iy) = self.in_row(oy, ky) else { continue };
            for kx in 0..self.kw {
                if let Some(ix) = self.in_col(ox, kx) {
                    f(ky * self.kw + kx, iy * self.in_w + ix);
                }
            }
        }
    }

    /// Whether every window lies inside the input and the windows tile it exactly
    /// (a 1x1 stride-1 convolution is then a plain matrix product).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pad_top == 0 && self.pad_left == 0
    }
}

/// Checks that `x` is `[N, H, W, C]` and returns its dimensions.
pub(crate) fn nhwc(op: &str, shape: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match shape {
        [n, h, w, c] => Ok((*n, *h, *w, *c)),
        _ => Err(OpsError::shape(op, "input must be [batch, height, width, channels]", &[shape])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 64 -> 32 with k=3, s=2: total pad 1, all of it after.
        let w = Window2d::new("t", (64, 64), (3, 3), (2, 2), (1, 1), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (32, 0));
        // 5 -> 3 with k=3, s=2: total pad 2 -> 1 before, 1 after.
        let w = Window2d::new("t", (5, 5), (3, 3), (2, 2), (1, 1), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (3, 1));
        // k=4, s=1 on 6: total 3 -> 1 before, 2 after.
        let w = Window2d::new("t", (6, 6), (4, 4), (1, 1), (1, 1), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (6, 1));
        // dilation 2, k=3 (span 5), s=1 on 7: total 4 -> 2 before.
        let w = Window2d::new("t", (7, 7), (3, 3), (1, 1), (2, 2), Padding::Same).unwrap();
        assert_eq!((w.out_h, w.pad_top), (7, 2));
    }

    #[test]
    fn valid_padding_and_errors() {
        let w = Window2d::new("t", (7, 8), (3, 3), (2, 2), (1, 1), Padding::Valid).unwrap();
        assert_eq!((w.out_h, w.out_w), (3, 3));
        assert!(Window2d::new("t", (2, 8), (3, 3), (1, 1), (1, 1), Padding::Valid).is_err());
        assert!(Window2d::new("t", (8, 8), (3, 3), (0, 1), (1, 1), Padding::Valid).is_err());
    }
}
