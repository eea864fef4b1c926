//! The synthetic video question-answering set: procedurally rendered clips of
//! a person figure (see [`scene`]) with one question each (see
//! [`questions`]), written as sharded Parquet in the clips schema.
//!
//! Deterministic for a seed: every clip is drawn from its own generator,
//! seeded by (seed, clip index), so the output does not depend on the number
//! of threads. Shards render in parallel on the rayon pool.

mod canvas;
pub mod questions;
pub mod scene;

use crate::error::{DataError, Result};
use crate::frames::{self, FrameEncoding};
use crate::parquet_io::ClipWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options of [`make_video_qa`].
#[derive(Clone, Debug)]
pub struct MakeOptions {
    /// Output directory; clips go to `<out>/clips/part-NNNNN.parquet`.
    pub out: PathBuf,
    pub videos: usize,
    pub frames: usize,
    /// Frame side in pixels (frames are square).
    pub size: usize,
    pub seed: u64,
    pub encoding: FrameEncoding,
    /// Clips per Parquet file (the last file may hold fewer).
    pub videos_per_shard: usize,
}

impl MakeOptions {
    pub fn new(out: impl Into<PathBuf>, videos: usize, frames: usize, size: usize, seed: u64) -> Self {
        MakeOptions {
            out: out.into(),
            videos,
            frames,
            size,
            seed,
            encoding: FrameEncoding::Raw,
            videos_per_shard: videos.div_ceil(2).clamp(1, 2000),
        }
    }
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct MakeReport {
    pub files: Vec<PathBuf>,
    pub rows: usize,
    /// Rows per split.
    pub splits: BTreeMap<String, usize>,
    /// Answer counts per question family.
    pub answers: BTreeMap<String, BTreeMap<String, usize>>,
}

impl MakeReport {
    /// Per family: (most frequent answer, its share) — the majority baseline.
    pub fn majority_baseline(&self) -> BTreeMap<String, (String, f64)> {
        self.answers
            .iter()
            .map(|(fam, counts)| {
                let total: usize = counts.values().sum();
                let (a, n) = counts.iter().max_by_key(|(_, n)| **n).map(|(a, n)| (a.clone(), *n)).unwrap_or_default();
                (fam.clone(), (a, n as f64 / total.max(1) as f64))
            })
            .collect()
    }

    fn merge(&mut self, other: MakeReport) {
        self.files.extend(other.files);
        self.rows += other.rows;
        for (k, v) in other.splits {
            *self.splits.entry(k).or_default() += v;
        }
        for (fam, counts) in other.answers {
            let e = self.answers.entry(fam).or_default();
            for (a, n) in counts {
                *e.entry(a).or_default() += n;
            }
        }
    }
}

/// One rendered clip with its question.
pub struct Clip {
    pub video_id: String,
    pub split: &'static str,
    pub family: &'static str,
    pub question: &'static str,
    pub answer: &'static str,
    /// Encoded frames.
    pub frames: Vec<Vec<u8>>,
}

/// Renders clip number `index` of the set made with `seed`.
pub fn render_clip(seed: u64, index: usize, frames: usize, size: usize, encoding: FrameEncoding) -> Clip {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
    let split_draw: f64 = rng.gen();
    let split = if split_draw < 0.8 {
        "train"
    } else if split_draw < 0.9 {
        "eval"
    } else {
        "test"
    };
    let s = scene::Scene::sample(&mut rng, size);
    let family = rng.gen_range(0..questions::FAMILIES.len());
    let (question, answer) = questions::ask(&s, family, rng.gen_range(0..4));
    let mut canvas = canvas::Canvas::new(size);
    let frames = (0..frames)
        .map(|t| {
            s.draw(&mut canvas, t, frames);
            let rgb = canvas.to_rgb8(s.noise, s.brightness, || rng.gen::<f32>());
            frames::encode(&rgb, size as u32, size as u32, encoding)
        })
        .collect();
    Clip {
        video_id: format!("s{seed}-v{index:07}"),
        split,
        family: questions::FAMILIES[family],
        question,
        answer,
        frames,
    }
}

/// Writes the set; `progress(clips_done)` is called after every clip.
pub fn make_video_qa(opts: &MakeOptions, progress: impl Fn(usize) + Sync) -> Result<MakeReport> {
    if opts.videos == 0 || opts.frames == 0 || opts.size < 16 {
        return Err(DataError::Argument {
            name: "--videos/--frames/--size",
            detail: "need videos >= 1, frames >= 1, size >= 16".into(),
        });
    }
    let dir = opts.out.join("clips");
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let per = opts.videos_per_shard.max(1);
    let shards: Vec<(usize, usize)> = (0..opts.videos).step_by(per).map(|s| (s, (s + per).min(opts.videos))).collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let reports: Vec<MakeReport> = shards
        .par_iter()
        .enumerate()
        .map(|(k, &(start, end))| {
            let path = dir.join(format!("part-{k:05}.parquet"));
            write_shard(opts, &path, start, end, &|| {
                progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
            })
        })
        .collect::<Result<_>>()?;
    let mut total = MakeReport::default();
    reports.into_iter().for_each(|r| total.merge(r));
    Ok(total)
}

fn write_shard(
    opts: &MakeOptions,
    path: &Path,
    start: usize,
    end: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<MakeReport> {
    let mut w = ClipWriter::create(path, opts.frames, opts.size, opts.size, opts.encoding)?;
    let mut report = MakeReport { files: vec![path.to_path_buf()], ..Default::default() };
    for i in start..end {
        let clip = render_clip(opts.seed, i, opts.frames, opts.size, opts.encoding);
        *report.splits.entry(clip.split.into()).or_default() += 1;
        *report.answers.entry(clip.family.into()).or_default().entry(clip.answer.into()).or_default() += 1;
        w.push(&clip.video_id, clip.split, Some(clip.family), clip.question, clip.answer, clip.frames)?;
        report.rows += 1;
        tick();
    }
    w.finish()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_clip_other_seed_other_clip() {
        let a = render_clip(7, 3, 4, 32, FrameEncoding::Raw);
        let b = render_clip(7, 3, 4, 32, FrameEncoding::Raw);
        let c = render_clip(8, 3, 4, 32, FrameEncoding::Raw);
        assert_eq!(a.frames, b.frames);
        assert_eq!(a.question, b.question);
        assert_ne!(a.frames, c.frames);
        assert_eq!(a.frames.len(), 4);
        assert_eq!(a.frames[0].len(), 32 * 32 * 3);
    }

    #[test]
    fn frames_change_over_time() {
        let clip = render_clip(1, 0, 6, 48, FrameEncoding::Raw);
        let diff: u64 =
            clip.frames[0].iter().zip(&clip.frames[5]).map(|(a, b)| (*a as i64 - *b as i64).unsigned_abs()).sum();
        // Noise alone differs a little; the moving figure adds much more.
        assert!(diff > 48 * 48 * 3 * 4, "first and last frame differ by {diff}");
    }
}
