//! The measurement shared by the workload benches (W1, W2, W3): train steps,
//! the forward+backward / update split, inference, and one JSON line in the
//! peers' format (`shared/peers/peerlib.py`), so `scripts/bench-w1.sh` can
//! set them side by side.

use kallista_ops::backend::{default_backend, set_default_device, Device};
use kallista_ops::model::Model;
use kallista_ops::Data;
use std::time::Instant;

/// Warm-up steps before timing (as the peers).
pub const WARMUP: usize = 5;

/// A workload to measure.
pub struct Workload<'a> {
    /// `"W1"`, `"W2"`: also the prefix of the `<NAME>_STEPS` / `<NAME>_INFER_STEPS` variables.
    pub name: &'a str,
    pub train: Vec<(Vec<Data>, Vec<Data>)>,
    pub train_batch: usize,
    /// Inference batch builder (called with the batch size; 1 when inference is skipped).
    pub infer: &'a dyn Fn(usize) -> Vec<Data>,
    pub infer_batch: usize,
    /// Forward FLOPs per sample (train counts 3x, as the peers do).
    pub forward_flops: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The 1-minute load average (as the peers record it), or `null`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "null".into())
}

/// Measures `model` (compiled) on `w` and prints the JSON line.
/// `<NAME>_STEPS` (default 20) timed steps; `<NAME>_INFER_STEPS=0` skips inference;
/// `KALLISTA_DEVICE` (`cpu`, `cuda:N`) picks the backend.
pub fn run(model: &mut Model, w: &Workload<'_>) {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let device = std::env::var("KALLISTA_DEVICE").unwrap_or_else(|_| "cpu".into());
    let opened = Device::parse(&device).and_then(set_default_device);
    if let Err(e) = opened {
        eprintln!("error: KALLISTA_DEVICE={device}: {e}");
        std::process::exit(2);
    }
    let steps = env_usize(&format!("{}_STEPS", w.name), 20);
    let (mut times, mut losses) = (vec![], vec![]);
    for i in 0..WARMUP + steps {
        let (x, y) = &w.train[i % w.train.len()];
        let t = Instant::now();
        let r = model.train_on_batch(x, y).unwrap();
        if i >= WARMUP {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(r.loss);
    }
    // Where a step's time goes: forward+backward vs the optimizer update.
    let (mut fb, mut upd) = (vec![], vec![]);
    for i in 0..steps.min(10) {
        let (x, y) = &w.train[i % w.train.len()];
        let t = Instant::now();
        let (_, g) = model.gradients_on_batch(x, y).unwrap();
        fb.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model.apply_gradients(g).unwrap();
        upd.push(t.elapsed().as_secs_f64());
    }
    let infer_steps = env_usize(&format!("{}_INFER_STEPS", w.name), steps);
    let ix = (w.infer)(if infer_steps > 0 { w.infer_batch } else { 1 });
    let mut itimes = vec![];
    for i in 0..WARMUP.min(infer_steps) + infer_steps {
        let t = Instant::now();
        model.predict_on_batch(&ix).unwrap();
        if i >= WARMUP.min(infer_steps) {
            itimes.push(t.elapsed().as_secs_f64());
        }
    }
    let (tr, inf) = (median(times), median(itimes));
    let (tb, ib) = (w.train_batch as f64, w.infer_batch as f64);
    println!(
        "{{\"peer\": \"kallista\", \"workload\": \"{}\", \"train_samples_per_s\": {:.2}, \"infer_samples_per_s\": {:.2}, \"step_ms_median\": {:.3}, \"infer_ms_median\": {:.3}, \"threads\": {}, \"train_gflops\": {:.2}, \"infer_gflops\": {:.2}, \"fwd_bwd_ms\": {:.3}, \"update_ms\": {:.3}, \"first_loss\": {:.4}, \"last_loss\": {:.4}, \"loadavg_1m\": {}, \"device\": \"{}\"}}",
        w.name,
        tb / tr,
        ib / inf,
        tr * 1e3,
        inf * 1e3,
        rayon::current_num_threads(),
        3.0 * w.forward_flops * tb / tr / 1e9,
        w.forward_flops * ib / inf / 1e9,
        median(fb) * 1e3,
        median(upd) * 1e3,
        losses[0],
        losses[losses.len() - 1],
        loadavg(),
        default_backend().device_name()
    );
}
