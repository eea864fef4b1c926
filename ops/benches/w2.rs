//! Workload W2 of `shared/peers/WORKLOAD.md`: the video-QA model end to end
//! on raw uint8 frames, with a small trainable CNN under TimeDistributed.
//! Train samples/s at batch 16 (full step: forward, backward, Adam),
//! inference samples/s at batch 256; median over 20 steps after 5 warm-up
//! steps; prints one JSON line like the peers do.
//!
//!     cargo bench -p kallista-ops --bench w2            # RAYON_NUM_THREADS=2 by default
//!     scripts/bench-w1.sh W2                            # this plus the peers, side by side

use kallista_ops::applications::{video_qa_pixels, VideoQaPixelsDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{ByteTensor, Data, IntTensor};
use std::time::Instant;

const WARMUP: usize = 5;

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

/// The 1-minute load average (as the peers record it), or `null`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "null".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let steps: usize = std::env::var("W2_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let d = VideoQaPixelsDims::w2();
    let mut model = video_qa_pixels(&d, 1234).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let train: Vec<_> = (0..4).map(|i| batch(&d, 16, 1234 + i)).collect();
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
    let mut itimes = vec![];
    // W2_INFER_STEPS=0 skips inference (for profiling the train step alone).
    let infer_steps: usize = std::env::var("W2_INFER_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(steps);
    let (ix, _) = batch(&d, if infer_steps > 0 { 256 } else { 1 }, 1334);
    for i in 0..WARMUP.min(infer_steps) + infer_steps {
        let t = Instant::now();
        model.predict_on_batch(&ix).unwrap();
        if i >= WARMUP.min(infer_steps) {
            itimes.push(t.elapsed().as_secs_f64());
        }
    }
    let (tr, inf) = (median(times), if itimes.is_empty() { f64::NAN } else { median(itimes) });
    let fwd_flop = d.forward_flops();
    println!(
        "{{\"peer\": \"kallista\", \"workload\": \"W2\", \"train_samples_per_s\": {:.2}, \"infer_samples_per_s\": {:.2}, \"step_ms_median\": {:.3}, \"infer_ms_median\": {:.3}, \"threads\": {}, \"train_gflops\": {:.2}, \"infer_gflops\": {:.2}, \"fwd_bwd_ms\": {:.3}, \"update_ms\": {:.3}, \"first_loss\": {:.4}, \"last_loss\": {:.4}, \"loadavg_1m\": {}}}",
        16.0 / tr,
        256.0 / inf,
        tr * 1e3,
        inf * 1e3,
        rayon::current_num_threads(),
        3.0 * fwd_flop * 16.0 / tr / 1e9,
        fwd_flop * 256.0 / inf / 1e9,
        median(fb) * 1e3,
        median(upd) * 1e3,
        losses[0],
        losses[losses.len() - 1],
        loadavg()
    );
}
