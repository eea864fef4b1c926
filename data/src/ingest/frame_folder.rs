//! One video's folder of frame images: which files are frames, in which
//! order, and which of them make a clip of the requested length.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// What to do with a video whose frame count is not `--frames`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FramePolicy {
    /// Frames at evenly spaced positions over the whole video; a video with
    /// fewer frames repeats some of them (each position takes the frame at or
    /// before it).
    #[default]
    Sample,
    /// A longer video is sampled as with `Sample`; a shorter one keeps all
    /// its frames and repeats its last frame to fill the clip.
    Pad,
    /// A video with any other frame count is a bad row.
    Error,
}

impl FramePolicy {
    /// Parses `sample`, `pad` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sample" => Some(FramePolicy::Sample),
            "pad" => Some(FramePolicy::Pad),
            "error" => Some(FramePolicy::Error),
            _ => None,
        }
    }

    /// Which of `available` frames (by index) make a clip of `frames`.
    pub fn pick(self, available: usize, frames: usize) -> Result<Vec<usize>, String> {
        if available == 0 {
            return Err("holds no frame images".into());
        }
        let evenly = || (0..frames).map(|t| t * available / frames).collect();
        match self {
            FramePolicy::Error if available != frames => {
                Err(format!("holds {available} frames, --frames is {frames} (--frame-policy error)"))
            }
            FramePolicy::Pad if available < frames => Ok((0..frames).map(|t| t.min(available - 1)).collect()),
            _ => Ok(evenly()),
        }
    }
}

/// Extensions of frame files (any case); the content decides the format.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "jpe", "jfif"];

/// The frame files of a folder in natural order: hidden files (a leading
/// `.`) and files without an image extension are not frames.
pub fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !dir.is_dir() {
        return Err(format!("frame folder {} does not exist", dir.display()));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// Compares names as people do: runs of digits by their number (`frame2`
/// before `frame10`), the rest by text; names whose numbers tie (`f02`,
/// `f2`) are ordered by their text.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.chars().next(), y.chars().next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (m, rest_x) = split_digits(x);
                let (n, rest_y) = split_digits(y);
                let (m, n) = (m.trim_start_matches('0'), n.trim_start_matches('0'));
                let by_number = m.len().cmp(&n.len()).then_with(|| m.cmp(n));
                if by_number != Ordering::Equal {
                    return by_number;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(&d);
                }
                (x, y) = (&x[c.len_utf8()..], &y[d.len_utf8()..]);
            }
        }
    }
}

fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Checks that a video id names a folder directly under the frames folder:
/// not empty, no path separator, not `.` or `..`.
pub fn check_video_id(video: &str) -> Result<(), String> {
    if video.trim().is_empty() {
        return Err("empty video id".into());
    }
    if video.contains(['/', '\\', '\0']) || video == "." || video == ".." {
        return Err(format!("video id '{video}' is not a plain folder name under --frames-dir"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_names_sort_by_value() {
        let mut names = vec!["f10.jpg", "f2.jpg", "f1.jpg", "f02.jpg", "g1.jpg", "f1b.jpg", "10.png", "9.png"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["9.png", "10.png", "f1.jpg", "f1b.jpg", "f02.jpg", "f2.jpg", "f10.jpg", "g1.jpg"]);
    }

    #[test]
    fn policies_pick_evenly_repeat_or_refuse() {
        assert_eq!(FramePolicy::Sample.pick(8, 4).unwrap(), [0, 2, 4, 6]);
        assert_eq!(FramePolicy::Sample.pick(3, 6).unwrap(), [0, 0, 1, 1, 2, 2]);
        assert_eq!(FramePolicy::Pad.pick(3, 6).unwrap(), [0, 1, 2, 2, 2, 2]);
        assert_eq!(FramePolicy::Pad.pick(8, 4).unwrap(), [0, 2, 4, 6]);
        assert!(FramePolicy::Error.pick(3, 6).unwrap_err().contains("holds 3 frames"));
        assert_eq!(FramePolicy::Error.pick(6, 6).unwrap(), [0, 1, 2, 3, 4, 5]);
        assert!(FramePolicy::Sample.pick(0, 6).unwrap_err().contains("no frame"));
    }

    #[test]
    fn video_ids_stay_under_the_frames_folder() {
        for bad in ["../x", "..", "a/b", "/etc", "a\\b", ""] {
            assert!(check_video_id(bad).is_err(), "{bad}");
        }
        assert!(check_video_id("video_0001..mp4").is_ok());
    }
}
