//! The CPU's im2col (and its adjoint) and direct depthwise convolution (see
//! [`crate::backend::calls::Im2colCall`] and [`crate::backend::calls::DepthwiseCall`]).

use super::super::calls::{DepthwiseCall, Im2colCall};
use crate::autodiff::Window2d;
use crate::error::{OpsError, Result};

pub(super) fn im2col(call: Im2colCall<'_>) -> Result<()> {
    match call {
        Im2colCall::Gather { win, c, x, images, cols } => {
            check_images(win, c, x.len(), images, cols.len())?;
            gather(win, c, x, images, cols);
        }
        Im2colCall::ScatterAdd { win, c, cols, images, dx } => {
            check_images(win, c, dx.len(), images, cols.len())?;
            scatter_add(win, c, cols, images, dx);
        }
    }
    Ok(())
}

/// Checks that images `[first, end)` lie in `x` and that `cols` holds their im2col rows.
fn check_images(win: &Window2d, c: usize, x: usize, (first, end): (usize, usize), cols: usize) -> Result<()> {
    let img = win.in_h * win.in_w * c;
    let rows = (end.saturating_sub(first)) * win.out_h * win.out_w;
    if first > end || end * img > x || cols != rows * win.kh * win.kw * c {
        return Err(OpsError::shape("im2col", "images or rows do not fit their buffers", &[&[first, end], &[x, cols]]));
    }
    Ok(())
}

fn gather(w: &Window2d, c: usize, x: &[f32], (f0, f1): (usize, usize), buf: &mut [f32]) {
    let img = w.in_h * w.in_w * c;
    let kk = w.kh * w.kw * c;
    // With dilation 1, the kw taps of one kernel row are kw * c contiguous input
    // values whenever the window lies inside the input horizontally: one copy.
    let contiguous = w.dw == 1;
    let mut row = 0;
    for f in f0..f1 {
        let xi = &x[f * img..(f + 1) * img];
        for oy in 0..w.out_h {
            for ox in 0..w.out_w {
                let dst = &mut buf[row * kk..(row + 1) * kk];
                let first = w.in_col(ox, 0);
                let inside = contiguous && first.is_some() && w.in_col(ox, w.kw - 1).is_some();
                for ky in 0..w.kh {
                    let seg = &mut dst[ky * w.kw * c..(ky + 1) * w.kw * c];
                    let Some(iy) = w.in_row(oy, ky) else {
                        seg.fill(0.0);
                        continue;
                    };
                    if let (true, Some(ix)) = (inside, first) {
                        let at = (iy * w.in_w + ix) * c;
                        copy_floats(seg, &xi[at..at + w.kw * c]);
                        continue;
                    }
                    for kx in 0..w.kw {
                        let d = &mut seg[kx * c..(kx + 1) * c];
                        match w.in_col(ox, kx) {
                            Some(ix) => copy_floats(d, &xi[(iy * w.in_w + ix) * c..(iy * w.in_w + ix + 1) * c]),
                            None => d.fill(0.0),
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

fn scatter_add(w: &Window2d, c: usize, dcols: &[f32], (f0, f1): (usize, usize), dx: &mut [f32]) {
    let img = w.in_h * w.in_w * c;
    let kk = w.kh * w.kw * c;
    let mut row = 0;
    for f in f0..f1 {
        let xi = &mut dx[f * img..(f + 1) * img];
        for oy in 0..w.out_h {
            for ox in 0..w.out_w {
                let src = &dcols[row * kk..(row + 1) * kk];
                for ky in 0..w.kh {
                    let Some(iy) = w.in_row(oy, ky) else { continue };
                    for kx in 0..w.kw {
                        if let Some(ix) = w.in_col(ox, kx) {
                            let s = &src[(ky * w.kw + kx) * c..(ky * w.kw + kx + 1) * c];
                            let d = &mut xi[(iy * w.in_w + ix) * c..(iy * w.in_w + ix + 1) * c];
                            d.iter_mut().zip(s).for_each(|(a, g)| *a += g);
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// `dst = src` for the short runs of im2col (a kernel row of a few channels):
/// fixed-size 8-float moves instead of a `memcpy` call per run, which costs more
/// than the copy itself when `kw * c` is 9 (RGB input).
#[inline(always)]
fn copy_floats(dst: &mut [f32], src: &[f32]) {
    if dst.len() >= 64 {
        dst.copy_from_slice(src);
        return;
    }
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; 8] = s.try_into().expect("chunks of 8");
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

pub(super) fn depthwise(call: DepthwiseCall<'_>) -> Result<()> {
    match call {
        DepthwiseCall::Forward { win, c, dm, x, kernel, y } => {
            check_depthwise(win, c, dm, x.len(), kernel.len(), y.len())?;
            depthwise_forward(win, c, dm, x, kernel, y);
        }
        DepthwiseCall::Backward { win, c, dm, x, kernel, dy, dx, dkernel } => {
            check_depthwise(win, c, dm, x.len(), kernel.len(), dy.len())?;
            let bad = dx.as_ref().is_some_and(|d| d.len() != x.len())
                || dkernel.as_ref().is_some_and(|d| d.len() != kernel.len());
            if bad {
                return Err(OpsError::shape("depthwise_conv2d", "gradients differ from their values in size", &[]));
            }
            depthwise_backward(win, c, dm, (x, kernel, dy), dx, dkernel);
        }
    }
    Ok(())
}

fn check_depthwise(win: &Window2d, c: usize, dm: usize, x: usize, k: usize, y: usize) -> Result<()> {
    let img = win.in_h * win.in_w * c;
    let oc = c * dm;
    let n = x.checked_div(img).unwrap_or(0);
    let fits = img > 0 && x == n * img && k == win.kh * win.kw * oc && y == n * win.out_h * win.out_w * oc;
    if !fits {
        return Err(OpsError::shape("depthwise_conv2d", "buffers do not fit the window and channels", &[&[x, k, y]]));
    }
    Ok(())
}

fn depthwise_forward(win: &Window2d, c: usize, dm: usize, xv: &[f32], kv: &[f32], y: &mut [f32]) {
    let oc = c * dm;
    let img = win.in_h * win.in_w * c;
    for (p, out) in y.chunks_exact_mut(oc).enumerate() {
        let (f, oy, ox) = (p / (win.out_h * win.out_w), p / win.out_w % win.out_h, p % win.out_w);
        win.for_each_tap(oy, ox, |tap, pix| {
            let xp = &xv[f * img + pix * c..f * img + (pix + 1) * c];
            let kt = &kv[tap * oc..(tap + 1) * oc];
            for (ci, &xc) in xp.iter().enumerate() {
                let o = &mut out[ci * dm..(ci + 1) * dm];
                o.iter_mut().zip(&kt[ci * dm..(ci + 1) * dm]).for_each(|(a, k)| *a += xc * k);
            }
        });
    }
}

fn depthwise_backward(
    win: &Window2d,
    c: usize,
    dm: usize,
    (xv, kv, dy): (&[f32], &[f32], &[f32]),
    mut dx: Option<&mut [f32]>,
    mut dk: Option<&mut [f32]>,
) {
    let oc = c * dm;
    let img = win.in_h * win.in_w * c;
    for (p, g) in dy.chunks_exact(oc).enumerate() {
        let (f, oy, ox) = (p / (win.out_h * win.out_w), p / win.out_w % win.out_h, p % win.out_w);
        win.for_each_tap(oy, ox, |tap, pix| {
            let at = f * img + pix * c;
            for ci in 0..c {
                let gs = &g[ci * dm..(ci + 1) * dm];
                if let Some(dx) = dx.as_deref_mut() {
                    let ks = &kv[tap * oc + ci * dm..tap * oc + (ci + 1) * dm];
                    dx[at + ci] += gs.iter().zip(ks).map(|(a, b)| a * b).sum::<f32>();
                }
                if let Some(dk) = dk.as_deref_mut() {
                    let xc = xv[at + ci];
                    let d = &mut dk[tap * oc + ci * dm..tap * oc + (ci + 1) * dm];
                    d.iter_mut().zip(gs).for_each(|(a, b)| *a += xc * b);
                }
            }
        });
    }
}
