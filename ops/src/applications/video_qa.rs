//! The video-QA model of the talk, on per-frame CNN features:
//!
//! ```text
//! video [T, F] -> LSTM(video_units)
//! question [L] -> Embedding(V, emb) -> LSTM(question_units)
//! concatenate -> Dense(hidden, relu) -> Dense(answers, softmax)
//! ```

use crate::error::Result;
use crate::layers::{Concatenate, Dense, Embedding, Lstm};
use crate::model::{Model, ModelBuilder};
use crate::tensor::DType;

/// Sizes of the video-QA model.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoQaDims {
    pub frames: usize,
    pub features: usize,
    pub question_len: usize,
    pub vocab: usize,
    pub answers: usize,
    pub embedding: usize,
    pub video_units: usize,
    pub question_units: usize,
    pub hidden: usize,
    /// Treat token 0 as padding.
    pub mask_zero: bool,
}

impl VideoQaDims {
    /// Workload W1 of `shared/peers/WORKLOAD.md` (Keras layer names as in the peers).
    pub fn w1() -> Self {
        VideoQaDims {
            frames: 16,
            features: 2048,
            question_len: 20,
            vocab: 10_000,
            answers: 1000,
            embedding: 256,
            video_units: 256,
            question_units: 128,
            hidden: 128,
            mask_zero: false,
        }
    }
}

/// Builds the model with layer names `video_lstm`, `q_embed`, `q_lstm`, `concat`, `fc1`, `fc_out`.
pub fn video_qa(d: &VideoQaDims, seed: u64) -> Result<Model> {
    let mut g = ModelBuilder::new("video_qa");
    let video = g.input("video", &[d.frames, d.features], DType::F32);
    let question = g.input("question", &[d.question_len], DType::I32);
    let v = g.apply(Lstm::new(d.video_units).name("video_lstm"), &[video])?;
    let q = g.apply(Embedding::new(d.vocab, d.embedding).mask_zero(d.mask_zero).name("q_embed"), &[question])?;
    let q = g.apply(Lstm::new(d.question_units).name("q_lstm"), &[q])?;
    let x = g.apply(Concatenate::new().name("concat"), &[v, q])?;
    let x = g.apply(Dense::new(d.hidden).activation("relu").name("fc1"), &[x])?;
    let out = g.apply(Dense::new(d.answers).activation("softmax").name("fc_out"), &[x])?;
    g.build(&[video, question], &[out], seed)
}

/// A small learnable video-QA task for tests and the demo: each clip has a
/// colour (a feature pattern present in every frame) and a direction (the sign
/// of a ramp along another pattern over time); question token 1 asks for the
/// colour (answers `0..4`), token 2 for the direction (answers `4, 5`); other
/// tokens are filler. Answering needs both inputs and, for direction, the time
/// axis. Returns `([video, question], [answer])`.
pub fn toy_task(d: &VideoQaDims, samples: usize, seed: u64) -> (Vec<crate::Data>, Vec<crate::Data>) {
    use crate::init::Rng;
    use crate::{Data, IntTensor, Tensor};
    assert!(d.answers >= 6 && d.vocab > 3 && d.question_len >= 1, "toy task needs >= 6 answers and a vocabulary > 3");
    // Patterns are fixed (seed 0) so that train and test sets share them.
    let mut prng = Rng::new(0);
    let mut pattern = || (0..d.features).map(|_| prng.normal()).collect::<Vec<f32>>();
    let colours: Vec<Vec<f32>> = (0..4).map(|_| pattern()).collect();
    let ramp = pattern();
    let mut rng = Rng::new(seed);
    let (mut video, mut question, mut answer) = (vec![], vec![], vec![]);
    for _ in 0..samples {
        let colour = rng.below(4);
        let dir = if rng.below(2) == 0 { -1.0 } else { 1.0 };
        for t in 0..d.frames {
            let pos = dir * (2.0 * t as f32 / (d.frames.max(2) - 1) as f32 - 1.0);
            for f in 0..d.features {
                video.push(colours[colour][f] + pos * ramp[f] + 0.3 * rng.normal());
            }
        }
        let asks_colour = rng.below(2) == 0;
        question.push(if asks_colour { 1 } else { 2 });
        for _ in 1..d.question_len {
            question.push(3 + rng.below(d.vocab - 3) as i32);
        }
        answer.push(if asks_colour {
            colour as i32
        } else if dir < 0.0 {
            4
        } else {
            5
        });
    }
    let v = Tensor::new(&[samples, d.frames, d.features], video).expect("sizes match");
    let q = IntTensor::new(&[samples, d.question_len], question).expect("sizes match");
    let a = IntTensor::new(&[samples], answer).expect("sizes match");
    (vec![Data::F32(v), Data::I32(q)], vec![Data::I32(a)])
}

impl VideoQaDims {
    /// W1's architecture at toy sizes (for tests and the demo).
    pub fn toy() -> Self {
        VideoQaDims {
            frames: 8,
            features: 32,
            question_len: 6,
            vocab: 50,
            answers: 8,
            embedding: 16,
            video_units: 32,
            question_units: 16,
            hidden: 32,
            mask_zero: false,
        }
    }
}
