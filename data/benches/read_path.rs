//! The read path: Parquet clips -> decoded `u8` frame tensors, on one core,
//! for W2-sized clips (8 x 64 x 64 x 3) and the seed model's 150 x 150, with
//! each frame encoding; also the bytes each clip takes on disk. Prints one
//! JSON line per case.
//!
//!     cargo bench --workspace --bench read_path

use kallista_data::frames::FrameEncoding;
use kallista_data::parquet_io::{parquet_files, ClipReader};
use kallista_data::video_qa::{make_video_qa, MakeOptions};
use std::time::Instant;

fn main() {
    let root = std::env::temp_dir().join(format!("kallista-read-bench-{}", std::process::id()));
    for (size, clips) in [(64usize, 1024usize), (150, 256)] {
        for enc in [FrameEncoding::Raw, FrameEncoding::Png, FrameEncoding::Jpeg { quality: 90 }] {
            let dir = root.join(format!("{size}-{}", enc.name()));
            let mut opts = MakeOptions::new(&dir, clips, 8, size, 7);
            opts.encoding = enc;
            opts.videos_per_shard = clips;
            make_video_qa(&opts, |_| {}).expect("make set");
            let files = parquet_files(&dir.join("clips")).unwrap();
            let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                let mut n = 0;
                for f in &files {
                    for b in ClipReader::open(f, 64).unwrap() {
                        let b = b.unwrap();
                        n += b.shape[0];
                        std::hint::black_box(&b.frames);
                    }
                }
                assert_eq!(n, clips);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{{\"bench\": \"read_path\", \"clip\": \"8x{size}x{size}x3\", \"encoding\": \"{}\", \"clips\": {clips}, \"samples_per_s\": {:.1}, \"bytes_per_clip\": {}, \"threads\": 1}}",
                enc.name(),
                clips as f64 / best,
                bytes / clips as u64
            );
        }
    }
    std::fs::remove_dir_all(&root).ok();
}
