//! BatchNormalization's state: moving statistics follow Keras 3's update
//! (`moving = moving * momentum + batch_stat * (1 - momentum)`, biased batch
//! variance), inference uses them, a training step sees the whole batch
//! whatever the thread count, and updates from several parts are averaged.

use kallista_ops::layers::*;
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder, WeightGrads};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{DType, Data, Tensor};

const C: usize = 3;

fn bn_model() -> Model {
    let mut g = ModelBuilder::new("bn");
    let x = g.input("x", &[2, C], DType::F32);
    let h = g.apply(BatchNormalization::new().momentum(0.9).name("bn"), &[x]).unwrap();
    let y = g.apply(Flatten::new(), &[h]).unwrap();
    let mut m = g.build(&[x], &[y], 1).unwrap();
    let mut w = m.named_weights();
    *w.get_mut("bn/moving_mean").unwrap() = Tensor::new(&[C], vec![0.5, -1.0, 2.0]).unwrap();
    *w.get_mut("bn/moving_variance").unwrap() = Tensor::new(&[C], vec![2.0, 0.5, 1.0]).unwrap();
    m.set_weights(&w).unwrap();
    m.compile(OptimizerConfig::sgd(0.0), Loss::MeanSquaredError, &[]);
    m
}

/// `[b, 2, C]` values; channel `c` of sample `i`, position `p` is a fixed formula.
fn data(b: usize, shift: f32) -> (Vec<Data>, Vec<Data>) {
    let x: Vec<f32> = (0..b * 2 * C).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3 + shift).collect();
    let x = Tensor::new(&[b, 2, C], x).unwrap();
    (vec![Data::F32(x)], vec![Data::F32(Tensor::zeros(&[b, 2 * C]))])
}

/// Per-channel mean and biased variance, in f64.
fn moments(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / C;
    let mut mean = vec![0f64; C];
    let mut var = vec![0f64; C];
    for r in x.data().chunks(C) {
        (0..C).for_each(|c| mean[c] += r[c] as f64 / rows as f64);
    }
    for r in x.data().chunks(C) {
        (0..C).for_each(|c| var[c] += (r[c] as f64 - mean[c]).powi(2) / rows as f64);
    }
    (mean, var)
}

fn close(a: &[f32], b: &[f64], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!((*x as f64 - y).abs() < 1e-5 * (1.0 + y.abs()), "{what}: {a:?} vs {b:?}");
    }
}

#[test]
fn moving_statistics_follow_the_keras_formula() {
    let mut model = bn_model();
    let (x, y) = data(8, 0.2);
    let Data::F32(xt) = &x[0] else { unreachable!() };
    let (mean, var) = moments(xt);
    let (old_m, old_v) = ([0.5, -1.0, 2.0], [2.0, 0.5, 1.0]);
    model.train_on_batch(&x, &y).unwrap();
    let want_m: Vec<f64> = (0..C).map(|c| old_m[c] * 0.9 + mean[c] * 0.1).collect();
    let want_v: Vec<f64> = (0..C).map(|c| old_v[c] * 0.9 + var[c] * 0.1).collect();
    close(model.weight("bn/moving_mean").unwrap().data(), &want_m, "moving_mean");
    close(model.weight("bn/moving_variance").unwrap().data(), &want_v, "moving_variance (biased batch variance)");
    // Inference normalises with the moving statistics: (x - m) / sqrt(v + 1e-3) with gamma 1, beta 0.
    let out = model.predict_on_batch(&x).unwrap();
    let want: Vec<f64> = xt
        .data()
        .iter()
        .enumerate()
        .map(|(i, v)| (*v as f64 - want_m[i % C]) / (want_v[i % C] + 1e-3).sqrt())
        .collect();
    close(out[0].data(), &want, "inference output");
    // Evaluation does not update anything.
    let before = model.named_weights();
    model.test_on_batch(&x, &y).unwrap();
    assert_eq!(model.named_weights(), before);
}

#[test]
fn a_training_step_uses_the_whole_batch_whatever_the_thread_count() {
    let model = bn_model();
    let (x, y) = data(32, -0.4);
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (r2, g2) = two.install(|| model.gradients_on_batch(&x, &y).unwrap());
    let (r1, g1) = one.install(|| model.gradients_on_batch(&x, &y).unwrap());
    assert_eq!(r1.loss, r2.loss);
    assert_eq!(g1, g2, "gradients and state updates are bit-identical");
    assert_eq!(g1.state_parts, 1);
}

#[test]
fn state_updates_from_several_parts_are_averaged() {
    let mut model = bn_model();
    let (xa, ya) = data(4, 1.0);
    let (xb, yb) = data(4, -2.0);
    let (_, mut ga): (_, WeightGrads) = model.gradients_on_batch(&xa, &ya).unwrap();
    let (_, gb) = model.gradients_on_batch(&xb, &yb).unwrap();
    let mean_of = |g: &WeightGrads, k: usize| g.state[k].clone().unwrap();
    let k = model.weight_keys().iter().position(|k| k == "bn/moving_mean").unwrap();
    let want: Vec<f64> =
        mean_of(&ga, k).iter().zip(mean_of(&gb, k)).map(|(a, b)| (*a as f64 + b as f64) / 2.0).collect();
    ga.add_assign(&gb);
    assert_eq!(ga.state_parts, 2);
    model.apply_gradients(ga).unwrap();
    close(model.weight("bn/moving_mean").unwrap().data(), &want, "averaged moving_mean");
}
