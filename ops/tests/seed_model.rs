//! The seed video-QA model of the issue "Vision ops and pre-trained CNNs":
//! TimeDistributed(frozen InceptionV3, avg pooling) -> LSTM(256); question
//! Embedding -> LSTM(128); concatenate -> Dense(128, relu) -> Dense(answers,
//! softmax). It is built from its JSON config (as executors rebuild it),
//! trains one step, and the frozen CNN's weights, BatchNormalization moving
//! statistics included, are bit-identical after the step while the heads move.

use kallista_ops::applications::{inception_v3, Pooling};
use kallista_ops::layers::*;
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{DType, Data, IntTensor, Tensor};

const FRAMES: usize = 2;
const SIDE: usize = 75;
const QLEN: usize = 4;
const VOCAB: usize = 20;
const ANSWERS: usize = 5;

fn seed_model() -> Model {
    let mut cnn = inception_v3(false, Pooling::Avg, (SIDE, SIDE), 0, 1).unwrap();
    cnn.set_all_trainable(false);
    let mut g = ModelBuilder::new("video_qa_inception");
    let v = g.input("video", &[FRAMES, SIDE, SIDE, 3], DType::F32);
    let q = g.input("question", &[QLEN], DType::I32);
    let x = g.apply(TimeDistributed::new(cnn).name("td_cnn"), &[v]).unwrap();
    let x = g.apply(Lstm::new(256).name("video_lstm"), &[x]).unwrap();
    let e = g.apply(Embedding::new(VOCAB, 32).name("q_embed"), &[q]).unwrap();
    let e = g.apply(Lstm::new(128).name("q_lstm"), &[e]).unwrap();
    let c = g.apply(Concatenate::new().name("concat"), &[x, e]).unwrap();
    let h = g.apply(Dense::new(128).activation("relu").name("fc1"), &[c]).unwrap();
    let y = g.apply(Dense::new(ANSWERS).activation("softmax").name("fc_out"), &[h]).unwrap();
    g.build(&[v, q], &[y], 2).unwrap()
}

#[test]
fn seed_model_from_json_trains_with_a_frozen_inception_v3() {
    let json = seed_model().to_json();
    let mut model = Model::from_json(&json).unwrap();
    assert_eq!(model.to_json(), json, "config round-trips");
    // InceptionV3 without top (21,802,784) plus the heads.
    let heads =
        (2048 + 256 + 1) * 4 * 256 + VOCAB * 32 + (32 + 128 + 1) * 4 * 128 + (384 + 1) * 128 + (128 + 1) * ANSWERS;
    assert_eq!(model.count_params(), 21_802_784 + heads);
    assert_eq!(model.count_trainable_params(), heads, "the CNN is frozen, its BN statistics too");

    model.compile(OptimizerConfig::adam(1e-2), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let n = FRAMES * SIDE * SIDE * 3;
    let video =
        Tensor::new(&[1, FRAMES, SIDE, SIDE, 3], (0..n).map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0).collect())
            .unwrap();
    let question = IntTensor::new(&[1, QLEN], vec![3, 1, 4, 1]).unwrap();
    let answer = IntTensor::new(&[1], vec![2]).unwrap();
    let before = model.named_weights();
    model.train_on_batch(&[Data::F32(video), Data::I32(question)], &[Data::I32(answer)]).unwrap();
    let after = model.named_weights();

    let mut cnn_keys = 0;
    for (k, w) in &before {
        let same = after[k].data().iter().zip(w.data()).all(|(a, b)| a.to_bits() == b.to_bits());
        if k.starts_with("td_cnn/") {
            cnn_keys += 1;
            assert!(same, "frozen weight '{k}' changed");
        } else if k.ends_with("/kernel") {
            assert!(!same, "trainable weight '{k}' did not move");
        }
    }
    // 94 conv kernels + 94 x (beta, moving_mean, moving_variance).
    assert_eq!(cnn_keys, 94 * 4);
    assert!(before.contains_key("td_cnn/inception_v3/batch_normalization_93/moving_variance"));
}
