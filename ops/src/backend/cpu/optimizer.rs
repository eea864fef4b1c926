//! The CPU's optimizer updates: the per-variable rules (Keras 3 formulas),
//! vectorised over chunks and spread over the rayon pool (of more than one
//! thread) for large variables.

use crate::backend::spread;
use crate::optim::OptimizerKind;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

/// Applies one step of `kind` to `w` with gradient `g`, learning rate `lr` and
/// 1-based step number `step`, updating `slots` in place.
pub(super) fn update(kind: &OptimizerKind, lr: f32, step: u64, w: &mut [f32], g: &[f32], slots: &mut [&mut [f32]]) {
    match *kind {
        OptimizerKind::Sgd { momentum, nesterov } => {
            if momentum == 0.0 {
                par2(w, g, |w, g| w.iter_mut().zip(g).for_each(|(w, g)| *w -= lr * g));
            } else {
                let m = &mut slots[0];
                par3(w, g, m, |w, g, m| {
                    for k in 0..w.len() {
                        m[k] = momentum * m[k] - lr * g[k];
                        w[k] += if nesterov { momentum * m[k] - lr * g[k] } else { m[k] };
                    }
                });
            }
        }
        OptimizerKind::Adam { beta_1, beta_2, epsilon } => adam(lr, step, beta_1, beta_2, epsilon, 0.0, w, g, slots),
        OptimizerKind::Adamw { beta_1, beta_2, epsilon, weight_decay } => {
            adam(lr, step, beta_1, beta_2, epsilon, weight_decay, w, g, slots)
        }
        OptimizerKind::Rmsprop { rho, momentum, epsilon } => {
            let (v, rest) = slots.split_at_mut(1);
            let v = &mut v[0];
            if momentum == 0.0 {
                par3(w, g, v, |w, g, v| {
                    for k in 0..w.len() {
                        v[k] = rho * v[k] + (1.0 - rho) * g[k] * g[k];
                        w[k] -= lr * g[k] / (v[k] + epsilon).sqrt();
                    }
                });
            } else {
                let m = &mut rest[0];
                for k in 0..w.len() {
                    v[k] = rho * v[k] + (1.0 - rho) * g[k] * g[k];
                    m[k] = momentum * m[k] + lr * g[k] / (v[k] + epsilon).sqrt();
                    w[k] -= m[k];
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn adam(lr: f32, step: u64, b1: f32, b2: f32, eps: f32, wd: f32, w: &mut [f32], g: &[f32], slots: &mut [&mut [f32]]) {
    let (m, v) = slots.split_at_mut(1);
    let (m, v) = (&mut m[0], &mut v[0]);
    let t = step as f64;
    let k = AdamStep {
        alpha: (lr as f64 * (1.0 - (b2 as f64).powf(t)).sqrt() / (1.0 - (b1 as f64).powf(t))) as f32,
        b1,
        b2,
        eps,
        decay: wd * lr,
    };
    type Chunks<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);
    let body = |(((w, g), m), v): Chunks<'_>| adam_chunk(w, g, m, v, k);
    if !spread(w.len(), CHUNK) {
        body((((w, g), &mut m[..]), &mut v[..]));
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(body);
    }
}

fn par2(w: &mut [f32], g: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if !spread(w.len(), CHUNK) {
        f(w, g)
    } else {
        w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(w, g)| f(w, g));
    }
}

fn par3(w: &mut [f32], g: &[f32], s: &mut [f32], f: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync) {
    if !spread(w.len(), CHUNK) {
        f(w, g, s)
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .for_each(|((w, g), s)| f(w, g, s));
    }
}

/// The constants of one Adam step (Keras 3's formula; `decay` = AdamW's `weight_decay * lr`).
#[derive(Clone, Copy)]
struct AdamStep {
    alpha: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
}

/// The Adam update of one chunk; compiled for AVX2+FMA too and picked at run time.
fn adam_chunk(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
    #[inline(always)]
    fn body(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *w -= *w * k.decay;
            *m += (g - *m) * (1.0 - k.b1);
            *v += (g * g - *v) * (1.0 - k.b2);
            *w -= *m * k.alpha / (v.sqrt() + k.eps);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // 16 lanes where the CPU has them: the same bits (each operation is
        // correctly rounded at any width, and Rust never fuses one into an FMA).
        if std::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn widest(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
                body(w, g, m, v, k)
            }
            // SAFETY: the feature was detected at run time.
            return unsafe { widest(w, g, m, v, k) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) {
                body(w, g, m, v, k)
            }
            // SAFETY: the features were detected at run time.
            return unsafe { wide(w, g, m, v, k) };
        }
    }
    body(w, g, m, v, k)
}
