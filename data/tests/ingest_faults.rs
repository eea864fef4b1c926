//! Ingest of awkward and broken inputs, each made here: frames in natural
//! order, EXIF orientation, a folder outside the frames folder, a JPEG cut in
//! half, every frame-count policy, and `--skip-bad` over an annotation file
//! mixing every annotation fault with good rows.

use image::{ExtendedColorType, ImageEncoder};
use kallista_data::ingest::{ingest_frames, FramePolicy, IngestOptions};
use kallista_data::parquet_io::{parquet_files, ClipBatch, ClipReader};
use kallista_data::DataError;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kallista-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("frames")).unwrap();
    d
}

fn read_back(root: &Path) -> ClipBatch {
    let files = parquet_files(&root.join("out/clips")).unwrap();
    ClipReader::open(&files[0], 1000).unwrap().next().unwrap().unwrap()
}

/// A 4x4 PNG whose every pixel is `(shade, shade, shade)`.
fn flat_png(path: &Path, shade: u8) {
    image::RgbImage::from_pixel(4, 4, image::Rgb([shade; 3])).save(path).unwrap();
}

fn opts(root: &Path, ann: &str, frames: usize) -> IngestOptions {
    let mut o = IngestOptions::new(root.join("frames"), root.join(ann), root.join("out"));
    o.frames = frames;
    o
}

/// The shade (red channel of the first pixel) of each frame of row `r`.
fn shades(b: &ClipBatch, r: usize) -> Vec<u8> {
    let [_, t, h, w, c] = b.shape;
    (0..t).map(|f| b.frames[((r * t + f) * h * w) * c]).collect()
}

#[test]
fn frames_are_read_in_natural_order_hidden_and_other_files_ignored() {
    let root = tmp("natural");
    let dir = root.join("frames/v");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 1..=10u8 {
        flat_png(&dir.join(format!("frame_{i}.jpg.png")), i * 10);
    }
    std::fs::write(dir.join(".DS_Store"), b"junk").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a frame").unwrap();
    flat_png(&dir.join(".hidden.png"), 255);
    std::fs::write(root.join("qa.csv"), "video,question,answer\nv,q?,a\n").unwrap();
    let mut o = opts(&root, "qa.csv", 10);
    o.frame_policy = FramePolicy::Error;
    assert_eq!(ingest_frames(&o).unwrap().rows, 1);
    assert_eq!(shades(&read_back(&root), 0), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn frame_count_policies_sample_pad_or_refuse() {
    let root = tmp("policy");
    let dir = root.join("frames/short");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3u8 {
        flat_png(&dir.join(format!("{i}.png")), 50 + i * 50);
    }
    std::fs::write(root.join("qa.csv"), "video,question,answer\nshort,q?,a\n").unwrap();
    let mut o = opts(&root, "qa.csv", 6);
    assert_eq!(ingest_frames(&o).unwrap().rows, 1, "sample is the default");
    assert_eq!(shades(&read_back(&root), 0), [50, 50, 100, 100, 150, 150]);
    o.frame_policy = FramePolicy::Pad;
    ingest_frames(&o).unwrap();
    assert_eq!(shades(&read_back(&root), 0), [50, 100, 150, 150, 150, 150]);
    o.frame_policy = FramePolicy::Error;
    let e = ingest_frames(&o).unwrap_err().to_string();
    assert!(e.contains("row 2, column 'video'") && e.contains("holds 3 frames, --frames is 6"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

/// A JPEG of a 2-wide, 1-high image (left pixel white, right black) whose
/// EXIF says "rotate 90 degrees clockwise to display" (orientation 6).
fn rotated_jpeg() -> Vec<u8> {
    let (w, h) = (16u32, 8u32);
    let rgb: Vec<u8> = (0..w * h).flat_map(|i| if i % w < w / 2 { [255u8; 3] } else { [0u8; 3] }).collect();
    let mut exif = b"II*\x00\x08\x00\x00\x00\x01\x00".to_vec();
    exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    exif.extend_from_slice(&[0, 0, 0, 0]);
    let mut out = vec![];
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    enc.set_exif_metadata(exif).unwrap();
    enc.write_image(&rgb, w, h, ExtendedColorType::Rgb8).unwrap();
    out
}

#[test]
fn exif_orientation_is_applied() {
    let root = tmp("exif");
    let dir = root.join("frames/phone");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0.jpg"), rotated_jpeg()).unwrap();
    std::fs::write(root.join("qa.jsonl"), "{\"video\":\"phone\",\"question\":\"q\",\"answer\":\"a\"}\n").unwrap();
    ingest_frames(&opts(&root, "qa.jsonl", 1)).unwrap();
    let b = read_back(&root);
    // Stored 16 wide and 8 high; shown (and read) 8 wide and 16 high, white on top.
    assert_eq!(&b.shape[2..4], &[16, 8]);
    let px = |y: usize, x: usize| b.frames[(y * 8 + x) * 3];
    assert!(px(1, 4) > 200 && px(14, 4) < 50, "top {} bottom {}", px(1, 4), px(14, 4));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_video_id_outside_the_frames_folder_and_a_cut_jpeg_are_refused() {
    let root = tmp("refused");
    let outside = root.join("secret");
    std::fs::create_dir_all(&outside).unwrap();
    flat_png(&outside.join("0.png"), 9);
    let dir = root.join("frames/cut");
    std::fs::create_dir_all(&dir).unwrap();
    let mut jpeg = vec![];
    let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 251) as u8).collect();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg).write_image(&rgb, 64, 64, ExtendedColorType::Rgb8).unwrap();
    std::fs::write(dir.join("0.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    for (video, want) in [("../secret", "not a plain folder name"), ("cut", "truncated JPEG")] {
        std::fs::write(root.join("qa.csv"), format!("video,question,answer\n{video},q?,a\n")).unwrap();
        match ingest_frames(&opts(&root, "qa.csv", 1)) {
            Err(DataError::BadValue { row: 2, column, detail, .. }) => {
                assert_eq!(column, "video");
                assert!(detail.contains(want), "{detail}");
            }
            other => panic!("{video}: expected a bad row, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn skip_bad_skips_every_annotation_fault_and_lists_each_line() {
    let root = tmp("skip");
    for v in ["a", "b", "c"] {
        let dir = root.join("frames").join(v);
        std::fs::create_dir_all(&dir).unwrap();
        flat_png(&dir.join("1.png"), 1);
    }
    let mut jsonl: Vec<u8> = vec![];
    let good = |v: &str| format!("{{\"video\":\"{v}\",\"question\":\"q {v}?\",\"answer\":\"x\"}}\n");
    let lines: Vec<Vec<u8>> = vec![
        b"\xEF\xBB\xBF".iter().copied().chain(good("a").into_bytes()).collect(), // 1: BOM, good
        b"{\"video\": \"b\", \"question\": \"q\"\n".to_vec(),                    // 2: invalid JSON
        b"{\"video\": \"b\", \"question\": \"q\"}\n".to_vec(),                   // 3: missing answer
        b"{\"video\": null, \"question\": \"q\", \"answer\": \"x\"}\n".to_vec(), // 4: null key
        b"{\"video\": 7, \"question\": \"q\", \"answer\": \"x\"}\n".to_vec(),    // 5: wrong type
        b"{\"video\": \"b\", \"question\": \"q\xff\xfe\", \"answer\": \"x\"}\n".to_vec(), // 6: invalid UTF-8
        good("b").into_bytes(),                                                  // 7: good
        b"[1, 2]\n".to_vec(),                                                    // 8: not an object
        good("c").into_bytes(),                                                  // 9: good
    ];
    for l in &lines {
        jsonl.extend_from_slice(l);
    }
    std::fs::write(root.join("qa.jsonl"), &jsonl).unwrap();
    let csv = b"video,question,answer\n\
                a,q a?,x\n\
                b,unquoted, comma,x\n\
                b,\"unterminated,x\n\
                b,q\xff?,x\n\
                c,\"quoted, with comma\",y\n\
                b,q b?\n";
    std::fs::write(root.join("qa.csv"), csv).unwrap();
    for (ann, good_rows, bad) in [
        (
            "qa.jsonl",
            3,
            vec![(2, "not JSON"), (3, "missing"), (4, "is null"), (5, "must be a string"), (6, "UTF-8"), (8, "object")],
        ),
        ("qa.csv", 2, vec![(3, "4 fields"), (4, "unterminated"), (5, "UTF-8"), (7, "2 fields")]),
    ] {
        let mut o = opts(&root, ann, 1);
        assert!(ingest_frames(&o).is_err(), "{ann}: without --skip-bad the first fault stops ingest");
        o.skip_bad = true;
        let r = ingest_frames(&o).unwrap();
        assert_eq!(r.rows, good_rows, "{ann}");
        let listed: Vec<usize> = r.skipped.iter().map(|s| s.line).collect();
        assert_eq!(listed, bad.iter().map(|b| b.0).collect::<Vec<_>>(), "{ann}: {:?}", r.skipped);
        for (s, (_, why)) in r.skipped.iter().zip(&bad) {
            assert!(s.reason.contains(why), "{ann} line {}: {}", s.line, s.reason);
        }
        let written = read_back(&root);
        assert_eq!(written.video_ids.len(), good_rows);
        assert!(written.questions.iter().all(|q| q.starts_with('q') || q.contains("comma")), "{:?}", written.questions);
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_skipped_row_does_not_decide_the_frame_size_of_the_rows_after_it() {
    let root = tmp("skip-size");
    let big = root.join("frames/big");
    std::fs::create_dir_all(&big).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(big.join("1.png")).unwrap();
    std::fs::write(big.join("2.png"), b"broken").unwrap();
    let small = root.join("frames/small");
    std::fs::create_dir_all(&small).unwrap();
    flat_png(&small.join("1.png"), 7);
    flat_png(&small.join("2.png"), 8);
    std::fs::write(root.join("qa.csv"), "video,question,answer\nbig,q?,a\nsmall,q?,b\n").unwrap();
    let mut o = opts(&root, "qa.csv", 2);
    o.skip_bad = true;
    let r = ingest_frames(&o).unwrap();
    assert_eq!((r.rows, r.skipped.len()), (1, 1), "{:?}", r.skipped);
    let b = read_back(&root);
    assert_eq!(&b.shape[2..4], &[4, 4]);
    assert_eq!(shades(&b, 0), [7, 8]);
    std::fs::remove_dir_all(&root).ok();
}
