//! `applications::inception_v3` against Keras 3's InceptionV3: parameter
//! counts (Keras's `model.summary()` numbers), the whole graph (every layer's
//! name, class, inputs in order and weight shapes, from
//! `fixtures/make_inception_fixture.py`), the output shapes, and the typed
//! error below 75x75.

mod common;

use common::*;
use kallista_ops::applications::{inception_v3, Pooling};
use kallista_ops::Data;
use serde_json::Value;
use std::collections::BTreeMap;

#[test]
fn graph_matches_keras_layer_for_layer() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inception_v3_keras_graph.json");
    let keras: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let model = inception_v3(false, Pooling::Avg, (75, 75), 0, 1).unwrap();
    assert_eq!(keras["count_params"].as_u64().unwrap() as usize, model.count_params());
    let ours: Value = serde_json::from_str(&model.to_json()).unwrap();
    let ours = &ours["config"];
    // Keras lists the InputLayer among the layers; Kallista lists it in `inputs`.
    let k_layers: Vec<&Value> =
        keras["layers"].as_array().unwrap().iter().filter(|l| l["class_name"] != "InputLayer").collect();
    let o_layers = ours["layers"].as_array().unwrap();
    let o_nodes = ours["nodes"].as_array().unwrap();
    assert_eq!(k_layers.len(), o_layers.len());
    assert_eq!(o_nodes.len(), o_layers.len(), "each layer is called once");
    // Keras lists layers in topological order, Kallista in creation order (the
    // order that numbers the names); the graph is compared by name.
    let class_of: BTreeMap<&str, &Value> =
        o_layers.iter().map(|l| (l["name"].as_str().unwrap(), &l["class_name"])).collect();
    let node_of: BTreeMap<&str, &Value> = o_nodes.iter().map(|n| (n["layer"].as_str().unwrap(), n)).collect();
    let mut keras_weights = BTreeMap::new();
    for k in &k_layers {
        let name = k["name"].as_str().unwrap();
        assert_eq!(Some(&&k["class_name"]), class_of.get(name), "class of {name}");
        // Inputs in argument order: the channel order of every concatenation.
        assert_eq!(k["inbound"], node_of[name]["inputs"], "inputs of {name}");
        for (key, shape) in k["weights"].as_object().unwrap() {
            let shape: Vec<usize> = shape.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            keras_weights.insert(key.clone(), shape);
        }
    }
    let our_weights: BTreeMap<String, Vec<usize>> =
        model.named_weights().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect();
    assert_eq!(our_weights, keras_weights, "weight keys and shapes");
}

#[test]
fn notop_avg_has_keras_parameter_count_and_names() {
    let model = inception_v3(false, Pooling::Avg, (75, 75), 1000, 1).unwrap();
    // Keras: InceptionV3(include_top=False, pooling="avg", weights=None):
    // Total params 21,802,784; trainable 21,768,352 (non-trainable: the
    // BatchNormalization moving statistics, 2 x 17,216).
    assert_eq!(model.count_params(), 21_802_784);
    assert_eq!(model.count_trainable_params(), 21_768_352);
    // 94 conv2d_bn blocks, 4 max and 9 average poolings, numbered as Keras does.
    for name in [
        "conv2d",
        "conv2d_93",
        "batch_normalization_93",
        "activation_93",
        "max_pooling2d_3",
        "average_pooling2d_8",
        "mixed0",
        "mixed9_1",
        "concatenate_1",
        "mixed10",
        "global_average_pooling2d",
    ] {
        assert!(model.layer(name).is_some(), "missing layer {name}");
    }
    assert!(model.layer("conv2d_94").is_none());
    assert!(model.weight("conv2d/kernel").is_some_and(|k| k.shape() == [3, 3, 3, 32]));
    assert!(model.weight("batch_normalization/gamma").is_none(), "scale=False has no gamma");
    assert!(model.weight("batch_normalization/beta").is_some());
    assert!(model.weight("conv2d/bias").is_none(), "use_bias=False");

    let x = randn(&[1, 75, 75, 3], 3, 1.0);
    let y = model.predict_on_batch(&[Data::F32(x)]).unwrap();
    assert_eq!(y[0].shape(), [1, 2048]);
    assert!(y[0].data().iter().all(|v| v.is_finite() && *v >= 0.0), "relu features");
}

#[test]
fn top_and_spatial_outputs() {
    // Keras InceptionV3(weights=None): 23,851,784 parameters with the 1000-way top.
    let top = inception_v3(true, Pooling::None, (75, 75), 1000, 1).unwrap();
    assert_eq!(top.count_params(), 23_851_784);
    assert_eq!(top.output_specs()[0].shape, [1000]);
    assert!(top.layer("avg_pool").is_some() && top.layer("predictions").is_some());
    let spatial = inception_v3(false, Pooling::None, (150, 150), 0, 1).unwrap();
    assert_eq!(spatial.output_specs()[0].shape, [3, 3, 2048]);
    let max = inception_v3(false, Pooling::Max, (75, 80), 0, 1).unwrap();
    assert_eq!(max.output_specs()[0].shape, [2048]);
    assert!(max.layer("global_max_pooling2d").is_some());
}

#[test]
fn below_75_is_a_typed_error() {
    let err = inception_v3(false, Pooling::Avg, (74, 100), 0, 1).unwrap_err().to_string();
    assert!(err.contains("75") && err.contains("74x100"), "{err}");
}

/// `formula()` of `make_inception_fixture.py`: weight number `k` (index of its
/// key in sorted order), computed in f64 and rounded to f32 as numpy does.
fn formula(key: &str, k: usize, shape: &[usize]) -> kallista_ops::Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|j| {
            let s = (0.37 * j as f64 + 1.3 * k as f64).sin();
            let v = if key.ends_with("/kernel") {
                let fan_in: usize = shape[..shape.len() - 1].iter().product();
                2.0 / (fan_in as f64).sqrt() * s
            } else if key.ends_with("/moving_variance") {
                1.0 + 0.5 * s * s
            } else {
                0.1 * s
            };
            v as f32
        })
        .collect();
    kallista_ops::Tensor::new(shape, data).unwrap()
}

#[test]
fn forward_matches_keras() {
    let mut model = inception_v3(false, Pooling::Avg, (75, 75), 0, 1).unwrap();
    let weights: BTreeMap<String, kallista_ops::Tensor> = model
        .named_weights()
        .into_iter()
        .enumerate()
        .map(|(k, (key, t))| {
            let v = formula(&key, k, t.shape());
            (key, v)
        })
        .collect();
    model.set_weights(&weights).unwrap();
    let n = 75 * 75 * 3;
    let x =
        kallista_ops::Tensor::new(&[1, 75, 75, 3], (0..n).map(|i| (0.011 * i as f64).sin() as f32).collect()).unwrap();
    let y = &model.predict_on_batch(&[Data::F32(x)]).unwrap()[0];
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inception_v3_keras_forward.safetensors");
    let (want, _) = kallista_ops::model::read_safetensors(std::path::Path::new(path)).unwrap();
    let want = &want["y"];
    assert_eq!(y.shape(), want.shape());
    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = y.max_abs_diff(want);
    assert!(scale > 1e-2, "the reference output is not degenerate");
    assert!(err <= 1e-4 * scale, "max |kallista - keras| = {err}, max |keras| = {scale}");
}
