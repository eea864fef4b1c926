//! The training curve, from a job's `metrics.jsonl`: training loss per round
//! (left axis) and training and evaluation accuracy (right axis, 0 to 1)
//! against the step, titled, with labelled axes and a legend.

use super::{drawing, ensure_font, render, FONT};
use crate::error::JobError;
use kallista_engine::store::blocking;
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::metrics::{read_metrics, MetricsLine};
use plotters::prelude::*;

const SIZE: (u32, u32) = (900, 540);

/// The per-round series smoothed over 1% of the run, so that the trend shows.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let k = (points.len() / 100).max(1);
    points.chunks(k).map(|c| (c[c.len() - 1].0, c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64)).collect()
}

/// Draws the job's training curve into its `training_curve.png`, in one put.
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
    ensure_font()?;
    let max_step = loss.iter().chain(&eval).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = loss.iter().map(|p| p.1).filter(|v| v.is_finite()).fold(1e-3, f64::max) * 1.05;
    let picture = render(SIZE, "the training curve", |root| {
        let err = drawing("the training curve");
        let title = format!("Training curve: {}", job.root().file_name());
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .right_y_label_area_size(65)
            .build_cartesian_2d(0f64..max_step, 0f64..max_loss)
            .map_err(&err)?
            .set_secondary_coord(0f64..max_step, 0f64..1f64);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("training loss")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(&err)?;
        chart
            .configure_secondary_axes()
            .y_desc("accuracy")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(&err)?;
        let blue = RGBColor(30, 80, 200);
        let grey = RGBColor(140, 140, 140);
        let red = RGBColor(210, 30, 30);
        chart
            .draw_series(LineSeries::new(smooth(&loss), blue.stroke_width(2)))
            .map_err(&err)?
            .label("training loss")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], blue.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(smooth(&acc), grey.stroke_width(2)))
            .map_err(&err)?
            .label("training accuracy")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(eval.clone(), red.stroke_width(2)))
            .map_err(&err)?
            .label("evaluation accuracy")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
        chart.draw_secondary_series(eval.iter().map(|&p| Circle::new(p, 4, red.filled()))).map_err(&err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
        Ok(())
    })?;
    blocking::write(&job.curve(), picture)?;
    Ok(())
}
