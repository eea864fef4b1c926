//! Ingest of real video-QA data laid out the way such sets are published: one
//! folder of frame images per video (`<frames_dir>/<video>/`) and an
//! annotation file ([`annotations`]: CSV or JSONL), into the clips table.
//!
//! Frames are read as a person expects ([`frame_folder`], [`crate::image_file`]):
//! files in natural order (`2` before `10`), hidden and non-image files
//! ignored, the format told by the content, EXIF orientation applied, the
//! colour rule of [`crate::image_file`], truncated or oversized images
//! refused before they are decoded. A video id must be a plain folder name
//! under the frames folder. A video with another frame count than `frames`
//! follows [`FramePolicy`].
//!
//! Every bad row (an annotation fault, a missing frame folder, a corrupt
//! image, a frame of another size, an empty question or answer) is an error
//! naming the file, line and column; with `skip_bad` such rows are skipped
//! and each is listed in the report with its line and reason.

pub mod annotations;
pub mod frame_folder;

use crate::error::{DataError, Result};
use crate::frames::{self, FrameEncoding};
use crate::image_file::{self, RgbImage};
use crate::parquet_io::ClipWriter;
use annotations::{read_annotations, Annotation};
pub use frame_folder::FramePolicy;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The most frames per clip `--frames` may ask for.
pub const MAX_FRAMES: usize = 4096;

/// Options of [`ingest_frames`].
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub frames_dir: PathBuf,
    pub annotations: PathBuf,
    pub out: PathBuf,
    /// Frames per clip.
    pub frames: usize,
    /// What to do with videos of another frame count.
    pub frame_policy: FramePolicy,
    /// Resize every frame to `size` x `size` (else all frames must share the first one's size).
    pub size: Option<usize>,
    /// Images of more pixels are refused before they are decoded.
    pub max_frame_pixels: u64,
    pub encoding: FrameEncoding,
    pub skip_bad: bool,
}

impl IngestOptions {
    /// Options with the documented defaults: 8 frames, `sample`, no resizing,
    /// the default pixel limit, raw frames, stop at the first bad row.
    pub fn new(frames_dir: impl Into<PathBuf>, annotations: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        IngestOptions {
            frames_dir: frames_dir.into(),
            annotations: annotations.into(),
            out: out.into(),
            frames: 8,
            frame_policy: FramePolicy::Sample,
            size: None,
            max_frame_pixels: image_file::DEFAULT_MAX_PIXELS,
            encoding: FrameEncoding::Raw,
            skip_bad: false,
        }
    }
}

/// A row `--skip-bad` skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedRow {
    /// Its (first) line in the annotation file, from 1.
    pub line: usize,
    /// The column or key at fault (`-` for the whole line).
    pub column: String,
    pub reason: String,
}

/// What ingest did.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub rows: usize,
    pub skipped: Vec<SkippedRow>,
    pub file: PathBuf,
}

fn bad_row(opts: &IngestOptions, line: usize, column: &str, detail: String) -> DataError {
    DataError::BadValue { path: opts.annotations.clone(), row: line, column: column.into(), detail }
}

/// A frame of a clip being read, with the size every frame must share.
fn load_frame(file: &Path, opts: &IngestOptions, size: &mut Option<(usize, usize)>) -> Result<Vec<u8>, String> {
    let RgbImage { height: h, width: w, rgb } =
        image_file::read_image_file(file, opts.max_frame_pixels).map_err(|e| e.to_string())?;
    let (h, w, rgb) = match opts.size {
        Some(s) if (h, w) != (s, s) => {
            let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).expect("h x w x 3 bytes");
            let r = image::imageops::resize(&img, s as u32, s as u32, image::imageops::FilterType::Triangle);
            (s, s, r.into_raw())
        }
        _ => (h, w, rgb),
    };
    match size {
        None => *size = Some((h, w)),
        Some(first) if *first != (h, w) => {
            return Err(format!(
                "{}: frame is {h}x{w}, earlier frames are {}x{} (use --size)",
                file.display(),
                first.0,
                first.1
            ))
        }
        _ => {}
    }
    Ok(frames::encode(&rgb, h as u32, w as u32, opts.encoding))
}

/// The encoded frames of one annotated row, or the error of its row.
fn load_clip(a: &Annotation, opts: &IngestOptions, size: &mut Option<(usize, usize)>) -> Result<Vec<Vec<u8>>> {
    for (column, value) in [("question", &a.question), ("answer", &a.answer)] {
        if value.trim().is_empty() {
            return Err(bad_row(opts, a.line, column, format!("empty {column}")));
        }
    }
    frame_folder::check_video_id(&a.video).map_err(|e| bad_row(opts, a.line, "video", e))?;
    let dir = opts.frames_dir.join(&a.video);
    let in_video = |e: String| bad_row(opts, a.line, "video", e);
    let files = frame_folder::frame_files(&dir).map_err(in_video)?;
    let picked =
        opts.frame_policy.pick(files.len(), opts.frames).map_err(|e| in_video(format!("{}: {e}", dir.display())))?;
    // The first frame size sticks only once the whole clip has read (a skipped
    // row must not decide the size of the rows after it).
    let mut clip_size = *size;
    let mut decoded: Vec<(usize, Vec<u8>)> = vec![];
    let mut frames = Vec::with_capacity(picked.len());
    for i in picked {
        // A repeated frame (sample or pad on a short video) is decoded once.
        let frame = match decoded.iter().find(|(j, _)| *j == i) {
            Some((_, f)) => f.clone(),
            None => {
                let f = load_frame(&files[i], opts, &mut clip_size).map_err(in_video)?;
                decoded.push((i, f.clone()));
                f
            }
        };
        frames.push(frame);
    }
    *size = clip_size;
    Ok(frames)
}

/// A split from the video id when the annotations give none: 80/10/10 by a stable hash.
fn split_of(video: &str) -> &'static str {
    let h = video.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    match h % 10 {
        0 => "test",
        1 => "eval",
        _ => "train",
    }
}

fn skipped(e: DataError) -> SkippedRow {
    match e {
        DataError::BadValue { row, column, detail, .. } => SkippedRow { line: row, column, reason: detail },
        other => SkippedRow { line: 0, column: "-".into(), reason: other.to_string() },
    }
}

/// Ingests the annotated frame folders into `<out>/clips/part-00000.parquet`.
pub fn ingest_frames(opts: &IngestOptions) -> Result<IngestReport> {
    if opts.frames == 0 || opts.frames > MAX_FRAMES {
        return Err(DataError::Argument { name: "frames", detail: format!("must be 1 to {MAX_FRAMES}") });
    }
    let rows = read_annotations(&opts.annotations)?;
    let dir = opts.out.join("clips");
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let file = dir.join("part-00000.parquet");
    let mut report = IngestReport { file: file.clone(), ..Default::default() };
    let mut size: Option<(usize, usize)> = opts.size.map(|s| (s, s));
    let mut clips = vec![];
    for row in rows {
        match row.and_then(|a| load_clip(&a, opts, &mut size).map(|frames| (a, frames))) {
            Ok((a, frames)) => clips.push((a, frames)),
            Err(e) if opts.skip_bad => report.skipped.push(skipped(e)),
            Err(e) => return Err(e),
        }
    }
    let (h, w) = size.unwrap_or((0, 0));
    let mut writer = ClipWriter::create(&file, opts.frames, h, w, opts.encoding)?;
    for (a, frames) in clips {
        let split = a.split.filter(|s| !s.is_empty()).unwrap_or_else(|| split_of(&a.video).to_string());
        writer.push(&a.video, &split, None, &a.question, &a.answer, frames)?;
    }
    report.rows = writer.finish()?;
    Ok(report)
}
