//! A tiny video-QA model for the training module's unit tests.

use super::model_cache::compile;
use super::round::CompileSpec;
use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::model::Model;
use kallista_ops::optim::OptimizerConfig;

/// Two frames of three features, questions of four tokens, five answers.
pub fn tiny_dims() -> VideoQaDims {
    VideoQaDims {
        frames: 2,
        features: 3,
        question_len: 4,
        vocab: 10,
        answers: 5,
        embedding: 4,
        video_units: 3,
        question_units: 3,
        hidden: 4,
        mask_zero: false,
    }
}

/// Adam(0.01) on sparse categorical cross-entropy, with `metrics`.
pub fn adam(metrics: &[&str]) -> CompileSpec {
    CompileSpec {
        optimizer: OptimizerConfig::adam(0.01),
        loss: "sparse_categorical_crossentropy".into(),
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
    }
}

/// The tiny model, compiled as `spec` says.
pub fn tiny_model(spec: &CompileSpec) -> Model {
    let mut model = video_qa(&tiny_dims(), 5).unwrap();
    compile(&mut model, spec).unwrap();
    model
}
