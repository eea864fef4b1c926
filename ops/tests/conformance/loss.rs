//! Cross-entropies (sparse and dense, from logits and from probabilities),
//! binary cross-entropy and mean squared error: the batch-mean loss and its
//! gradient w.r.t. the predictions.

use super::{random, wide, Failures};
use kallista_ops::backend::calls::{LossCall, Targets};
use kallista_ops::backend::Backend;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn check(be: &dyn Backend, f: &mut Failures) {
    let (rows, c) = (6, 9);
    let logits = random(rows * c, 11, 2.0);
    let labels: Vec<i32> = (0..rows as i32).map(|r| (r * 4) % c as i32).collect();
    let mut grad = vec![0.0; rows * c];
    let call = LossCall::CrossEntropy {
        pred: &logits,
        classes: c,
        target: Targets::Sparse(&labels),
        from_logits: true,
        grad: &mut grad,
    };
    if let Some(loss) = f.ok("sparse cross-entropy from logits", be.loss(call)) {
        let (mut want_loss, mut want_grad) = (0.0, vec![0.0; rows * c]);
        for r in 0..rows {
            let x = wide(&logits[r * c..(r + 1) * c]);
            let lse = x.iter().map(|v| v.exp()).sum::<f64>().ln();
            want_loss += (lse - x[labels[r] as usize]) / rows as f64;
            for j in 0..c {
                let onehot = if j == labels[r] as usize { 1.0 } else { 0.0 };
                want_grad[r * c + j] = ((x[j] - lse).exp() - onehot) / rows as f64;
            }
        }
        f.compare("sparse cross-entropy from logits: loss", &[loss as f32], &[want_loss], 1.0, 1e-5);
        f.compare("sparse cross-entropy from logits: gradient", &grad, &want_grad, 1.0 / rows as f64, 1e-4);
    }
    let bad = [0, 1, 2, 9, 0, 0];
    let call = LossCall::CrossEntropy {
        pred: &logits,
        classes: c,
        target: Targets::Sparse(&bad),
        from_logits: true,
        grad: &mut grad,
    };
    f.refused("a label outside the classes", be.loss(call));

    // Probabilities (inside the clipping range) against soft targets.
    let probs: Vec<f32> = random(rows * c, 12, 1.0).iter().map(|v| 0.1 + 0.8 * sigmoid(*v as f64) as f32).collect();
    let soft: Vec<f32> = random(rows * c, 13, 1.0).iter().map(|v| v.abs() / 3.0).collect();
    let call = LossCall::CrossEntropy {
        pred: &probs,
        classes: c,
        target: Targets::Dense(&soft),
        from_logits: false,
        grad: &mut grad,
    };
    if let Some(loss) = f.ok("cross-entropy from probabilities", be.loss(call)) {
        let (mut want_loss, mut want_grad) = (0.0, vec![0.0; rows * c]);
        for r in 0..rows {
            let (y, t) = (wide(&probs[r * c..(r + 1) * c]), wide(&soft[r * c..(r + 1) * c]));
            let (s, tsum) = (y.iter().sum::<f64>(), t.iter().sum::<f64>());
            for j in 0..c {
                want_loss -= t[j] * (y[j] / s).ln() / rows as f64;
                want_grad[r * c + j] = (-t[j] / y[j] + tsum / s) / rows as f64;
            }
        }
        f.compare("cross-entropy from probabilities: loss", &[loss as f32], &[want_loss], 1.0, 1e-5);
        f.compare("cross-entropy from probabilities: gradient", &grad, &want_grad, 1.0 / rows as f64, 1e-4);
    }

    let n = 40;
    let x = random(n, 14, 2.0);
    let t: Vec<f32> = random(n, 15, 1.0).iter().map(|v| sigmoid(*v as f64) as f32).collect();
    let (x64, t64) = (wide(&x), wide(&t));
    let mut grad = vec![0.0; n];
    if let Some(loss) = f.ok(
        "binary cross-entropy from logits",
        be.loss(LossCall::Binary { pred: &x, target: &t, from_logits: true, grad: &mut grad }),
    ) {
        let want_loss: f64 = (0..n).map(|k| (1.0 + x64[k].exp()).ln() - t64[k] * x64[k]).sum::<f64>() / n as f64;
        let want_grad: Vec<f64> = (0..n).map(|k| (sigmoid(x64[k]) - t64[k]) / n as f64).collect();
        f.compare("binary cross-entropy from logits: loss", &[loss as f32], &[want_loss], 1.0, 1e-5);
        f.compare("binary cross-entropy from logits: gradient", &grad, &want_grad, 1.0 / n as f64, 1e-4);
    }
    let p: Vec<f32> = x.iter().map(|v| 0.05 + 0.9 * sigmoid(*v as f64) as f32).collect();
    let p64 = wide(&p);
    if let Some(loss) = f.ok(
        "binary cross-entropy",
        be.loss(LossCall::Binary { pred: &p, target: &t, from_logits: false, grad: &mut grad }),
    ) {
        let want_loss: f64 =
            -(0..n).map(|k| t64[k] * p64[k].ln() + (1.0 - t64[k]) * (1.0 - p64[k]).ln()).sum::<f64>() / n as f64;
        let want_grad: Vec<f64> =
            (0..n).map(|k| (-t64[k] / p64[k] + (1.0 - t64[k]) / (1.0 - p64[k])) / n as f64).collect();
        f.compare("binary cross-entropy: loss", &[loss as f32], &[want_loss], 1.0, 1e-5);
        f.compare("binary cross-entropy: gradient", &grad, &want_grad, 1.0 / n as f64, 1e-4);
    }
    if let Some(loss) =
        f.ok("mean squared error", be.loss(LossCall::MeanSquared { pred: &x, target: &t, grad: &mut grad }))
    {
        let want_loss: f64 = (0..n).map(|k| (x64[k] - t64[k]).powi(2)).sum::<f64>() / n as f64;
        let want_grad: Vec<f64> = (0..n).map(|k| 2.0 * (x64[k] - t64[k]) / n as f64).collect();
        f.compare("mean squared error: loss", &[loss as f32], &[want_loss], 1.0, 1e-5);
        f.compare("mean squared error: gradient", &grad, &want_grad, 1.0 / n as f64, 1e-4);
    }
    f.refused("targets of another size", be.loss(LossCall::MeanSquared { pred: &x, target: &t[1..], grad: &mut grad }));
}
