//! Workload W1 of `shared/peers/WORKLOAD.md`: the video-QA model on
//! precomputed frame features. Train samples/s at batch 32 (full step:
//! forward, backward, Adam), inference samples/s at batch 256; median over 20
//! steps after 5 warm-up steps; prints one JSON line like the peers do.
//!
//!     cargo bench -p kallista-ops --bench w1            # RAYON_NUM_THREADS=2 by default
//!     scripts/bench-w1.sh                               # this plus the peers, side by side

use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{Data, IntTensor, Tensor};
use std::time::Instant;

const WARMUP: usize = 5;

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let steps: usize = std::env::var("W1_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let d = VideoQaDims::w1();
    let mut model = video_qa(&d, 1234).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let train: Vec<_> = (0..4).map(|i| batch(&d, 32, 1234 + i)).collect();
    let mut times = vec![];
    let mut losses = vec![];
    for i in 0..WARMUP + steps {
        let (x, y) = &train[i % train.len()];
        let t = Instant::now();
        let r = model.train_on_batch(x, y).unwrap();
        if i >= WARMUP {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(r.loss);
    }
    // Where a step's time goes: forward+backward vs the optimizer update.
    let (mut fb, mut upd) = (vec![], vec![]);
    for i in 0..10 {
        let (x, y) = &train[i % train.len()];
        let t = Instant::now();
        let (_, g) = model.gradients_on_batch(x, y).unwrap();
        fb.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.apply_gradients(g).unwrap();
        upd.push(t.elapsed().as_secs_f64());
    }
    let (ix, _) = batch(&d, 256, 1334);
    let mut itimes = vec![];
    // W1_INFER_STEPS=0 skips inference (for profiling the train step alone).
    let infer_steps: usize = std::env::var("W1_INFER_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(steps);
    for i in 0..WARMUP + infer_steps {
        let t = Instant::now();
        model.predict_on_batch(&ix).unwrap();
        if i >= WARMUP {
            itimes.push(t.elapsed().as_secs_f64());
        }
    }
    let (tr, inf) = (median(times), if itimes.is_empty() { f64::NAN } else { median(itimes) });
    let fwd_flop = (16 * 2 * 2304 * 1024 + 20 * 2 * 384 * 512 + 2 * 384 * 128 + 2 * 128 * 1000) as f64;
    println!(
        "{{\"peer\": \"kallista\", \"workload\": \"W1\", \"train_samples_per_s\": {:.2}, \"infer_samples_per_s\": {:.2}, \"step_ms_median\": {:.3}, \"infer_ms_median\": {:.3}, \"threads\": {}, \"train_gflops\": {:.2}, \"infer_gflops\": {:.2}, \"fwd_bwd_ms\": {:.3}, \"update_ms\": {:.3}, \"first_loss\": {:.4}, \"last_loss\": {:.4}}}",
        32.0 / tr,
        256.0 / inf,
        tr * 1e3,
        inf * 1e3,
        rayon::current_num_threads(),
        3.0 * fwd_flop * 32.0 / tr / 1e9,
        fwd_flop * 256.0 / inf / 1e9,
        median(fb) * 1e3,
        median(upd) * 1e3,
        losses[0],
        losses[losses.len() - 1]
    );
}
