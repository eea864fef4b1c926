//! Parity of the image layers with Keras 3 (JAX backend), to 1e-4 relative:
//! outputs in training and inference mode, loss, every gradient, and the
//! BatchNormalization moving statistics after a training-mode call. The
//! fixture and the script that wrote it are in `tests/fixtures/`
//! (`make_vision_fixtures.py`); weights and inputs come from a formula both
//! sides compute. `KALLISTA_DEVICE=cuda:0` runs them on the CUDA backend
//! (`scripts/gpu-check.sh`).

mod common;

use kallista_ops::init::Rng;
use kallista_ops::layers::*;
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{ByteTensor, DType, Data, IntTensor, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

fn formula(shape: &[usize], k: usize, scale: f64, offset: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n).map(|i| (offset + scale * (0.37 * i as f64 + 1.3 * k as f64 + 0.1).sin()) as f32).collect();
    Tensor::new(shape, v).unwrap()
}

/// As `weight_value()` in the script: weight k (by sorted key) from the formula.
fn set_formula_weights(model: &mut Model) {
    let mut keys = model.weight_keys();
    keys.sort();
    let weights: BTreeMap<String, Tensor> = keys
        .iter()
        .enumerate()
        .map(|(k, key)| {
            let shape = model.weight(key).unwrap().shape().to_vec();
            let t = match key.rsplit('/').next().unwrap() {
                "gamma" => formula(&shape, k, 0.1, 1.0),
                "moving_variance" => formula(&shape, k, 0.5, 1.0),
                _ if shape.len() >= 2 => {
                    let fan_in: usize = shape[..shape.len() - 1].iter().product();
                    formula(&shape, k, 1.0 / (fan_in as f64).sqrt(), 0.0)
                }
                _ => formula(&shape, k, 0.1, 0.0),
            };
            (key.clone(), t)
        })
        .collect();
    model.set_weights(&weights).unwrap();
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Compares outputs (both modes), loss, gradients and state updates with the fixture's `prefix/...`.
fn assert_matches_keras(prefix: &str, mut model: Model, x: Vec<Data>, y: IntTensor) {
    common::use_device_from_env();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision_keras.safetensors");
    let fx = kallista_ops::model::read_safetensors(&path).unwrap().0;
    let get = |k: &str| fx.get(&format!("{prefix}/{k}")).unwrap_or_else(|| panic!("fixture lacks {prefix}/{k}"));
    set_formula_weights(&mut model);
    model.compile(OptimizerConfig::sgd(0.0), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);

    let infer = model.predict_on_batch(&x).unwrap();
    let e = rel_err(infer[0].data(), get("ref/probs_infer").data());
    assert!(e < 1e-4, "{prefix}: inference outputs differ from Keras by {e:e}");
    let mut tape = kallista_ops::autodiff::Tape::new();
    let pass = model.forward_on_tape(&mut tape, &x, true, false, &mut Rng::new(0)).unwrap();
    let e = rel_err(tape.value(pass.outputs[0]).data(), get("ref/probs_train").data());
    assert!(e < 1e-4, "{prefix}: training-mode outputs differ from Keras by {e:e}");

    let (r, g) = model.gradients_on_batch(&x, &[Data::I32(y)]).unwrap();
    let want = get("ref/loss").item();
    assert!(((r.loss - want) / want).abs() < 1e-4, "{prefix}: loss {} vs Keras {want}", r.loss);
    let (mut grads, mut states) = (0, 0);
    for (i, key) in model.weight_keys().iter().enumerate() {
        if let Some(want) = fx.get(&format!("{prefix}/grad/{key}")) {
            let got = g.values[i].as_ref().unwrap_or_else(|| panic!("{key}: no gradient"));
            let e = rel_err(got, want.data());
            assert!(e < 1e-4, "{prefix}: gradient of {key} differs from Keras by {e:e}");
            grads += 1;
        }
        if let Some(want) = fx.get(&format!("{prefix}/state/{key}")) {
            let got = g.state[i].as_ref().unwrap_or_else(|| panic!("{key}: no state update"));
            let e = rel_err(got, want.data());
            assert!(e < 1e-4, "{prefix}: updated {key} differs from Keras by {e:e}");
            states += 1;
        }
    }
    let in_fixture = |kind: &str| fx.keys().filter(|k| k.starts_with(&format!("{prefix}/{kind}/"))).count();
    assert_eq!((grads, states), (in_fixture("grad"), in_fixture("state")), "{prefix}: every Keras weight is compared");
    assert_eq!(grads + states, model.weight_keys().len(), "{prefix}: the weight keys match Keras's weights");
}

#[test]
fn small_cnn_matches_keras() {
    let same = Padding::Same;
    let mut g = ModelBuilder::new("cnn");
    let x = g.input("image", &[9, 10, 3], DType::F32);
    let h = g.apply(ZeroPadding2D::new(((1, 0), (0, 1))).name("pad"), &[x]).unwrap();
    let h = g.apply(Conv2D::new(4, 3).strides(2).padding(same).activation("relu").name("conv_s2"), &[h]).unwrap();
    let h = g.apply(BatchNormalization::new().name("bn"), &[h]).unwrap();
    let h = g.apply(DepthwiseConv2D::new(3).padding(same).depth_multiplier(2).name("dw"), &[h]).unwrap();
    let h =
        g.apply(Conv2D::new(6, 3).dilation_rate(2).padding(same).activation("tanh").name("conv_dil"), &[h]).unwrap();
    let h = g.apply(Conv2D::new(5, (2, 3)).name("conv_valid"), &[h]).unwrap();
    let h = g.apply(MaxPooling2D::new(2).strides(1).padding(same).name("max_pool"), &[h]).unwrap();
    let h = g.apply(AveragePooling2D::new(3).strides(2).padding(same).name("avg_pool"), &[h]).unwrap();
    let a = g.apply(GlobalAveragePooling2D::new().name("gap"), &[h]).unwrap();
    let m = g.apply(GlobalMaxPooling2D::new().name("gmp"), &[h]).unwrap();
    let h = g.apply(Concatenate::new().name("concat"), &[a, m]).unwrap();
    let out = g.apply(Dense::new(4).activation("softmax").name("out"), &[h]).unwrap();
    let model = g.build(&[x], &[out], 0).unwrap();
    let images = formula(&[3, 9, 10, 3], 100, 1.0, 0.0);
    assert_matches_keras("cnn", model, vec![Data::F32(images)], IntTensor::new(&[3], vec![1, 3, 0]).unwrap());
}

#[test]
fn w2_architecture_with_time_distributed_nested_cnn_matches_keras() {
    let (t, h, l, v, a, b) = (2, 16, 5, 30, 6, 3);
    let same = Padding::Same;
    let mut f = ModelBuilder::new("frame_cnn");
    let frame = f.input("frame", &[h, h, 3], DType::F32);
    let mut c = frame;
    for (name, filters) in [("conv1", 4), ("conv2", 6), ("conv3", 8)] {
        c = f.apply(Conv2D::new(filters, 3).strides(2).padding(same).activation("relu").name(name), &[c]).unwrap();
    }
    let c = f.apply(GlobalAveragePooling2D::new().name("gap"), &[c]).unwrap();
    let frame_cnn = f.build(&[frame], &[c], 1).unwrap();

    let mut g = ModelBuilder::new("w2_toy");
    let video = g.input("video", &[t, h, h, 3], DType::U8);
    let x = g.apply(Rescaling::new(1.0 / 255.0, 0.0).name("rescale"), &[video]).unwrap();
    let x = g.apply(TimeDistributed::new(frame_cnn).name("td_cnn"), &[x]).unwrap();
    let x = g.apply(Lstm::new(7).name("video_lstm"), &[x]).unwrap();
    let question = g.input("question", &[l], DType::I32);
    let q = g.apply(Embedding::new(v, 5).name("q_embed"), &[question]).unwrap();
    let q = g.apply(Lstm::new(4).name("q_lstm"), &[q]).unwrap();
    let x = g.apply(Concatenate::new().name("concat"), &[x, q]).unwrap();
    let x = g.apply(Dense::new(6).activation("relu").name("fc1"), &[x]).unwrap();
    let out = g.apply(Dense::new(a).activation("softmax").name("fc_out"), &[x]).unwrap();
    let model = g.build(&[video, question], &[out], 0).unwrap();

    let pixels = (0..b * t * h * h * 3).map(|i| ((i * 7919 + 13) % 256) as u8).collect();
    let ids = (0..b * l).map(|i| ((i * 17 + 3) % (v - 1) + 1) as i32).collect();
    let x = vec![
        Data::U8(ByteTensor::new(&[b, t, h, h, 3], pixels).unwrap()),
        Data::I32(IntTensor::new(&[b, l], ids).unwrap()),
    ];
    assert_matches_keras("w2", model, x, IntTensor::new(&[b], vec![2, 5, 0]).unwrap());
}
