//! Shared set-up of the end-to-end training tests: a small prepared video-QA
//! set (made once per test binary), job files, and running the binary.

#![allow(dead_code)]

pub mod cluster;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub fn kallista(args: &[&str]) -> Output {
    kallista_env(args, &[])
}

/// `kallista ARGS` with extra environment variables (object-store credentials).
pub fn kallista_env(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kallista")).args(args).envs(env.iter().cloned()).output().expect("run kallista")
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

/// A free loopback port that no outgoing connection takes before the server binds it.
pub fn free_port() -> u16 {
    kallista_engine::ports::unused_loopback_port().unwrap()
}

/// A fresh directory for one test. The first call of a test binary also
/// removes what earlier, ended test runs left (`kallista-*-pidPID` of a
/// dead PID): a test killed or failed keeps its dir for a look, but not forever.
pub fn temp_dir(name: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| kallista_engine::cluster::remove_dirs_of_ended_processes("kallista-"));
    let d = std::env::temp_dir().join(kallista_engine::cluster::owned_dir_name(&format!("kallista-{name}")));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A prepared set of `videos` clips of 4 frames of 32x32 (made and prepared
/// once per size and test binary, through the binary itself).
pub fn prepared_set(videos: usize) -> PathBuf {
    prepared_set_of(videos, 32)
}

/// [`prepared_set`] with frames of `size` x `size`.
pub fn prepared_set_of(videos: usize, size: usize) -> PathBuf {
    static SETS: Mutex<Vec<(usize, usize, PathBuf)>> = Mutex::new(Vec::new());
    let mut sets = SETS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, p)) = sets.iter().find(|(n, s, _)| *n == videos && *s == size) {
        return p.clone();
    }
    let made = {
        let dir = temp_dir(&format!("train-set-{videos}-{size}"));
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
            &size.to_string(),
            "--seed",
            "11",
        ]));
        let out = dir.join("prepared");
        ok(kallista(&[
            "sql",
            "-f",
            &format!("{root}/jobs/video_qa/prepare.sql"),
            "-f",
            &format!("{root}/jobs/video_qa/export.sql"),
            "--set",
            &format!("data={}", dir.display()),
            "--set",
            &format!("out={}", out.display()),
        ]));
        out
    };
    sets.push((videos, size, made.clone()));
    made
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
        - {{name: flatten, class: Flatten, input: conv2}}
      outputs: [flatten]
  layers:
    - {{name: rescale, class: Rescaling, input: video, scale: 0.00392156862745098}}
    - {{name: td_cnn, class: TimeDistributed, input: rescale, layer: frame_cnn}}
    - {{name: video_lstm, class: LSTM, input: td_cnn, units: 32}}
    - {{name: q_embed, class: Embedding, input: question, input_dim: 64, output_dim: 16}}
    - {{name: q_lstm, class: LSTM, input: q_embed, units: 16}}
    - {{name: concat, class: Concatenate, input: [video_lstm, q_lstm]}}
    - {{name: fc1, class: Dense, input: concat, units: 128, activation: relu}}
    - {{name: fc_out, class: Dense, input: fc1, units: 32, activation: softmax}}
  outputs: [fc_out]
data:
  train: {data}/train/
  eval: {data}/eval/
  test: {data}/test/
  label: answer_id
  group_by: family
  key: [video_id, question]
  label_names: answer
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

/// The clips of the learning checks: 1,000 videos of 4 frames of 64x64.
pub fn learning_set() -> PathBuf {
    prepared_set_of(1000, 64)
}

/// `jobs/video_qa/job.yaml`'s model and optimizer on [`learning_set`]-sized
/// clips (4 frames), batch 32, 16 epochs: about 380 rounds, under a minute here.
/// (Smaller models stayed at the question-only answer prior on this little data.)
pub fn learning_job(dir: &Path, data: &Path) -> PathBuf {
    learning_job_at(dir, &dir.join("job").display().to_string(), &data.display().to_string())
}

/// [`learning_job`] with its job dir and data at any URLs.
pub fn learning_job_at(dir: &Path, job_dir: &str, data: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/video_qa/job.yaml")).unwrap();
    let text = text[..text.find("# How `kallista run`").unwrap()].to_string();
    let edits = [
        ("job_dir: target/jobs/video_qa".to_string(), format!("job_dir: {job_dir}")),
        ("shape: [8, 64, 64, 3]".into(), "shape: [4, 64, 64, 3]".into()),
        (
            "  script: {file: prepare.sql, set: {data: \"${job_dir}/dataset\", out: \"${job_dir}/dataset/vocab\"}}\n"
                .into(),
            String::new(),
        ),
        ("{sql: \"SELECT * FROM prepared WHERE split = 'train'\"}".into(), format!("{data}/train/")),
        ("{sql: \"SELECT * FROM prepared WHERE split = 'eval'\"}".into(), format!("{data}/eval/")),
        ("{sql: \"SELECT * FROM prepared WHERE split = 'test'\"}".into(), format!("{data}/test/")),
        ("batch_size: 16".into(), "batch_size: 32".into()),
        ("epochs: 11".into(), "epochs: 16".into()),
        ("eval_every_steps: 1000".into(), "eval_every_steps: 100".into()),
        ("checkpoint_every_steps: 1000".into(), "checkpoint_every_steps: 100".into()),
        ("shards: 4".into(), "shards: 4\n  round_timeout_seconds: 60".into()),
    ];
    let mut out = text;
    for (from, to) in edits {
        assert!(out.contains(&from), "job.yaml no longer has '{from}'");
        out = out.replace(&from, &to);
    }
    let path = dir.join("job.yaml");
    std::fs::write(&path, out).unwrap();
    path
}

/// The per-family majority baseline of the eval split: the accuracy of always
/// answering each family's most frequent training answer. `data` is a path or
/// URL; `env` reaches its store.
pub fn majority_baseline(data: &str, env: &[(String, String)]) -> f64 {
    let q = format!(
        "WITH top AS (SELECT family, answer FROM (SELECT family, answer, ROW_NUMBER() OVER (PARTITION BY family ORDER BY COUNT(*) DESC, answer) AS r FROM '{d}/train/' GROUP BY family, answer) WHERE r = 1) \
         SELECT CAST(SUM(CASE WHEN e.answer = top.answer THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS acc FROM '{d}/eval/' e JOIN top ON e.family = top.family",
        d = data
    );
    let out = ok(kallista_env(&["sql", "-e", &q], env));
    out.lines().find_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse::<f64>().ok()).expect(&out)
}

/// A job dir's object `name`, if it exists (any store: the test process needs its credentials).
pub fn job_object(job_dir: &str, name: &str) -> Option<Vec<u8>> {
    use kallista_engine::store::{blocking, Location};
    let at = Location::parse(job_dir).unwrap().join(name);
    blocking::exists(&at).unwrap().then(|| blocking::read(&at).unwrap().to_vec())
}

/// Checks a finished learning job: its job dir holds what a job leaves, eval
/// accuracy ends well above the majority baseline (+0.10 on ~115 rows; the
/// full job reaches 0.90), and the direction questions, which only the
/// frames answer (majority ~0.5), are answered from the pixels (eval and
/// test rows pooled).
pub fn check_learned(job_dir: &Path, data: &Path, out: &str) {
    check_learned_at(&job_dir.display().to_string(), &data.display().to_string(), &[], out)
}

/// [`check_learned`] on a job dir and data at any URLs, `env` reaching their store.
pub fn check_learned_at(job_dir: &str, data: &str, env: &[(String, String)], out: &str) {
    for f in [
        "model.json",
        "metrics.jsonl",
        "training_curve.png",
        "results.json",
        "checkpoints/last.json",
        "checkpoints/best.safetensors",
        "checkpoints/best.json",
    ] {
        assert!(job_object(job_dir, f).is_some(), "{f} missing from the job dir {job_dir}\n{out}");
    }
    assert_picture(&job_object(job_dir, "training_curve.png").unwrap(), "training_curve.png");
    let results: serde_json::Value = serde_json::from_slice(&job_object(job_dir, "results.json").unwrap()).unwrap();
    let overall = &results["eval"]["overall"];
    let eval = overall["correct"].as_f64().unwrap() / overall["rows"].as_f64().unwrap();
    let baseline = majority_baseline(data, env);
    assert!(eval >= baseline + 0.10, "eval accuracy {eval:.3} vs majority baseline {baseline:.3}\n{out}");
    // Direction questions are answered by the frames only (majority ~0.5).
    // Pooled over the eval and test splits (~40 rows: on ~25 rows one
    // trajectory or another swings it by 0.1), 0.75 is far above the prior
    // (19 of 26 eval rows and 14 of 15 test rows in one run).
    let (mut correct, mut rows) = (0.0, 0.0);
    for split in ["eval", "test"] {
        let family = &results[split]["families"]["direction"];
        correct += family["correct"].as_f64().unwrap();
        rows += family["rows"].as_f64().unwrap();
    }
    let direction = correct / rows;
    assert!(direction >= 0.75, "direction accuracy {direction:.3} on {rows} eval and test rows\n{out}");
    let metrics = String::from_utf8(job_object(job_dir, "metrics.jsonl").unwrap()).unwrap();
    assert!(metrics.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count() >= 3, "{metrics}");
}

/// Every `train` line of a job's `metrics.jsonl`.
pub fn train_lines(job_dir: &str) -> Vec<serde_json::Value> {
    let metrics = String::from_utf8(job_object(job_dir, "metrics.jsonl").unwrap_or_default()).unwrap();
    metrics
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["kind"] == "train")
        .collect()
}

/// The weights of the newest version in a job dir on any store.
pub fn final_weights_at(job_dir: &str) -> std::collections::BTreeMap<String, Vec<f32>> {
    use kallista_engine::store::{blocking, Location};
    let versions = blocking::list(&Location::parse(job_dir).unwrap().join("weights")).unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let bytes = blocking::read(&versions[0].0).unwrap();
    let (tensors, _) = kallista_ops::model::parse_safetensors(&bytes, versions[0].0.as_str()).unwrap();
    tensors.into_iter().map(|(k, t)| (k, t.data().to_vec())).collect()
}

/// A PNG a person can read: decodes, is of a reasonable size, and has lines
/// and text drawn on it (many colours from anti-aliasing, not a blank page).
pub fn assert_picture(png: &[u8], what: &str) {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).expect(what).to_rgb8();
    assert!(img.width() >= 300 && img.height() >= 300, "{what}: {}x{}", img.width(), img.height());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let share = inked as f64 / (img.width() * img.height()) as f64;
    assert!(share > 0.01, "{what}: only {share:.4} of the pixels drawn");
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 20, "{what}: {} colours: no anti-aliased text", colours.len());
}

/// The fixtures made by the reference frameworks in test set-up
/// (`scripts/make-test-fixtures.sh`): `$KALLISTA_FIXTURES`, default `~/.cache/kallista/fixtures`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("KALLISTA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kallista/fixtures"))
}
