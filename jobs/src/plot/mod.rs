//! Pictures a person would rather look at than read, drawn with `plotters`
//! into PNG files of the job dir or evaluation output: the training curve
//! ([`curve`]) and the confusion matrix ([`confusion`]).
//!
//! Text needs a TrueType font: `KALLISTA_FONT` names one, else the first of
//! the usual system sans-serif files found (DejaVu, Liberation, Noto, Arial).

pub mod confusion;
pub mod curve;

pub use confusion::plot_confusion;
pub use curve::plot_training_curve;

use crate::error::JobError;
use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, IntoDrawingArea, WHITE};
use plotters::style::{register_font, FontStyle};
use std::sync::OnceLock;

/// Where sans-serif fonts usually are (Debian/Ubuntu, Fedora, Arch, macOS).
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// The font family name plots use.
pub(crate) const FONT: &str = "sans-serif";

/// Registers the font once per process; the error says how to provide one.
pub(crate) fn ensure_font() -> Result<(), JobError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<String> =
                std::env::var("KALLISTA_FONT").into_iter().chain(FONT_FILES.iter().map(|s| s.to_string())).collect();
            let (path, bytes) =
                candidates.iter().find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b))).ok_or_else(|| {
                    format!(
                        "no font for plot text: set KALLISTA_FONT to a .ttf file (looked in {})",
                        candidates.join(", ")
                    )
                })?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                register_font(FONT, style, bytes).map_err(|_| format!("{path}: not a TrueType font"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(JobError::Invalid)
}

/// A picture of `size` that `draw` paints on a white canvas, as PNG bytes.
pub(crate) fn render(
    size: (u32, u32),
    what: &str,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), JobError>,
) -> Result<Vec<u8>, JobError> {
    let mut buffer = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(drawing(what))?;
        draw(&root)?;
        root.present().map_err(drawing(what))?;
    }
    png(buffer, size)
}

/// An RGB buffer of `size` as PNG bytes.
fn png(buffer: Vec<u8>, size: (u32, u32)) -> Result<Vec<u8>, JobError> {
    let img = image::RgbImage::from_raw(size.0, size.1, buffer)
        .ok_or_else(|| JobError::Invalid("plot buffer of the wrong size".into()))?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| JobError::Invalid(format!("PNG encoding: {e}")))?;
    Ok(out)
}

/// A drawing error as the job's.
pub(crate) fn drawing<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> JobError + '_ {
    move |e| JobError::Invalid(format!("drawing {what}: {e}"))
}
