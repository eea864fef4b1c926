//! Keras 3 `.weights.h5` import (pure-Rust HDF5): the toy video-QA model of
//! `fixtures/make_keras_h5_fixtures.py` (a nested frame CNN with a
//! scale-less BatchNormalization inside TimeDistributed, LSTM, GRU,
//! Embedding, Dense) loads every weight, moving statistics included, exactly
//! as Keras saved it; a model whose layers differ gets every mismatch listed.

use kallista_ops::layers::*;
use kallista_ops::model::{read_safetensors, Model, ModelBuilder};
use kallista_ops::{DType, OpsError};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The Kallista twin of the fixture's Keras model; `proj` units and the GRU
/// size are parameters so that a test can make them differ.
fn toy(proj: usize, gru: usize) -> Model {
    let mut f = ModelBuilder::new("frame_cnn");
    let fi = f.input("frame", &[8, 8, 3], DType::F32);
    let h = f.apply(Conv2D::new(4, 3).strides(2).padding(Padding::Same).use_bias(false).name("conv1"), &[fi]).unwrap();
    let h = f.apply(BatchNormalization::new().scale(false).name("bn"), &[h]).unwrap();
    let h = f.apply(Activation::new("relu").name("relu"), &[h]).unwrap();
    let h = f.apply(GlobalAveragePooling2D::new().name("gap"), &[h]).unwrap();
    let h = f.apply(Dense::new(proj).name("proj"), &[h]).unwrap();
    let cnn = f.build(&[fi], &[h], 1).unwrap();

    let mut g = ModelBuilder::new("toy");
    let v = g.input("video", &[2, 8, 8, 3], DType::F32);
    let q = g.input("question", &[4], DType::I32);
    let x = g.apply(TimeDistributed::new(cnn).name("td_cnn"), &[v]).unwrap();
    let x = g.apply(Lstm::new(6).name("video_lstm"), &[x]).unwrap();
    let e = g.apply(Embedding::new(10, 3).name("q_embed"), &[q]).unwrap();
    let e = g.apply(Gru::new(gru).name("q_gru"), &[e]).unwrap();
    let c = g.apply(Concatenate::new().name("concat"), &[x, e]).unwrap();
    let y = g.apply(Dense::new(3).activation("softmax").name("fc_out"), &[c]).unwrap();
    g.build(&[v, q], &[y], 2).unwrap()
}

#[test]
fn keras_weights_h5_loads_every_weight_exactly() {
    let mut model = toy(5, 2);
    model.load_keras_weights_h5(fixture("keras_toy.weights.h5")).unwrap();
    let (want, _) = read_safetensors(&fixture("keras_toy_weights.safetensors")).unwrap();
    let have = model.named_weights();
    assert_eq!(have.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, w) in &want {
        assert_eq!(have[k].shape(), w.shape(), "{k}");
        assert_eq!(have[k].data(), w.data(), "{k}");
    }
}

#[test]
fn keras_weights_h5_mismatches_are_all_listed() {
    let mut model = toy(7, 3);
    let before = model.named_weights();
    let err = model.load_keras_weights_h5(fixture("keras_toy.weights.h5")).unwrap_err();
    let OpsError::WeightMismatch(p) = &err else { panic!("{err}") };
    let text = p.join("\n");
    for needle in [
        "'td_cnn/frame_cnn/proj/kernel' (/layers/time_distributed/layer/layers/dense/vars/0): file has [4, 5], model expects [4, 7]",
        "'td_cnn/frame_cnn/proj/bias'",
        "'q_gru/kernel' (/layers/gru/cell/vars/0): file has [3, 6], model expects [3, 9]",
        "'q_gru/recurrent_kernel'",
        "'q_gru/bias'",
        "'video_lstm/kernel'",
    ] {
        assert!(text.contains(needle), "no '{needle}' in:\n{text}");
    }
    assert_eq!(model.named_weights(), before, "nothing changes on error");

    let err = model.load_keras_weights_h5(fixture("no_such.weights.h5")).unwrap_err();
    assert!(matches!(err, OpsError::Hdf5 { .. }), "{err}");
}

/// The legacy HDF5 format (`model.save("x.h5")`: `model_weights` with
/// `layer_names` / `weight_names`) goes through the same entry point and
/// gives the same weights; its weight names omit the nested model's name.
#[test]
fn keras_legacy_h5_loads_every_weight_exactly() {
    // `model_weights` (full-model save) and root (Keras 2 weights-only) layouts.
    for file in ["keras_toy_legacy.h5", "keras_toy_legacy_root.h5"] {
        let mut model = toy(5, 2);
        model.load_keras_weights_h5(fixture(file)).unwrap();
        let (want, _) = read_safetensors(&fixture("keras_toy_weights.safetensors")).unwrap();
        let have = model.named_weights();
        assert_eq!(have.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{file}");
        for (k, w) in &want {
            assert_eq!(have[k].shape(), w.shape(), "{file} {k}");
            assert_eq!(have[k].data(), w.data(), "{file} {k}");
        }
    }
}

#[test]
fn keras_legacy_h5_mismatches_are_all_listed() {
    let mut model = toy(7, 3);
    let before = model.named_weights();
    let err = model.load_keras_weights_h5(fixture("keras_toy_legacy.h5")).unwrap_err();
    let OpsError::WeightMismatch(p) = &err else { panic!("{err}") };
    let text = p.join("\n");
    for needle in [
        "'td_cnn/frame_cnn/proj/kernel' (/model_weights/td_cnn/proj/kernel): file has [4, 5], model expects [4, 7]",
        "'td_cnn/frame_cnn/proj/bias' (/model_weights/td_cnn/proj/bias): file has [5], model expects [7]",
        "'q_gru/kernel' (/model_weights/q_gru/q_gru/gru_cell/kernel): file has [3, 6], model expects [3, 9]",
        "'q_gru/recurrent_kernel'",
        "'q_gru/bias'",
        "'video_lstm/kernel' (/model_weights/video_lstm/video_lstm/lstm_cell/kernel)",
        "'fc_out/kernel'",
    ] {
        assert!(text.contains(needle), "no '{needle}' in:\n{text}");
    }
    assert_eq!(model.named_weights(), before, "nothing changes on error");
}
