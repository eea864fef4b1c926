//! Ready-made models. `video_qa` is the talk's video question-answering model
//! on precomputed frame features (workload W1 of the peers' benchmarks);
//! `video_qa_pixels` the same model end to end on raw frames with a small
//! trainable CNN (`small_cnn`, workload W2); `inception_v3` Keras's
//! InceptionV3, layer names included, the seed model's frame CNN.

mod inception_v3;
mod small_cnn;
mod video_qa;
mod video_qa_pixels;

pub use inception_v3::{inception_v3, Pooling, INCEPTION_V3_MIN_SIZE};
pub use small_cnn::small_cnn;
pub use video_qa::{toy_task, video_qa, VideoQaDims};
pub use video_qa_pixels::{video_qa_pixels, VideoQaPixelsDims};
