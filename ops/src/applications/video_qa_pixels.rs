//! The video-QA model end to end on raw frames (workload W2 of
//! `shared/peers/WORKLOAD.md`): a small CNN trained with the rest.
//!
//! ```text
//! video uint8 [T, H, W, 3] -> Rescaling(1/255) "rescale"
//!     -> TimeDistributed(small_cnn "frame_cnn") "td_cnn" -> LSTM(video_units) "video_lstm"
//! question [L] -> Embedding(V, emb) "q_embed" -> LSTM(question_units) "q_lstm"
//! concatenate "concat" -> Dense(hidden, relu) "fc1" -> Dense(answers, softmax) "fc_out"
//! ```
//!
//! Layer names are those of the peers' Keras model (`shared/peers/keras_w.py`).

use super::small_cnn::small_cnn;
use crate::error::Result;
use crate::layers::{Concatenate, Dense, Embedding, Lstm, Rescaling, TimeDistributed};
use crate::model::{Model, ModelBuilder};
use crate::tensor::DType;

/// Sizes of the pixel video-QA model.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoQaPixelsDims {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub filters: [usize; 3],
    pub question_len: usize,
    pub vocab: usize,
    pub answers: usize,
    pub embedding: usize,
    pub video_units: usize,
    pub question_units: usize,
    pub hidden: usize,
}

impl VideoQaPixelsDims {
    /// Workload W2: 8 frames of 64x64x3, CNN 32-64-128, LSTM(128), question LSTM(64), 100 answers.
    pub fn w2() -> Self {
        VideoQaPixelsDims {
            frames: 8,
            height: 64,
            width: 64,
            channels: 3,
            filters: [32, 64, 128],
            question_len: 12,
            vocab: 1000,
            answers: 100,
            embedding: 64,
            video_units: 128,
            question_units: 64,
            hidden: 64,
        }
    }

    /// W2's architecture at toy sizes (tests).
    pub fn toy() -> Self {
        VideoQaPixelsDims {
            frames: 3,
            height: 16,
            width: 16,
            channels: 3,
            filters: [4, 6, 8],
            question_len: 5,
            vocab: 30,
            answers: 6,
            embedding: 8,
            video_units: 8,
            question_units: 6,
            hidden: 8,
        }
    }

    /// Forward FLOPs per sample (multiply-adds x 2), as the peers count them.
    pub fn forward_flops(&self) -> f64 {
        let mut flops = 0.0;
        let (mut h, mut w, mut c) = (self.height, self.width, self.channels);
        for f in self.filters {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
            flops += 2.0 * (h * w * f * 9 * c) as f64;
            c = f;
        }
        flops *= self.frames as f64;
        let lstm = |steps: usize, inp: usize, u: usize| 2.0 * (steps * (inp + u) * 4 * u) as f64;
        flops += lstm(self.frames, c, self.video_units);
        flops += lstm(self.question_len, self.embedding, self.question_units);
        flops + 2.0 * ((self.video_units + self.question_units) * self.hidden + self.hidden * self.answers) as f64
    }
}

/// Builds the model; the CNN's weights are drawn from `seed + 1`, the rest from `seed`.
pub fn video_qa_pixels(d: &VideoQaPixelsDims, seed: u64) -> Result<Model> {
    let cnn = small_cnn([d.height, d.width, d.channels], d.filters, seed.wrapping_add(1))?;
    let mut g = ModelBuilder::new("video_qa_pixels");
    let video = g.input("video", &[d.frames, d.height, d.width, d.channels], DType::U8);
    let question = g.input("question", &[d.question_len], DType::I32);
    let v = g.apply(Rescaling::new(1.0 / 255.0, 0.0).name("rescale"), &[video])?;
    let v = g.apply(TimeDistributed::new(cnn).name("td_cnn"), &[v])?;
    let v = g.apply(Lstm::new(d.video_units).name("video_lstm"), &[v])?;
    let q = g.apply(Embedding::new(d.vocab, d.embedding).name("q_embed"), &[question])?;
    let q = g.apply(Lstm::new(d.question_units).name("q_lstm"), &[q])?;
    let x = g.apply(Concatenate::new().name("concat"), &[v, q])?;
    let x = g.apply(Dense::new(d.hidden).activation("relu").name("fc1"), &[x])?;
    let out = g.apply(Dense::new(d.answers).activation("softmax").name("fc_out"), &[x])?;
    g.build(&[video, question], &[out], seed)
}
