//! Ready-made models. `video_qa` is the talk's video question-answering model
//! on precomputed frame features (workload W1 of the peers' benchmarks).

mod video_qa;

pub use video_qa::{toy_task, video_qa, VideoQaDims};
