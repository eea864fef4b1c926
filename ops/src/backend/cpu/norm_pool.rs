//! The CPU's pooling and batch-normalisation kernels (see
//! [`crate::backend::calls::PoolCall`] and [`crate::backend::calls::BatchNormCall`]).

use super::super::calls::{BatchNormCall, ChannelStats, PoolCall};
use crate::autodiff::Window2d;
use crate::error::{OpsError, Result};

fn bad(op: &str, what: &str, sizes: &[usize]) -> OpsError {
    OpsError::shape(op, what, &[sizes])
}

/// Checks that `x` holds whole images and `y` their pooled outputs; returns the image count.
fn check_windows(win: &Window2d, c: usize, x: usize, y: usize) -> Result<usize> {
    let img = win.in_h * win.in_w * c;
    let n = x.checked_div(img).unwrap_or(0);
    if img == 0 || x != n * img || y != n * win.out_h * win.out_w * c {
        return Err(bad("pool2d", "buffers do not fit the window and channels", &[x, y]));
    }
    Ok(n)
}

pub(super) fn pool(call: PoolCall<'_>) -> Result<()> {
    match call {
        PoolCall::MaxForward { win, c, x, y, argmax } => {
            check_windows(win, c, x.len(), y.len())?;
            if argmax.len() != y.len() {
                return Err(bad("max_pool2d", "one index per output", &[argmax.len(), y.len()]));
            }
            let (h, w, out_px) = (win.in_h, win.in_w, win.out_h * win.out_w);
            for (p, (out, arg)) in y.chunks_exact_mut(c).zip(argmax.chunks_exact_mut(c)).enumerate() {
                let (f, oy, ox) = (p / out_px, p / win.out_w % win.out_h, p % win.out_w);
                out.fill(f32::NEG_INFINITY);
                win.for_each_tap(oy, ox, |_, pix| {
                    let at = (f * h * w + pix) * c;
                    for (ci, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
                        let v = x[at + ci];
                        if v > *o {
                            *o = v;
                            *a = at + ci;
                        }
                    }
                });
            }
        }
        PoolCall::AverageForward { win, c, x, inv_count, y } => {
            check_windows(win, c, x.len(), y.len())?;
            let (h, w, out_px) = (win.in_h, win.in_w, win.out_h * win.out_w);
            if inv_count.len() != out_px {
                return Err(bad("avg_pool2d", "one count per output pixel", &[inv_count.len(), out_px]));
            }
            for (p, out) in y.chunks_exact_mut(c).enumerate() {
                let (f, oy, ox) = (p / out_px, p / win.out_w % win.out_h, p % win.out_w);
                out.fill(0.0);
                win.for_each_tap(oy, ox, |_, pix| {
                    let at = (f * h * w + pix) * c;
                    out.iter_mut().zip(&x[at..at + c]).for_each(|(o, v)| *o += v);
                });
                let s = inv_count[p % out_px];
                out.iter_mut().for_each(|o| *o *= s);
            }
        }
        PoolCall::MaxBackward { dy, argmax, dx } => {
            if argmax.len() != dy.len() || argmax.iter().any(|&a| a >= dx.len()) {
                return Err(bad("max_pool2d", "indices do not fit the gradients", &[dy.len(), dx.len()]));
            }
            for (g, &a) in dy.iter().zip(argmax) {
                dx[a] += g;
            }
        }
        PoolCall::AverageBackward { win, c, dy, inv_count, dx } => {
            check_windows(win, c, dx.len(), dy.len())?;
            let out_px = win.out_h * win.out_w;
            if inv_count.len() != out_px {
                return Err(bad("avg_pool2d", "one count per output pixel", &[inv_count.len(), out_px]));
            }
            let img = win.in_h * win.in_w * c;
            for (p, g) in dy.chunks_exact(c).enumerate() {
                let (f, oy, ox) = (p / out_px, p / win.out_w % win.out_h, p % win.out_w);
                let s = inv_count[p % out_px];
                win.for_each_tap(oy, ox, |_, pix| {
                    let at = f * img + pix * c;
                    dx[at..at + c].iter_mut().zip(g).for_each(|(d, v)| *d += v * s);
                });
            }
        }
        PoolCall::GlobalMaxForward { pixels, c, x, y, argmax } => {
            check_global(pixels, c, x.len(), y.len())?;
            if argmax.len() != y.len() {
                return Err(bad("global_max_pool2d", "one index per output", &[argmax.len(), y.len()]));
            }
            for (f, (out, arg)) in y.chunks_exact_mut(c).zip(argmax.chunks_exact_mut(c)).enumerate() {
                out.fill(f32::NEG_INFINITY);
                for p in 0..pixels {
                    let at = (f * pixels + p) * c;
                    for (ci, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
                        if x[at + ci] > *o {
                            *o = x[at + ci];
                            *a = at + ci;
                        }
                    }
                }
            }
        }
        PoolCall::GlobalAverageForward { pixels, c, x, y } => {
            check_global(pixels, c, x.len(), y.len())?;
            for (f, out) in y.chunks_exact_mut(c).enumerate() {
                out.fill(0.0);
                for p in x[f * pixels * c..(f + 1) * pixels * c].chunks_exact(c) {
                    out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
                }
                let s = 1.0 / pixels as f32;
                out.iter_mut().for_each(|o| *o *= s);
            }
        }
        PoolCall::GlobalAverageBackward { pixels, c, dy, dx } => {
            check_global(pixels, c, dx.len(), dy.len())?;
            let s = 1.0 / pixels as f32;
            for (f, g) in dy.chunks_exact(c).enumerate() {
                for d in dx[f * pixels * c..(f + 1) * pixels * c].chunks_exact_mut(c) {
                    d.iter_mut().zip(g).for_each(|(d, v)| *d += v * s);
                }
            }
        }
    }
    Ok(())
}

fn check_global(pixels: usize, c: usize, x: usize, y: usize) -> Result<()> {
    if pixels == 0 || c == 0 || !y.is_multiple_of(c) || x != (y / c) * pixels * c {
        return Err(bad("global_pool2d", "buffers do not fit [N, pixels, C]", &[x, y, pixels, c]));
    }
    Ok(())
}

pub(super) fn batch_norm(call: BatchNormCall<'_>) -> Result<()> {
    match call {
        BatchNormCall::Moments { c, x, mean, variance } => {
            super::super::check_rows("batch_norm", x.len(), c)?;
            let rows = x.len() / c;
            if rows == 0 || mean.len() != c || variance.len() != c {
                return Err(bad("batch_norm", "moments of [rows > 0, C] into [C]", &[x.len(), c]));
            }
            mean.fill(0.0);
            for r in x.chunks_exact(c) {
                mean.iter_mut().zip(r).for_each(|(s, v)| *s += *v as f64);
            }
            mean.iter_mut().for_each(|s| *s /= rows as f64);
            variance.fill(0.0);
            for r in x.chunks_exact(c) {
                variance.iter_mut().zip(r).zip(mean.iter()).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2));
            }
            variance.iter_mut().for_each(|s| *s /= rows as f64);
        }
        BatchNormCall::Normalize { x, stats, epsilon, gamma, beta, y, mean, inv_std, scale } => {
            let c = mean.len();
            let (stat_lens, stat) = channel_stats(stats);
            let mut lens = vec![inv_std.len(), scale.len(), stat_lens.0, stat_lens.1];
            lens.extend(gamma.map(<[f32]>::len));
            lens.extend(beta.map(<[f32]>::len));
            check_channels(c, x.len(), y.len(), &lens)?;
            let mut shift = vec![0.0f32; c];
            for j in 0..c {
                let (m, v) = stat(j);
                inv_std[j] = (1.0 / (v + epsilon as f64).sqrt()) as f32;
                mean[j] = m as f32;
                scale[j] = gamma.map_or(1.0, |g| g[j]) * inv_std[j];
                shift[j] = beta.map_or(0.0, |b| b[j]) - mean[j] * scale[j];
            }
            for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for (((o, v), s), t) in yr.iter_mut().zip(xr).zip(scale.iter()).zip(&shift) {
                    *o = v * s + t;
                }
            }
        }
        BatchNormCall::BackwardSums { x, dy, mean, inv_std, dgamma, dbeta, mean_dy, mean_dy_xhat } => {
            let c = mean.len();
            let mut lens = vec![inv_std.len(), mean_dy.len(), mean_dy_xhat.len()];
            lens.extend(dgamma.as_ref().map(|d| d.len()));
            lens.extend(dbeta.as_ref().map(|d| d.len()));
            check_channels(c, x.len(), dy.len(), &lens)?;
            let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; c], vec![0f64; c]);
            for (g, xr) in dy.chunks_exact(c).zip(x.chunks_exact(c)) {
                for ch in 0..c {
                    let xhat = (xr[ch] - mean[ch]) * inv_std[ch];
                    sum_dy[ch] += g[ch] as f64;
                    sum_dy_xhat[ch] += (g[ch] * xhat) as f64;
                }
            }
            if let Some(db) = dbeta {
                db.iter_mut().zip(&sum_dy).for_each(|(d, s)| *d += *s as f32);
            }
            if let Some(dg) = dgamma {
                dg.iter_mut().zip(&sum_dy_xhat).for_each(|(d, s)| *d += *s as f32);
            }
            let rows = (x.len() / c) as f64;
            mean_dy.iter_mut().zip(&sum_dy).for_each(|(m, s)| *m = (s / rows) as f32);
            mean_dy_xhat.iter_mut().zip(&sum_dy_xhat).for_each(|(m, s)| *m = (s / rows) as f32);
        }
        BatchNormCall::BackwardInput { x, dy, mean, inv_std, scale, batch_means, dx } => {
            let c = mean.len();
            let mut lens = vec![inv_std.len(), scale.len()];
            if let Some((a, b)) = batch_means {
                lens.extend([a.len(), b.len()]);
            }
            check_channels(c, x.len(), dy.len(), &lens)?;
            if dx.len() != x.len() {
                return Err(bad("batch_norm", "gradient differs from the input in size", &[dx.len(), x.len()]));
            }
            let Some((mean_dy, mean_dy_xhat)) = batch_means else {
                for (d, g) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)) {
                    d.iter_mut().zip(g).zip(scale).for_each(|((d, g), s)| *d += g * s);
                }
                return Ok(());
            };
            for ((d, g), xr) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(x.chunks_exact(c)) {
                for ch in 0..c {
                    let xhat = (xr[ch] - mean[ch]) * inv_std[ch];
                    d[ch] += scale[ch] * (g[ch] - mean_dy[ch] - xhat * mean_dy_xhat[ch]);
                }
            }
        }
    }
    Ok(())
}

/// The lengths of the statistics, and channel `j`'s mean and variance in f64.
fn channel_stats(stats: ChannelStats<'_>) -> ((usize, usize), impl Fn(usize) -> (f64, f64) + '_) {
    let lens = match stats {
        ChannelStats::Batch { mean, variance } => (mean.len(), variance.len()),
        ChannelStats::Given { mean, variance } => (mean.len(), variance.len()),
    };
    let at = move |j: usize| match stats {
        ChannelStats::Batch { mean, variance } => (mean[j], variance[j]),
        ChannelStats::Given { mean, variance } => (mean[j] as f64, variance[j] as f64),
    };
    (lens, at)
}

/// Checks `[rows, c]` data and gradient and `[c]` per-channel buffers.
fn check_channels(c: usize, x: usize, dy: usize, per_channel: &[usize]) -> Result<()> {
    super::super::check_rows("batch_norm", x, c)?;
    if dy != x || per_channel.iter().any(|&l| l != c) {
        return Err(bad("batch_norm", "buffers do not fit [rows, C] and [C]", &[x, dy, c]));
    }
    Ok(())
}
