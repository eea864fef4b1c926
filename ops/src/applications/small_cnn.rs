//! A small frame CNN: three strided 3x3 convolutions and a global average,
//! the trainable feature extractor of workload W2.
//!
//! ```text
//! [H, W, C] -> Conv2D(f1, 3, s2, same, relu) "conv1" -> Conv2D(f2, 3, s2, same, relu) "conv2"
//!           -> Conv2D(f3, 3, s2, same, relu) "conv3" -> GlobalAveragePooling2D "gap" -> [f3]
//! ```

use crate::error::Result;
use crate::layers::{Conv2D, GlobalAveragePooling2D, Padding};
use crate::model::{Model, ModelBuilder};
use crate::tensor::DType;

/// Builds the CNN as a model named `frame_cnn` on `[height, width, channels]` frames
/// (use it as a layer, e.g. inside `TimeDistributed`).
pub fn small_cnn(input: [usize; 3], filters: [usize; 3], seed: u64) -> Result<Model> {
    let mut g = ModelBuilder::new("frame_cnn");
    let frame = g.input("frame", &input, DType::F32);
    let mut x = frame;
    for (i, f) in filters.into_iter().enumerate() {
        let conv = Conv2D::new(f, 3).strides(2).padding(Padding::Same).activation("relu");
        x = g.apply(conv.name(&format!("conv{}", i + 1)), &[x])?;
    }
    let y = g.apply(GlobalAveragePooling2D::new().name("gap"), &[x])?;
    g.build(&[frame], &[y], seed)
}
