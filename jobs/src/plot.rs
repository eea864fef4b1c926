//! The training curve as a PNG, drawn from `metrics.jsonl`: training loss
//! per round (blue, scaled to its own maximum), training accuracy (grey) and
//! evaluation accuracy (red dots joined), accuracy on a 0-1 axis with grid
//! lines every 0.1; the x axis is the step.

use crate::error::JobError;
use image::{Rgb, RgbImage};
use kallista_engine::store::blocking;
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::metrics::{read_metrics, MetricsLine};

const W: u32 = 800;
const H: u32 = 480;
const MARGIN: u32 = 30;

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), color: Rgb<u8>) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < W && (py as u32) < H {
                img.put_pixel(px as u32, py as u32, color);
            }
        }
    }
}

fn polyline(img: &mut RgbImage, points: &[(f64, f64)], color: Rgb<u8>) {
    for w in points.windows(2) {
        line(img, w[0], w[1], color);
    }
    for &p in points {
        line(img, (p.0 - 2.0, p.1), (p.0 + 2.0, p.1), color);
    }
}

/// Draws the job's training curve (train loss and accuracy, eval accuracy)
/// from its `metrics.jsonl` into its `training_curve.png`, in one put.
pub fn plot_training_curve(job: &JobDir) -> Result<(), JobError> {
    let (mut loss, mut acc, mut eval) = (vec![], vec![], vec![]);
    for line in read_metrics(job)? {
        match line {
            MetricsLine::Train(t) => {
                loss.push((t.step as f64, t.loss));
                acc.push((t.step as f64, t.accuracy));
            }
            MetricsLine::Eval(e) if e.split == "eval" => eval.push((e.step as f64, e.accuracy)),
            MetricsLine::Eval(_) => {}
        }
    }
    let max_step = loss.iter().chain(&eval).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = loss.iter().map(|p| p.1).fold(1e-9, f64::max);
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let px = |step: f64| MARGIN as f64 + step / max_step * pw;
    let py = |frac: f64| MARGIN as f64 + (1.0 - frac.clamp(0.0, 1.0)) * ph;
    for k in 0..=10 {
        let y = py(k as f64 / 10.0);
        let shade = if k % 5 == 0 { 170 } else { 225 };
        line(&mut img, (MARGIN as f64, y), (W as f64 - MARGIN as f64, y), Rgb([shade, shade, shade]));
    }
    line(&mut img, (MARGIN as f64, py(0.0)), (MARGIN as f64, py(1.0)), Rgb([0, 0, 0]));
    // Smooth the per-round series over 1% of the run so that the trend shows.
    let smooth = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        let k = (pts.len() / 100).max(1);
        pts.chunks(k).map(|c| (c[c.len() - 1].0, c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64)).collect()
    };
    let scaled = |pts: Vec<(f64, f64)>, scale: f64| -> Vec<(f64, f64)> {
        pts.into_iter().map(|(s, v)| (px(s), py(v / scale))).collect()
    };
    let mut loss_pts = scaled(smooth(&loss), max_loss);
    loss_pts.dedup_by(|a, b| a.0 as i64 == b.0 as i64);
    line_series(&mut img, &scaled(smooth(&acc), 1.0), Rgb([150, 150, 150]));
    line_series(&mut img, &loss_pts, Rgb([30, 80, 200]));
    polyline(&mut img, &scaled(eval, 1.0), Rgb([210, 30, 30]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| JobError::Invalid(format!("{}: {e}", job.curve())))?;
    blocking::write(&job.curve(), png)?;
    Ok(())
}

fn line_series(img: &mut RgbImage, points: &[(f64, f64)], color: Rgb<u8>) {
    for w in points.windows(2) {
        line(img, w[0], w[1], color);
    }
}
