//! Shared set-up of the end-to-end training tests: a small prepared video-QA
//! set (made once per test binary), job files, and running the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn kallista(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kallista")).args(args).output().expect("run kallista")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kallista failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kallista-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A prepared set of `videos` clips of 4 frames of 32x32 (made and prepared
/// once per test binary, through the binary itself).
pub fn prepared_set(videos: usize) -> &'static Path {
    static SET: OnceLock<PathBuf> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = temp_dir("train-set");
        let root = env!("CARGO_MANIFEST_DIR");
        ok(kallista(&[
            "data",
            "make-video-qa",
            "--out",
            dir.to_str().unwrap(),
            "--videos",
            &videos.to_string(),
            "--frames",
            "4",
            "--size",
            "32",
            "--seed",
            "11",
        ]));
        let out = dir.join("prepared");
        ok(kallista(&[
            "sql",
            "-f",
            &format!("{root}/jobs/video_qa/prepare.sql"),
            "--set",
            &format!("data={}", dir.display()),
            "--set",
            &format!("out={}", out.display()),
        ]));
        out
    })
}

/// A job file for the small set: the video-QA architecture at test sizes.
/// `extra` is appended to the `training` section.
pub fn small_job(dir: &Path, data: &Path, workers: usize, training_extra: &str) -> PathBuf {
    let yaml = format!(
        r#"job_dir: {job_dir}
model:
  name: small_video_qa
  inputs:
    - {{name: video, shape: [4, 32, 32, 3], dtype: uint8, column: frames}}
    - {{name: question, shape: [12], dtype: int32, column: question_ids}}
  models:
    frame_cnn:
      inputs: [{{name: frame, shape: [32, 32, 3]}}]
      layers:
        - {{name: conv1, class: Conv2D, input: frame, filters: 8, kernel_size: 3, strides: 2, padding: same, activation: relu}}
        - {{name: conv2, class: Conv2D, input: conv1, filters: 16, kernel_size: 3, strides: 2, padding: same, activation: relu}}
        - {{name: gap, class: GlobalAveragePooling2D, input: conv2}}
      outputs: [gap]
  layers:
    - {{name: rescale, class: Rescaling, input: video, scale: 0.00392156862745098}}
    - {{name: td_cnn, class: TimeDistributed, input: rescale, layer: frame_cnn}}
    - {{name: video_lstm, class: LSTM, input: td_cnn, units: 32}}
    - {{name: q_embed, class: Embedding, input: question, input_dim: 64, output_dim: 16}}
    - {{name: q_lstm, class: LSTM, input: q_embed, units: 16}}
    - {{name: concat, class: Concatenate, input: [video_lstm, q_lstm]}}
    - {{name: fc1, class: Dense, input: concat, units: 64, activation: relu}}
    - {{name: fc_out, class: Dense, input: fc1, units: 32, activation: softmax}}
  outputs: [fc_out]
data:
  train: {data}/train/
  eval: {data}/eval/
  test: {data}/test/
training:
  optimizer: {{name: adam, learning_rate: 0.005}}
  batch_size: 32
  seed: 7
{training_extra}
scaling:
  workers: {workers}
  mode: sync
  shards: 4
  round_timeout_seconds: 30
"#,
        job_dir = dir.join("job").display(),
        data = data.display(),
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every weight of a safetensors file (optimizer slots included).
pub fn weights(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let (tensors, _) = kallista_ops::model::read_safetensors(path).unwrap();
    tensors.into_iter().map(|(k, t)| (k, t.data().to_vec())).collect()
}

/// The newest weights version of a job dir.
pub fn final_weights(job_dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(job_dir.join("weights")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}
