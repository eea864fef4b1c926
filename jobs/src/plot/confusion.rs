//! The confusion matrix of an evaluation as a heat map: one row per true
//! class, one column per predicted class, each cell shaded by the share of
//! the true class's rows it holds and marked with its count; classes are
//! named by their labels (the job dir's `labels.json`) where known.

use super::{drawing, ensure_font, render, FONT};
use crate::error::JobError;
use kallista_engine::store::{blocking, Location};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;

/// Beyond this a cell is under a pixel and the labels unreadable.
const MAX_CLASSES: usize = 200;

/// Draws `counts` (`(true id, predicted id, rows)`) into `out` as a PNG;
/// `names` gives each class id's label.
pub fn plot_confusion(
    counts: &[(i64, i64, u64)],
    names: &BTreeMap<i64, String>,
    title: &str,
    out: &Location,
) -> Result<(), JobError> {
    ensure_font()?;
    let classes: Vec<i64> = {
        let mut ids: Vec<i64> = counts.iter().flat_map(|c| [c.0, c.1]).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    if classes.len() > MAX_CLASSES {
        return Err(JobError::Invalid(format!(
            "{} classes are too many to draw (at most {MAX_CLASSES}); metrics.json has the counts",
            classes.len()
        )));
    }
    let n = classes.len().max(1);
    let index: BTreeMap<i64, usize> = classes.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let label = |i: usize| -> String {
        let id = classes.get(i).copied().unwrap_or_default();
        match names.get(&id).filter(|s| !s.is_empty()) {
            Some(name) => name.clone(),
            None => format!("class {id}"),
        }
    };
    let mut support = vec![0u64; n];
    for &(t, _, c) in counts {
        support[index[&t]] += c;
    }
    let cell = (640 / n as u32).clamp(14, 40);
    let side = cell * n as u32;
    let size = (side + 230, side + 250);
    let picture = render(size, "the confusion matrix", |root| {
        let err = drawing("the confusion matrix");
        // Row 0 at the top, as a matrix reads: true class i is drawn at row n-1-i.
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(12)
            .margin_bottom(34)
            .x_label_area_size(130)
            .y_label_area_size(130)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
            .map_err(&err)?;
        let label_font = (FONT, 13).into_font();
        let y_name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => label(n - 1 - *i),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .axis_desc_style((FONT, 16))
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&y_name)
            .y_label_style(label_font.clone())
            .draw()
            .map_err(&err)?;
        // Column names run down from below each column (plotters centres rotated axis labels on the axis).
        let down = label_font.transform(FontTransform::Rotate90).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        for i in 0..n {
            let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(i), SegmentValue::Exact(0)));
            root.draw(&Text::new(label(i), (x, y + 8), down.clone())).map_err(&err)?;
        }
        let shade = |share: f64| {
            let s = share.clamp(0.0, 1.0);
            RGBColor((255.0 - 225.0 * s) as u8, (255.0 - 175.0 * s) as u8, (255.0 - 55.0 * s) as u8)
        };
        let at = |t: i64, p: i64| (index[&p], n - 1 - index[&t]);
        let edge = |i: usize| if i < n { SegmentValue::Exact(i) } else { SegmentValue::Last };
        chart
            .draw_series(counts.iter().map(|&(t, p, c)| {
                let (x, y) = at(t, p);
                let share = c as f64 / support[index[&t]].max(1) as f64;
                let corners = [(edge(x), edge(y)), (edge(x + 1), edge(y + 1))];
                Rectangle::new(corners, shade(share).filled())
            }))
            .map_err(&err)?;
        if cell >= 22 {
            let centre = Pos::new(HPos::Center, VPos::Center);
            chart
                .draw_series(counts.iter().map(|&(t, p, c)| {
                    let (x, y) = at(t, p);
                    let dark = c as f64 / support[index[&t]].max(1) as f64 > 0.55;
                    let color = if dark { WHITE } else { BLACK };
                    let style = (FONT, 11).into_font().color(&color).pos(centre);
                    Text::new(c.to_string(), (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)), style)
                }))
                .map_err(&err)?;
        }
        let note = "shade: share of the true class's rows; numbers: rows";
        let at = (size.0 as i32 / 2, size.1 as i32 - 14);
        let style = (FONT, 12).into_font().color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(note, at, style)).map_err(&err)?;
        Ok(())
    })?;
    blocking::write(out, picture)?;
    Ok(())
}
