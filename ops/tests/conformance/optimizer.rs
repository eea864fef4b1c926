//! One update of each optimizer rule (Keras 3's formulas) on a variable large
//! enough to be split over threads, from non-zero slots at step 3.

use super::{random, wide, Failures};
use kallista_ops::backend::Backend;
use kallista_ops::buf::Buf;
use kallista_ops::optim::OptimizerKind;

const N: usize = 70_001;
const STEP: u64 = 3;
const LR: f32 = 0.01;

pub fn check(be: &dyn Backend, f: &mut Failures) {
    let rules = [
        OptimizerKind::Sgd { momentum: 0.0, nesterov: false },
        OptimizerKind::Sgd { momentum: 0.9, nesterov: false },
        OptimizerKind::Sgd { momentum: 0.9, nesterov: true },
        OptimizerKind::Adam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 },
        OptimizerKind::Adamw { beta_1: 0.8, beta_2: 0.99, epsilon: 1e-6, weight_decay: 0.01 },
        OptimizerKind::Rmsprop { rho: 0.9, momentum: 0.0, epsilon: 1e-7 },
        OptimizerKind::Rmsprop { rho: 0.8, momentum: 0.5, epsilon: 1e-7 },
    ];
    let (w0, g) = (random(N, 110, 1.0), random(N, 111, 1.0));
    for rule in rules {
        // Slots as a few steps would leave them: second moments positive.
        let slots0: Vec<Vec<f32>> = (0..rule.slot_names().len())
            .map(|s| {
                let v = random(N, 112 + s as u64, 0.1);
                if rule.slot_names()[s] == "v" || rule.slot_names()[s] == "velocity" {
                    v.iter().map(|x| x * x).collect()
                } else {
                    v
                }
            })
            .collect();
        // The slots in the backend's own memory (on a device, its kernels update them in place),
        // the weights and gradients on the host (copied up and back).
        let slots: Option<Vec<Buf>> = slots0.iter().map(|s| f.ok("slots", be.buf_from(s))).collect();
        let (mut w, Some(mut slots)) = (w0.clone(), slots) else { continue };
        if f.ok(&format!("{rule:?}"), be.optimizer_step(&rule, LR, STEP, &mut w, &g, &mut views(&mut slots))).is_none()
        {
            continue;
        }
        let (want_w, want_slots) = oracle(&rule, wide(&w0), &wide(&g), slots0.iter().map(|s| wide(s)).collect());
        f.compare(&format!("{rule:?}: weights"), &w, &want_w, 1.0, 1e-5);
        for (s, (got, want)) in slots.iter().zip(&want_slots).enumerate() {
            f.compare(&format!("{rule:?}: slot {}", rule.slot_names()[s]), got, want, 1e-2, 1e-5);
        }
    }
    let rule = OptimizerKind::Adam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 };
    let mut w = w0.clone();
    f.refused(
        "a gradient of another size",
        be.optimizer_step(&rule, LR, STEP, &mut w, &g[1..], &mut [&mut vec![0.0; N][..], &mut vec![0.0; N][..]]),
    );
    f.refused("missing slots", be.optimizer_step(&rule, LR, STEP, &mut w, &g, &mut []));
}

fn views(slots: &mut [Buf]) -> Vec<&mut [f32]> {
    slots.iter_mut().map(|s| s.as_mut_slice()).collect()
}

/// One step in f64: the weights and the slots after it.
fn oracle(rule: &OptimizerKind, mut w: Vec<f64>, g: &[f64], mut s: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let lr = LR as f64;
    let t = STEP as f64;
    for k in 0..w.len() {
        match *rule {
            OptimizerKind::Sgd { momentum, nesterov } => {
                let mo = momentum as f64;
                if momentum == 0.0 {
                    w[k] -= lr * g[k];
                } else {
                    s[0][k] = mo * s[0][k] - lr * g[k];
                    w[k] += if nesterov { mo * s[0][k] - lr * g[k] } else { s[0][k] };
                }
            }
            OptimizerKind::Adam { beta_1, beta_2, epsilon } | OptimizerKind::Adamw { beta_1, beta_2, epsilon, .. } => {
                let decay = match *rule {
                    OptimizerKind::Adamw { weight_decay, .. } => weight_decay as f64 * lr,
                    _ => 0.0,
                };
                let (b1, b2) = (beta_1 as f64, beta_2 as f64);
                w[k] -= w[k] * decay;
                s[0][k] += (g[k] - s[0][k]) * (1.0 - b1);
                s[1][k] += (g[k] * g[k] - s[1][k]) * (1.0 - b2);
                let alpha = lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
                w[k] -= s[0][k] * alpha / (s[1][k].sqrt() + epsilon as f64);
            }
            OptimizerKind::Rmsprop { rho, momentum, epsilon } => {
                let rho = rho as f64;
                s[0][k] = rho * s[0][k] + (1.0 - rho) * g[k] * g[k];
                let step = lr * g[k] / (s[0][k] + epsilon as f64).sqrt();
                if momentum == 0.0 {
                    w[k] -= step;
                } else {
                    s[1][k] = momentum as f64 * s[1][k] + step;
                    w[k] -= s[1][k];
                }
            }
        }
    }
    (w, s)
}
