//! `jobs/video_qa/job.yaml` reads like the talk's Keras model, and its model
//! section gives exactly the graph (config and initial weights) that the
//! same layers written with `ModelBuilder` give.

use kallista_jobs::spec;
use kallista_ops::layers::{Concatenate, Conv2D, Dense, Embedding, Flatten, Lstm, Padding, Rescaling, TimeDistributed};
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::DType;
use std::path::Path;

fn job_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("video_qa/job.yaml")
}

/// The job file's model, written in Rust.
fn in_code(seed: u64) -> Model {
    let mut cnn = ModelBuilder::new("frame_cnn");
    let frame = cnn.input("frame", &[64, 64, 3], DType::F32);
    let mut x = frame;
    for (i, f) in [16, 32, 64].into_iter().enumerate() {
        let conv = Conv2D::new(f, 3).strides(2).padding(Padding::Same).activation("relu");
        x = cnn.apply(conv.name(&format!("conv{}", i + 1)), &[x]).unwrap();
    }
    let y = cnn.apply(Flatten::new().name("flatten"), &[x]).unwrap();
    let cnn = cnn.build(&[frame], &[y], seed + 1).unwrap();

    let mut g = ModelBuilder::new("video_qa");
    let video = g.input("video", &[8, 64, 64, 3], DType::U8);
    let question = g.input("question", &[12], DType::I32);
    let v = g.apply(Rescaling::new(1.0 / 255.0, 0.0).name("rescale"), &[video]).unwrap();
    let v = g.apply(TimeDistributed::new(cnn).name("td_cnn"), &[v]).unwrap();
    let v = g.apply(Lstm::new(128).name("video_lstm"), &[v]).unwrap();
    let q = g.apply(Embedding::new(64, 64).name("q_embed"), &[question]).unwrap();
    let q = g.apply(Lstm::new(64).name("q_lstm"), &[q]).unwrap();
    let x = g.apply(Concatenate::new().name("concat"), &[v, q]).unwrap();
    let x = g.apply(Dense::new(256).activation("relu").name("fc1"), &[x]).unwrap();
    let out = g.apply(Dense::new(32).activation("softmax").name("fc_out"), &[x]).unwrap();
    g.build(&[video, question], &[out], seed).unwrap()
}

#[test]
fn the_job_files_model_is_the_builders_graph() {
    let file = job_file();
    let job = spec::load(&file).unwrap();
    job.validate(&file).unwrap();
    let seed = job.training.seed;
    let from_yaml = job.model.build(&file, seed).unwrap();
    let from_code = in_code(seed);
    assert_eq!(from_yaml.to_json(), from_code.to_json());
    assert_eq!(from_yaml.named_weights(), from_code.named_weights());
    assert_eq!(job.model.input_columns(&file).unwrap(), ["frames", "question_ids"]);
    // A different seed gives different weights: the comparison above can fail.
    assert_ne!(in_code(seed + 7).named_weights(), from_code.named_weights());
}

#[test]
fn the_model_section_is_about_as_short_as_the_talks_keras() {
    let text = std::fs::read_to_string(job_file()).unwrap();
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("model:"))
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(section.len() <= 25, "{} lines:\n{}", section.len(), section.join("\n"));
}

/// The job file with `from` replaced by `to`, written to a temporary file.
fn edited(name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(job_file()).unwrap();
    assert!(text.contains(from), "the job file holds '{from}'");
    let p = std::env::temp_dir().join(format!("kallista-job-{name}-{}.yaml", std::process::id()));
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}

#[test]
fn non_finite_and_non_positive_numbers_are_refused_naming_the_key() {
    let text = std::fs::read_to_string(job_file()).unwrap();
    let lr = text.lines().find(|l| l.contains("learning_rate")).expect("the job file sets a learning rate");
    let value = lr.split("learning_rate:").nth(1).unwrap().split([',', '}']).next().unwrap().trim().to_string();
    for (name, to, key) in [
        ("nan", ".nan", "training.optimizer.learning_rate"),
        ("inf", "-.inf", "training.optimizer.learning_rate"),
        ("zero", "0.0", "training.optimizer.learning_rate"),
    ] {
        let p = edited(name, &format!("learning_rate: {value}"), &format!("learning_rate: {to}"));
        let e = spec::load(&p).and_then(|j| j.validate(&p).map(|_| j));
        match e {
            Err(kallista_jobs::JobError::Spec { key: k, detail, .. }) => assert_eq!(k, key, "{name}: {detail}"),
            other => panic!("{name}: expected a spec error naming {key}, got {:?}", other.map(|_| ())),
        }
        std::fs::remove_file(&p).ok();
    }
}
