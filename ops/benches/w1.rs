//! Workload W1 of `shared/peers/WORKLOAD.md`: the video-QA model on
//! precomputed frame features. Train samples/s at batch 32 (full step:
//! forward, backward, Adam), inference samples/s at batch 256; median over 20
//! steps after 5 warm-up steps; prints one JSON line like the peers do.
//!
//!     cargo bench --workspace --bench w1            # RAYON_NUM_THREADS=2 by default
//!     scripts/bench-w1.sh                               # this plus the peers, side by side

use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{Data, IntTensor, Tensor};

#[path = "common/harness.rs"]
mod harness;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn batch(d: &VideoQaDims, b: usize, seed: u64) -> (Vec<Data>, Vec<Data>) {
    let mut rng = Rng::new(seed);
    let video = Tensor::new(&[b, d.frames, d.features], (0..b * d.frames * d.features).map(|_| rng.normal()).collect())
        .unwrap();
    let q = IntTensor::new(
        &[b, d.question_len],
        (0..b * d.question_len).map(|_| 1 + rng.below(d.vocab - 1) as i32).collect(),
    )
    .unwrap();
    let a = IntTensor::new(&[b], (0..b).map(|_| rng.below(d.answers) as i32).collect()).unwrap();
    (vec![Data::F32(video), Data::I32(q)], vec![Data::I32(a)])
}

fn main() {
    let d = VideoQaDims::w1();
    let mut model = video_qa(&d, 1234).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let infer = |b: usize| batch(&d, b, 1334).0;
    let w = harness::Workload {
        name: "W1",
        train: (0..4).map(|i| batch(&d, 32, 1234 + i)).collect(),
        train_batch: 32,
        infer: &infer,
        infer_batch: 256,
        forward_flops: (16 * 2 * 2304 * 1024 + 20 * 2 * 384 * 512 + 2 * 384 * 128 + 2 * 128 * 1000) as f64,
    };
    harness::run(&mut model, &w);
}
