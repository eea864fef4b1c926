//! Batch normalisation: batch moments, the normalisation (batch or given
//! statistics, with and without gamma and beta), the backward sums, and the
//! input gradient with batch statistics and with given ones.

use super::{random, wide, Failures};
use kallista_ops::backend::calls::{BatchNormCall, ChannelStats};
use kallista_ops::backend::Backend;

pub fn check(be: &dyn Backend, f: &mut Failures) {
    let (rows, c) = (50, 7);
    let x: Vec<f32> = random(rows * c, 100, 2.0).iter().map(|v| v + 3.0).collect();
    let x64 = wide(&x);
    let xs = &x64;
    let col = |j: usize| (0..rows).map(move |r| xs[r * c + j]);
    let want_mean: Vec<f64> = (0..c).map(|j| col(j).sum::<f64>() / rows as f64).collect();
    let want_var: Vec<f64> =
        (0..c).map(|j| col(j).map(|v| (v - want_mean[j]).powi(2)).sum::<f64>() / rows as f64).collect();
    let (mut mean, mut variance) = (vec![0.0; c], vec![0.0; c]);
    if f.ok(
        "batch moments",
        be.batch_norm(BatchNormCall::Moments { c, x: &x, mean: &mut mean, variance: &mut variance }),
    )
    .is_some()
    {
        let as_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
        f.compare("batch mean", &as_f32(&mean), &want_mean, 1.0, 1e-6);
        f.compare("batch variance (biased)", &as_f32(&variance), &want_var, 1.0, 1e-6);
    }
    let mut empty = vec![0.0; c];
    f.refused(
        "moments of no rows",
        be.batch_norm(BatchNormCall::Moments { c, x: &[], mean: &mut empty, variance: &mut vec![0.0; c] }),
    );

    let (gamma, beta) = (random(c, 101, 1.0), random(c, 102, 1.0));
    let eps = 1e-3f32;
    let want_inv_std: Vec<f64> = want_var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
    let given: Vec<f32> = want_var.iter().map(|&v| v as f32).collect();
    let given_mean: Vec<f32> = want_mean.iter().map(|&v| v as f32).collect();
    let stats_cases = [
        ("batch", ChannelStats::Batch { mean: &want_mean, variance: &want_var }),
        ("given", ChannelStats::Given { mean: &given_mean, variance: &given }),
    ];
    for (name, stats) in stats_cases {
        for affine in [true, false] {
            let (mut y, mut mean, mut inv_std, mut scale) =
                (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
            let call = BatchNormCall::Normalize {
                x: &x,
                stats,
                epsilon: eps,
                gamma: affine.then_some(&gamma[..]),
                beta: affine.then_some(&beta[..]),
                y: &mut y,
                mean: &mut mean,
                inv_std: &mut inv_std,
                scale: &mut scale,
            };
            if f.ok("batch norm normalize", be.batch_norm(call)).is_none() {
                continue;
            }
            let g = |j: usize| if affine { gamma[j] as f64 } else { 1.0 };
            let b = |j: usize| if affine { beta[j] as f64 } else { 0.0 };
            let want: Vec<f64> =
                (0..x.len()).map(|k| g(k % c) * (x64[k] - want_mean[k % c]) * want_inv_std[k % c] + b(k % c)).collect();
            let case = format!("batch norm normalize ({name} statistics, affine {affine})");
            f.compare(&case, &y, &want, 1.0, 1e-5);
            f.compare(&format!("{case}: inv_std"), &inv_std, &want_inv_std, 1.0, 1e-5);
            f.compare(
                &format!("{case}: scale"),
                &scale,
                &(0..c).map(|j| g(j) * want_inv_std[j]).collect::<Vec<_>>(),
                1.0,
                1e-5,
            );
        }
    }

    let mean32: Vec<f32> = want_mean.iter().map(|&v| v as f32).collect();
    let inv_std: Vec<f32> = want_inv_std.iter().map(|&v| v as f32).collect();
    let scale = random(c, 104, 1.0);
    let dy = random(x.len(), 103, 1.0);
    let xhat = |k: usize| (x64[k] - mean32[k % c] as f64) * inv_std[k % c] as f64;
    let want_sum_dy: Vec<f64> = (0..c).map(|j| (0..rows).map(|r| dy[r * c + j] as f64).sum()).collect();
    let want_sum_dy_xhat: Vec<f64> =
        (0..c).map(|j| (0..rows).map(|r| dy[r * c + j] as f64 * xhat(r * c + j)).sum()).collect();
    let (mut dgamma, mut dbeta) = (vec![1.0; c], vec![2.0; c]);
    let (mut mean_dy, mut mean_dy_xhat) = (vec![0.0; c], vec![0.0; c]);
    let call = BatchNormCall::BackwardSums {
        x: &x,
        dy: &dy,
        mean: &mean32,
        inv_std: &inv_std,
        dgamma: Some(&mut dgamma),
        dbeta: Some(&mut dbeta),
        mean_dy: &mut mean_dy,
        mean_dy_xhat: &mut mean_dy_xhat,
    };
    if f.ok("batch norm backward sums", be.batch_norm(call)).is_some() {
        let plus = |v: &[f64], base: f64| v.iter().map(|s| base + s).collect::<Vec<_>>();
        let per_row = |v: &[f64]| v.iter().map(|s| s / rows as f64).collect::<Vec<_>>();
        f.compare("batch norm dbeta (Σdy, added)", &dbeta, &plus(&want_sum_dy, 2.0), rows as f64, 1e-5);
        f.compare("batch norm dgamma (Σdy·x̂, added)", &dgamma, &plus(&want_sum_dy_xhat, 1.0), rows as f64, 1e-5);
        f.compare("batch norm mean dy", &mean_dy, &per_row(&want_sum_dy), 1.0, 1e-5);
        f.compare("batch norm mean dy·x̂", &mean_dy_xhat, &per_row(&want_sum_dy_xhat), 1.0, 1e-5);
    }
    let mean_dy: Vec<f32> = want_sum_dy.iter().map(|s| (s / rows as f64) as f32).collect();
    let mean_dy_xhat: Vec<f32> = want_sum_dy_xhat.iter().map(|s| (s / rows as f64) as f32).collect();
    for batch in [true, false] {
        let mut dx = vec![0.5; x.len()];
        let call = BatchNormCall::BackwardInput {
            x: &x,
            dy: &dy,
            mean: &mean32,
            inv_std: &inv_std,
            scale: &scale,
            batch_means: batch.then_some((&mean_dy[..], &mean_dy_xhat[..])),
            dx: &mut dx,
        };
        if f.ok("batch norm input gradient", be.batch_norm(call)).is_none() {
            continue;
        }
        let want: Vec<f64> = (0..x.len())
            .map(|k| {
                let (j, g) = (k % c, dy[k] as f64);
                let inner = if batch { g - mean_dy[j] as f64 - xhat(k) * mean_dy_xhat[j] as f64 } else { g };
                0.5 + scale[j] as f64 * inner
            })
            .collect();
        f.compare(&format!("batch norm input gradient (batch statistics {batch})"), &dx, &want, 1.0, 1e-5);
    }
}
