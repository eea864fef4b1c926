//! Parity with Keras 3: the same weights and batch give the same outputs, loss
//! and gradients as Keras (JAX backend), to 1e-4 relative. The fixtures and
//! the script that wrote them are in `tests/fixtures/`; weights and the W1
//! batch come from a formula both sides compute (see the script's docstring).
//! `KALLISTA_DEVICE=cuda:0` runs them on the CUDA backend (`scripts/gpu-check.sh`).

mod common;

use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::layers::{Dense, Embedding, Gru, Lstm};
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{DType, Data, IntTensor, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

fn formula(shape: &[usize], k: usize, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n).map(|i| (scale * (0.37 * i as f64 + 1.3 * k as f64 + 0.1).sin()) as f32).collect())
        .unwrap()
}

/// Weight k (by sorted key) = formula(shape, k, 1/sqrt(rows) for matrices, 0.1 otherwise).
fn set_formula_weights(model: &mut Model) {
    let mut keys = model.weight_keys();
    keys.sort();
    let weights: BTreeMap<String, Tensor> = keys
        .iter()
        .enumerate()
        .map(|(k, key)| {
            let shape = model.weight(key).unwrap().shape().to_vec();
            let scale = if shape.len() == 2 { 1.0 / (shape[0] as f64).sqrt() } else { 0.1 };
            (key.clone(), formula(&shape, k, scale))
        })
        .collect();
    model.set_weights(&weights).unwrap();
}

fn fixture(name: &str) -> BTreeMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    kallista_ops::model::read_safetensors(&path).unwrap().0
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn grads_by_key(model: &Model, x: &[Data], y: &[Data]) -> (f32, BTreeMap<String, Vec<f32>>) {
    let (r, g) = model.gradients_on_batch(x, y).unwrap();
    let map = model
        .weight_keys()
        .into_iter()
        .zip(g.values)
        .map(|(k, v)| (k, v.expect("every weight is trainable").into_vec()))
        .collect();
    (r.loss, map)
}

#[test]
fn w1_model_matches_keras_loss_outputs_and_gradients() {
    common::use_device_from_env();
    let fx = fixture("w1_keras.safetensors");
    let d = VideoQaDims::w1();
    let mut model = video_qa(&d, 0).unwrap();
    set_formula_weights(&mut model);
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let b = 4;
    let video = formula(&[b, d.frames, d.features], 100, 1.0);
    let q = IntTensor::new(
        &[b, d.question_len],
        (0..b * d.question_len).map(|i| ((i * 7919 + 13) % (d.vocab - 1) + 1) as i32).collect(),
    )
    .unwrap();
    let y = IntTensor::new(&[b], (0..b).map(|i| ((i * 31 + 7) % d.answers) as i32).collect()).unwrap();
    let x = vec![Data::F32(video), Data::I32(q)];
    let probs = model.predict_on_batch(&x).unwrap();
    assert!(rel_err(probs[0].data(), fx["ref/probs"].data()) < 1e-4, "softmax outputs differ from Keras");
    let (loss, grads) = grads_by_key(&model, &x, &[Data::I32(y)]);
    assert_eq!(grads.len(), 11, "every W1 weight has a gradient");
    let want_loss = fx["ref/loss"].item();
    assert!(((loss - want_loss) / want_loss).abs() < 1e-4, "loss {loss} vs Keras {want_loss}");
    for (key, g) in &grads {
        let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        let want_norm = fx[&format!("gradnorm/{key}")].item();
        assert!(((norm - want_norm) / want_norm).abs() < 1e-4, "{key}: gradient norm {norm} vs Keras {want_norm}");
        let want = &fx[&format!("grad/{key}")];
        let got: Vec<f32> = match key.as_str() {
            "video_lstm/kernel" => g[..want.len()].to_vec(),
            "q_embed/embeddings" => {
                let dim = want.shape()[1];
                fx["rows/q_embed/embeddings"]
                    .data()
                    .iter()
                    .flat_map(|&r| g[r as usize * dim..(r as usize + 1) * dim].to_vec())
                    .collect()
            }
            _ => g.clone(),
        };
        let e = rel_err(&got, want.data());
        assert!(e < 1e-4, "{key}: gradient differs from Keras by {e:e} (relative to its max)");
    }
}

fn masked_model(with_sequences: bool) -> Model {
    let mut g = ModelBuilder::new("masked");
    let q = g.input("question", &[6], DType::I32);
    let e = g.apply(Embedding::new(20, 8).mask_zero(true).name("embed"), &[q]).unwrap();
    let s = g.apply(Lstm::new(7).return_sequences(true).name("lstm"), &[e]).unwrap();
    let h = g.apply(Gru::new(5).name("gru"), &[s]).unwrap();
    let out = g.apply(Dense::new(5).activation("softmax").name("out"), &[h]).unwrap();
    let outs = if with_sequences { vec![out, s] } else { vec![out] };
    let mut m = g.build(&[q], &outs, 0).unwrap();
    set_formula_weights(&mut m);
    m
}

#[test]
fn masked_lstm_and_gru_match_keras() {
    common::use_device_from_env();
    let fx = fixture("masked_keras.safetensors");
    let ids = IntTensor::new(&[3, 6], vec![3, 5, 7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 9, 0, 0, 0, 0, 0]).unwrap();
    let x = vec![Data::I32(ids)];
    let outs = masked_model(true).predict_on_batch(&x).unwrap();
    assert!(rel_err(outs[0].data(), fx["ref/probs"].data()) < 1e-4, "probabilities differ");
    let e = rel_err(outs[1].data(), fx["ref/lstm_sequences"].data());
    assert!(e < 1e-4, "LSTM sequence outputs at masked steps differ from Keras ({e:e})");
    let mut model = masked_model(false);
    model.compile(OptimizerConfig::sgd(0.1), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let y = Data::I32(IntTensor::new(&[3], vec![1, 4, 2]).unwrap());
    let (loss, grads) = grads_by_key(&model, &x, &[y]);
    assert!((loss - fx["ref/loss"].item()).abs() / fx["ref/loss"].item() < 1e-4);
    assert_eq!(grads.len(), 9, "embeddings, LSTM x3, GRU x3, Dense x2");
    for (key, g) in &grads {
        let e = rel_err(g, fx[&format!("grad/{key}")].data());
        assert!(e < 1e-4, "{key}: gradient differs from Keras by {e:e}");
    }
}
