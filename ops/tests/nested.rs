//! Nested models and TimeDistributed: gradients through them, weight keys,
//! Keras freezing semantics (a frozen sub-model's weights, BatchNormalization
//! moving statistics included, do not move), and the JSON round trip.

mod common;

use common::*;
use kallista_ops::layers::*;
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{ByteTensor, DType, Data, IntTensor};

/// A small frame CNN with a BatchNormalization: `[6, 6, 2]` -> `[4]`.
fn frame_cnn(seed: u64) -> Model {
    let mut g = ModelBuilder::new("frame_cnn");
    let x = g.input("frame", &[6, 6, 2], DType::F32);
    let h =
        g.apply(Conv2D::new(3, 3).strides(2).padding(Padding::Same).activation("tanh").name("conv1"), &[x]).unwrap();
    let h = g.apply(BatchNormalization::new().name("bn"), &[h]).unwrap();
    let h = g.apply(Conv2D::new(4, 2).name("conv2"), &[h]).unwrap();
    let y = g.apply(GlobalAveragePooling2D::new().name("gap"), &[h]).unwrap();
    g.build(&[x], &[y], seed).unwrap()
}

/// uint8 clips `[T=3, 6, 6, 2]` -> Rescaling -> TimeDistributed(frame_cnn) -> LSTM -> softmax.
fn video_model(seed: u64) -> Model {
    let mut g = ModelBuilder::new("video");
    let v = g.input("video", &[3, 6, 6, 2], DType::U8);
    let x = g.apply(Rescaling::new(1.0 / 255.0, 0.0).name("rescale"), &[v]).unwrap();
    let x = g.apply(TimeDistributed::new(frame_cnn(seed + 1)).name("td_cnn"), &[x]).unwrap();
    let x = g.apply(Lstm::new(5).name("lstm"), &[x]).unwrap();
    let y = g.apply(Dense::new(3).activation("softmax").name("out"), &[x]).unwrap();
    g.build(&[v], &[y], seed).unwrap()
}

fn batch(b: usize, seed: u64) -> (Vec<Data>, Vec<Data>) {
    let mut r = kallista_ops::init::Rng::new(seed);
    let n = b * 3 * 6 * 6 * 2;
    let video = ByteTensor::new(&[b, 3, 6, 6, 2], (0..n).map(|_| r.below(256) as u8).collect()).unwrap();
    let y = IntTensor::new(&[b], (0..b).map(|_| r.below(3) as i32).collect()).unwrap();
    (vec![Data::U8(video)], vec![Data::I32(y)])
}

#[test]
fn time_distributed_gradients_over_a_layer_and_a_nested_model() {
    let conv = Conv2D::new(3, 3).strides(2).padding(Padding::Same);
    check_layer(
        "TimeDistributed(Conv2D)",
        Box::new(TimeDistributed::new(conv)),
        vec![randn(&[2, 3, 5, 4, 2], 1, 1.0)],
        None,
    );
    // Training mode: the nested BatchNormalization normalises over all B * T frames.
    let td = TimeDistributed::new(frame_cnn(3));
    check_layer("TimeDistributed(frame_cnn)", Box::new(td), vec![randn(&[2, 3, 6, 6, 2], 2, 1.0)], None);
    check_layer("nested model", Box::new(frame_cnn(4)), vec![randn(&[3, 6, 6, 2], 3, 1.0)], None);
}

#[test]
fn nested_weights_are_keyed_by_their_layer_path() {
    let model = video_model(7);
    let keys = model.weight_keys();
    for key in ["td_cnn/frame_cnn/conv1/kernel", "td_cnn/frame_cnn/bn/moving_variance", "td_cnn/frame_cnn/conv2/bias"] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    let conv1 = 3 * 3 * 2 * 3 + 3;
    let bn = 4 * 3;
    let conv2 = 2 * 2 * 3 * 4 + 4;
    let lstm = 4 * 20 + 5 * 20 + 20;
    let out = 5 * 3 + 3;
    assert_eq!(model.count_params(), conv1 + bn + conv2 + lstm + out);
    assert_eq!(model.count_trainable_params(), model.count_params() - 6, "moving statistics are not trainable");
    // The nested model kept the weights it was built with (its own seed).
    let cnn = frame_cnn(8);
    assert_eq!(model.weight("td_cnn/frame_cnn/conv1/kernel"), cnn.weight("conv1/kernel"));
    let summary = model.summary();
    assert!(summary.contains("td_cnn (TimeDistributed)") && summary.contains("(None, 3, 4)"), "{summary}");
}

#[test]
fn json_round_trip_rebuilds_time_distributed_nested_models() {
    let mut model = video_model(11);
    model.set_trainable("td_cnn", false).unwrap();
    let json = model.to_json();
    assert!(json.contains("\"TimeDistributed\"") && json.contains("\"Functional\"") && json.contains("\"uint8\""));
    let rebuilt = Model::from_json(&json).unwrap();
    assert_eq!(rebuilt.to_json(), json, "config round-trips");
    assert_eq!(rebuilt.weight_keys(), model.weight_keys());
    assert_eq!(rebuilt.count_trainable_params(), model.count_trainable_params(), "freezing survives");
    let (x, _) = batch(4, 1);
    assert_eq!(rebuilt.predict_on_batch(&x).unwrap(), model.predict_on_batch(&x).unwrap(), "same initial weights");
}

#[test]
fn a_frozen_sub_model_is_bit_identical_after_training() {
    let mut model = video_model(5);
    model.set_trainable("td_cnn", false).unwrap();
    model.compile(OptimizerConfig::adam(1e-2), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    // Non-trivial moving statistics, so that "unchanged" would show an update.
    let mut w = model.named_weights();
    w.get_mut("td_cnn/frame_cnn/bn/moving_mean").unwrap().data_mut().iter_mut().for_each(|v| *v = 0.3);
    model.set_weights(&w).unwrap();
    let before = model.named_weights();
    let (x, y) = batch(16, 2);
    model.train_on_batch(&x, &y).unwrap();
    model.train_on_batch(&x, &y).unwrap();
    let after = model.named_weights();
    for (key, value) in &before {
        if key.starts_with("td_cnn/") {
            let same = value.data().iter().zip(after[key].data()).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{key} changed");
            assert!(!model.optimizer().unwrap().slots.contains_key(key), "{key} has an optimizer slot");
        }
    }
    assert_ne!(before["lstm/kernel"], after["lstm/kernel"], "the rest of the model trains");
    // Unfrozen, the same steps move the CNN and its moving statistics.
    let mut open = video_model(5);
    open.set_weights(&before).unwrap();
    open.compile(OptimizerConfig::adam(1e-2), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    open.train_on_batch(&x, &y).unwrap();
    let moved = open.named_weights();
    assert_ne!(before["td_cnn/frame_cnn/conv1/kernel"], moved["td_cnn/frame_cnn/conv1/kernel"]);
    assert_ne!(before["td_cnn/frame_cnn/bn/moving_mean"], moved["td_cnn/frame_cnn/bn/moving_mean"]);
}

#[test]
fn bad_image_inputs_and_configs_give_typed_errors() {
    use kallista_ops::OpsError;
    let mut g = ModelBuilder::new("bad");
    let flat = g.input("flat", &[10], DType::F32);
    match g.apply(Conv2D::new(2, 3).name("c"), &[flat]) {
        Err(OpsError::LayerInput { layer, class, got, .. }) => {
            assert_eq!((layer.as_str(), class.as_str(), got), ("c", "Conv2D", vec![10]))
        }
        other => panic!("{other:?}"),
    }
    let small = g.input("small", &[2, 2, 1], DType::F32);
    let err = g.apply(Conv2D::new(2, 3).name("big_kernel"), &[small]).unwrap_err().to_string();
    assert!(err.contains("big_kernel") && err.contains("[2, 2, 1]"), "{err}");
    let err = g.apply(TimeDistributed::new(Dense::new(2)).name("td"), &[flat]).unwrap_err().to_string();
    assert!(err.contains("'td'") && err.contains("time"), "{err}");
    let wrong = g.input("wrong", &[5, 5, 2], DType::F32);
    let err = g.apply(frame_cnn(1), &[wrong]).unwrap_err().to_string();
    assert!(err.contains("frame_cnn") && err.contains("(None, 6, 6, 2)"), "{err}");
    // Configs Kallista does not implement are refused by name, not ignored.
    for (class, cfg) in [
        ("Conv2D", serde_json::json!({"filters": 2, "kernel_size": 3, "data_format": "channels_first"})),
        ("Conv2D", serde_json::json!({"filters": 2, "kernel_size": 3, "strides": 2, "dilation_rate": 2})),
        ("Conv2D", serde_json::json!({"filters": 2, "kernel_size": 3, "padding": "causal"})),
        ("MaxPooling2D", serde_json::json!({"pool_size": 2, "data_format": "channels_first"})),
    ] {
        let err = layer_from_config(class, &cfg).unwrap_err().to_string();
        assert!(err.contains(class), "{class}: {err}");
    }
    let mut bn = layer_from_config("BatchNormalization", &serde_json::json!({"axis": 1})).unwrap();
    let err = bn.build(&[TensorSpec::f32(&[4, 4, 3])]).unwrap_err().to_string();
    assert!(err.contains("axis=1"), "{err}");
}
