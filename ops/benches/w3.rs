//! Workload W3 of `shared/peers/WORKLOAD.md`, the seed model on raw frames:
//! TimeDistributed(frozen InceptionV3, no top, average pooling) over
//! `[B, T, 150, 150, 3]` -> LSTM(256); question Embedding(V, 256) ->
//! LSTM(128); concatenate -> Dense(128, relu) -> Dense(A, softmax); Adam.
//! GPU only (2 CPU cores take minutes a step). B = 8 and T = 4 for training
//! (32 frames a step), B = 32 for inference; `scripts/gpu/torch_w3.py` is
//! the PyTorch peer with the same sizes.
//!
//!     KALLISTA_DEVICE=cuda:0 W3_STEPS=10 cargo bench -p kallista-ops --features cuda --bench w3

use kallista_ops::applications::{inception_v3, Pooling};
use kallista_ops::init::Rng;
use kallista_ops::layers::{Concatenate, Dense, Embedding, Lstm, TimeDistributed};
use kallista_ops::losses::Loss;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{DType, Data, IntTensor, Tensor};

#[path = "common/harness.rs"]
mod harness;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FRAMES: usize = 4;
const SIDE: usize = 150;
const QUESTION_LEN: usize = 20;
const VOCAB: usize = 10_000;
const ANSWERS: usize = 1000;
/// Forward FLOPs of InceptionV3 on one 150x150 frame, approximately: its
/// 11.4 GFLOP at 299x299 scaled by the area (the heads add under 1%).
const CNN_FLOPS: f64 = 11.4e9 * (150.0 * 150.0) / (299.0 * 299.0);

fn w3_model() -> Model {
    let mut cnn = inception_v3(false, Pooling::Avg, (SIDE, SIDE), 0, 1).expect("InceptionV3 at 150x150");
    cnn.set_all_trainable(false);
    let mut g = ModelBuilder::new("w3");
    let v = g.input("video", &[FRAMES, SIDE, SIDE, 3], DType::F32);
    let q = g.input("question", &[QUESTION_LEN], DType::I32);
    let build = |mut g: ModelBuilder| -> kallista_ops::Result<Model> {
        let x = g.apply(TimeDistributed::new(cnn), &[v])?;
        let x = g.apply(Lstm::new(256), &[x])?;
        let e = g.apply(Embedding::new(VOCAB, 256), &[q])?;
        let e = g.apply(Lstm::new(128), &[e])?;
        let c = g.apply(Concatenate::new(), &[x, e])?;
        let h = g.apply(Dense::new(128).activation("relu"), &[c])?;
        let y = g.apply(Dense::new(ANSWERS).activation("softmax"), &[h])?;
        g.build(&[v, q], &[y], 2)
    };
    build(g).expect("the W3 model")
}

fn batch(b: usize, seed: u64) -> (Vec<Data>, Vec<Data>) {
    let mut rng = Rng::new(seed);
    let n = b * FRAMES * SIDE * SIDE * 3;
    let video = Tensor::new(&[b, FRAMES, SIDE, SIDE, 3], (0..n).map(|_| rng.normal()).collect()).unwrap();
    let ids = (0..b * QUESTION_LEN).map(|_| 1 + rng.below(VOCAB - 1) as i32).collect();
    let q = IntTensor::new(&[b, QUESTION_LEN], ids).unwrap();
    let a = IntTensor::new(&[b], (0..b).map(|_| rng.below(ANSWERS) as i32).collect()).unwrap();
    (vec![Data::F32(video), Data::I32(q)], vec![Data::I32(a)])
}

fn main() {
    let mut model = w3_model();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let infer = |b: usize| batch(b, 1334).0;
    let w = harness::Workload {
        name: "W3",
        train: (0..2).map(|i| batch(8, 1234 + i)).collect(),
        train_batch: 8,
        infer: &infer,
        infer_batch: 32,
        forward_flops: FRAMES as f64 * CNN_FLOPS,
    };
    harness::run(&mut model, &w);
}
