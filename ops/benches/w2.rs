//! Workload W2 of `shared/peers/WORKLOAD.md`: the video-QA model end to end
//! on raw uint8 frames, with a small trainable CNN under TimeDistributed.
//! Train samples/s at batch 16 (full step: forward, backward, Adam),
//! inference samples/s at batch 256; median over 20 steps after 5 warm-up
//! steps; prints one JSON line like the peers do.
//!
//!     cargo bench --workspace --bench w2            # RAYON_NUM_THREADS=2 by default
//!     scripts/bench-w1.sh W2                            # this plus the peers, side by side

use kallista_ops::applications::{video_qa_pixels, VideoQaPixelsDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{ByteTensor, Data, IntTensor};

#[path = "common/harness.rs"]
mod harness;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn batch(d: &VideoQaPixelsDims, b: usize, seed: u64) -> (Vec<Data>, Vec<Data>) {
    let mut rng = Rng::new(seed);
    let n = b * d.frames * d.height * d.width * d.channels;
    let video =
        ByteTensor::new(&[b, d.frames, d.height, d.width, d.channels], (0..n).map(|_| rng.below(256) as u8).collect())
            .unwrap();
    let q = IntTensor::new(
        &[b, d.question_len],
        (0..b * d.question_len).map(|_| 1 + rng.below(d.vocab - 1) as i32).collect(),
    )
    .unwrap();
    let a = IntTensor::new(&[b], (0..b).map(|_| rng.below(d.answers) as i32).collect()).unwrap();
    (vec![Data::U8(video), Data::I32(q)], vec![Data::I32(a)])
}

fn main() {
    let d = VideoQaPixelsDims::w2();
    let mut model = video_qa_pixels(&d, 1234).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let infer = |b: usize| batch(&d, b, 1334).0;
    let w = harness::Workload {
        name: "W2",
        train: (0..4).map(|i| batch(&d, 16, 1234 + i)).collect(),
        train_batch: 16,
        infer: &infer,
        infer_batch: 256,
        forward_flops: d.forward_flops(),
    };
    harness::run(&mut model, &w);
}
