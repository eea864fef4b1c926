//! Ingest of real video-QA data laid out the way such sets are published: one
//! folder of frame images per video (`<frames_dir>/<video>/*.png|jpg`, in
//! file-name order) and an annotation file, CSV (header `video,question,answer`
//! and optionally `split`) or JSONL (one object with those keys per line),
//! into the clips table.
//!
//! Every bad row (missing frame folder, too few frames, a corrupt image, a
//! frame of another size, an empty question or answer) is an error naming the
//! file and row; with `skip_bad` such rows are counted and skipped instead.

use crate::error::{DataError, Result};
use crate::frames::{self, FrameEncoding};
use crate::parquet_io::ClipWriter;
use std::path::{Path, PathBuf};

/// Options of [`ingest_frames`].
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub frames_dir: PathBuf,
    pub annotations: PathBuf,
    pub out: PathBuf,
    /// Frames per clip, sampled evenly from each folder.
    pub frames: usize,
    /// Resize every frame to `size` x `size` (else all frames must share the first one's size).
    pub size: Option<usize>,
    pub encoding: FrameEncoding,
    pub skip_bad: bool,
}

/// What ingest did.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub rows: usize,
    /// (annotation row, reason) of skipped rows.
    pub skipped: Vec<(usize, String)>,
    pub file: PathBuf,
}

/// One annotation: (row number, video, question, answer, split).
type Annotation = (usize, String, String, String, Option<String>);

fn read_annotations(path: &Path) -> Result<Vec<Annotation>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let bad = |row: usize, column: &str, detail: String| DataError::BadValue {
        path: path.into(),
        row,
        column: column.into(),
        detail,
    };
    let mut out = vec![];
    if path.extension().is_some_and(|e| e == "jsonl" || e == "json") {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(i + 1, "-", format!("not JSON: {e}")))?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let need = |k: &str| field(k).ok_or_else(|| bad(i + 1, k, "missing or not a string".into()));
            out.push((i + 1, need("video")?, need("question")?, need("answer")?, field("split")));
        }
    } else {
        let mut rdr = csv::Reader::from_path(path).map_err(|e| DataError::BadValue {
            path: path.into(),
            row: 0,
            column: "-".into(),
            detail: e.to_string(),
        })?;
        let headers = rdr.headers().map_err(|e| bad(1, "-", e.to_string()))?.clone();
        let pos = |k: &str| headers.iter().position(|h| h.trim() == k);
        let (v, q, a) = match (pos("video"), pos("question"), pos("answer")) {
            (Some(v), Some(q), Some(a)) => (v, q, a),
            _ => {
                return Err(DataError::Schema {
                    path: path.into(),
                    column: "video/question/answer".into(),
                    detail: format!("header must name them, got {headers:?}"),
                })
            }
        };
        let s = pos("split");
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| bad(i + 2, "-", e.to_string()))?;
            let get = |k: usize| rec.get(k).unwrap_or("").to_string();
            out.push((i + 2, get(v), get(q), get(a), s.map(get)));
        }
    }
    Ok(out)
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

fn load_clip(dir: &Path, opts: &IngestOptions, size: &mut Option<(usize, usize)>) -> Result<Vec<Vec<u8>>, String> {
    if !dir.is_dir() {
        return Err(format!("frame folder {} does not exist", dir.display()));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.len() < opts.frames {
        return Err(format!("{} holds {} frames, need {}", dir.display(), files.len(), opts.frames));
    }
    (0..opts.frames)
        .map(|t| {
            let f = &files[t * files.len() / opts.frames];
            let (h, w, rgb) = frames::read_image_file(f).map_err(|e| e.to_string())?;
            let (h, w, rgb) = match opts.size {
                Some(s) if (h, w) != (s, s) => {
                    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).expect("decoded size");
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
                        f.display(),
                        first.0,
                        first.1
                    ))
                }
                _ => {}
            }
            Ok(frames::encode(&rgb, h as u32, w as u32, opts.encoding))
        })
        .collect()
}

/// Ingests the annotated frame folders into `<out>/clips/part-00000.parquet`.
pub fn ingest_frames(opts: &IngestOptions) -> Result<IngestReport> {
    let anns = read_annotations(&opts.annotations)?;
    let dir = opts.out.join("clips");
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let file = dir.join("part-00000.parquet");
    let mut report = IngestReport { file: file.clone(), ..Default::default() };
    let mut size: Option<(usize, usize)> = opts.size.map(|s| (s, s));
    let mut clips = vec![];
    for (row, video, question, answer, split) in anns {
        let checked = if question.trim().is_empty() {
            Err(DataError::BadValue {
                path: opts.annotations.clone(),
                row,
                column: "question".into(),
                detail: "empty question".into(),
            })
        } else if answer.trim().is_empty() {
            Err(DataError::BadValue {
                path: opts.annotations.clone(),
                row,
                column: "answer".into(),
                detail: "empty answer".into(),
            })
        } else {
            load_clip(&opts.frames_dir.join(&video), opts, &mut size).map_err(|detail| DataError::BadValue {
                path: opts.annotations.clone(),
                row,
                column: "video".into(),
                detail,
            })
        };
        match checked {
            Ok(frames) => {
                let split = split.filter(|s| !s.is_empty()).unwrap_or_else(|| split_of(&video).to_string());
                clips.push((video, split, question, answer, frames));
            }
            Err(e) if opts.skip_bad => report.skipped.push((row, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let (h, w) = size.unwrap_or((0, 0));
    let mut writer = ClipWriter::create(&file, opts.frames, h, w, opts.encoding)?;
    for (video, split, question, answer, frames) in clips {
        writer.push(&video, &split, None, &question, &answer, frames)?;
    }
    report.rows = writer.finish()?;
    Ok(report)
}
