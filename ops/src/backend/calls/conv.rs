//! Convolution kernels other than the products: im2col and its adjoint, and
//! the direct depthwise convolution. Images are NHWC.

use crate::autodiff::Window2d;

/// im2col over images `[first, end)` of `x` (`c` channels): one row of
/// `kh * kw * c` values per output pixel, zeros where the window leaves the
/// input; and the adjoint, which adds such rows back onto the images.
#[derive(Debug)]
pub enum Im2colCall<'a> {
    /// Writes the rows into `cols` (`(end - first) * out_pixels * kh * kw * c` values).
    Gather { win: &'a Window2d, c: usize, x: &'a [f32], images: (usize, usize), cols: &'a mut [f32] },
    /// Adds `cols`, shaped as `Gather` writes it, onto the images of `dx` (col2im).
    ScatterAdd { win: &'a Window2d, c: usize, cols: &'a [f32], images: (usize, usize), dx: &'a mut [f32] },
}

/// Depthwise convolution: x `[N, H, W, C]`, kernel `[kh, kw, C, dm]`, output
/// `[N, OH, OW, C * dm]` where channel `c * dm + m` uses kernel slice `[:, :, c, m]`.
#[derive(Debug)]
pub enum DepthwiseCall<'a> {
    /// `y += conv(x, kernel)` (`y` arrives holding the bias, or zeros).
    Forward { win: &'a Window2d, c: usize, dm: usize, x: &'a [f32], kernel: &'a [f32], y: &'a mut [f32] },
    /// Adds the gradients w.r.t. the input and the kernel (where asked for) given `dy`.
    Backward {
        win: &'a Window2d,
        c: usize,
        dm: usize,
        x: &'a [f32],
        kernel: &'a [f32],
        dy: &'a [f32],
        dx: Option<&'a mut [f32]>,
        dkernel: Option<&'a mut [f32]>,
    },
}
