//! `kallista demo`: trains the video-QA model in-process on the toy task of
//! [`kallista_ops::applications::toy_task`] and reports accuracy on held-out
//! clips. It exercises the whole ops stack until the distributed job runner
//! (the `train` / `submit` / `run` commands) lands.

use crate::error::JobError;
use kallista_ops::applications::{toy_task, video_qa, VideoQaDims};
use kallista_ops::losses::Loss;
use kallista_ops::metrics::Metric;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::Data;

/// Outcome of the demo.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub train_accuracy: f32,
    pub test_accuracy: f32,
    pub epochs: usize,
}

/// Trains for `epochs` over `samples` clips (batch 32) and evaluates on 256 new ones.
pub fn run_demo(samples: usize, epochs: usize, seed: u64, mut log: impl FnMut(&str)) -> Result<DemoReport, JobError> {
    let d = VideoQaDims::toy();
    let mut model = video_qa(&d, seed)?;
    model.compile(
        OptimizerConfig::adam(3e-3),
        Loss::from_name("sparse_categorical_crossentropy")?,
        &[Metric::Accuracy],
    );
    log(&model.summary());
    let (x, y) = toy_task(&d, samples, seed);
    let mut train_accuracy = 0.0;
    for epoch in 0..epochs {
        let (mut loss, mut correct, mut seen) = (0.0, 0.0, 0usize);
        for start in (0..samples).step_by(32) {
            let end = (start + 32).min(samples);
            let xb: Vec<Data> = x.iter().map(|t| t.slice_rows(start, end)).collect();
            let yb: Vec<Data> = y.iter().map(|t| t.slice_rows(start, end)).collect();
            let r = model.train_on_batch(&xb, &yb)?;
            loss += r.loss * (end - start) as f32;
            correct += r.metric("accuracy").unwrap_or(0.0) * (end - start) as f32;
            seen += end - start;
        }
        train_accuracy = correct / seen as f32;
        log(&format!(
            "epoch {:>3}/{epochs}  loss {:.4}  accuracy {:.3}",
            epoch + 1,
            loss / seen as f32,
            train_accuracy
        ));
    }
    let (tx, ty) = toy_task(&d, 256, seed + 1);
    let r = model.test_on_batch(&tx, &ty)?;
    let test_accuracy = r.metric("accuracy").unwrap_or(0.0);
    log(&format!("held-out accuracy {test_accuracy:.3} on 256 clips"));
    Ok(DemoReport { train_accuracy, test_accuracy, epochs })
}
