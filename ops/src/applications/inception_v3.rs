//! InceptionV3 as Keras 3 builds it (`keras/src/applications/inception_v3.py`),
//! layer for layer and name for name, so that Keras's weights (and the seed
//! model's frozen frame CNN) map onto it key by key.
//!
//! Every `conv2d_bn` block is `Conv2D(use_bias=False)` "conv2d_N" ->
//! `BatchNormalization(scale=False)` "batch_normalization_N" ->
//! `Activation("relu")` "activation_N", numbered in call order as a fresh
//! Keras session numbers them; the blocks are joined by the concatenations
//! `mixed0` .. `mixed10` (and `mixed9_0`, `mixed9_1`, `concatenate`,
//! `concatenate_1` inside the last two). The top is
//! `GlobalAveragePooling2D "avg_pool" -> Dense(classes, softmax) "predictions"`;
//! without it, `pooling` adds a `global_average_pooling2d` or
//! `global_max_pooling2d`.
//!
//! Shapes: `[B, H, W, 3]` (H, W >= 75) -> `[B, classes]` with the top,
//! `[B, 2048]` with pooling, else `[B, h, w, 2048]`.

use crate::error::{OpsError, Result};
use crate::layers::{
    Activation, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense, GlobalAveragePooling2D,
    GlobalMaxPooling2D, MaxPooling2D, Padding,
};
use crate::model::{Model, ModelBuilder, SymbolicTensor};
use crate::tensor::DType;

/// What follows the last convolutional block when there is no top (Keras's
/// `pooling` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The 4-D output of `mixed10`.
    None,
    /// `GlobalAveragePooling2D`: `[B, 2048]`.
    Avg,
    /// `GlobalMaxPooling2D`: `[B, 2048]`.
    Max,
}

/// Keras's smallest input side: the valid convolutions and strided poolings
/// leave nothing below it.
pub const INCEPTION_V3_MIN_SIZE: usize = 75;

/// Builds InceptionV3 on `[height, width, 3]` images, with weights drawn
/// from `seed`. `pooling` only applies without the top, as in Keras; with
/// the top the classifier is `Dense(classes, softmax)`.
pub fn inception_v3(
    include_top: bool,
    pooling: Pooling,
    input: (usize, usize),
    classes: usize,
    seed: u64,
) -> Result<Model> {
    let (h, w) = input;
    if h < INCEPTION_V3_MIN_SIZE || w < INCEPTION_V3_MIN_SIZE {
        return Err(OpsError::Config(format!(
            "inception_v3: input size must be at least {INCEPTION_V3_MIN_SIZE}x{INCEPTION_V3_MIN_SIZE}, got {h}x{w}"
        )));
    }
    if include_top && classes == 0 {
        return Err(OpsError::Config("inception_v3: include_top needs classes >= 1, got 0".into()));
    }
    let mut g = ModelBuilder::new("inception_v3");
    let img = g.input("input_layer", &[h, w, 3], DType::F32);
    let b = &mut Blocks { g: &mut g };

    let mut x = b.conv_bn(img, 32, (3, 3), 2, Padding::Valid)?;
    x = b.conv_bn(x, 32, (3, 3), 1, Padding::Valid)?;
    x = b.conv_bn(x, 64, (3, 3), 1, Padding::Same)?;
    x = b.max_pool(x)?;
    x = b.conv_bn(x, 80, (1, 1), 1, Padding::Valid)?;
    x = b.conv_bn(x, 192, (3, 3), 1, Padding::Valid)?;
    x = b.max_pool(x)?;

    // mixed0..mixed2: 35x35 blocks (at 299x299).
    for (i, pool_filters) in [32, 64, 64].into_iter().enumerate() {
        let b1 = b.conv(x, 64, (1, 1))?;
        let b5 = b.conv(x, 48, (1, 1))?;
        let b5 = b.conv(b5, 64, (5, 5))?;
        let d = b.conv(x, 64, (1, 1))?;
        let d = b.conv(d, 96, (3, 3))?;
        let d = b.conv(d, 96, (3, 3))?;
        let p = b.avg_pool(x)?;
        let p = b.conv(p, pool_filters, (1, 1))?;
        x = b.concat(&[b1, b5, d, p], Some(&format!("mixed{i}")))?;
    }

    // mixed3: reduction to 17x17.
    let b3 = b.conv_bn(x, 384, (3, 3), 2, Padding::Valid)?;
    let d = b.conv(x, 64, (1, 1))?;
    let d = b.conv(d, 96, (3, 3))?;
    let d = b.conv_bn(d, 96, (3, 3), 2, Padding::Valid)?;
    let p = b.max_pool(x)?;
    x = b.concat(&[b3, d, p], Some("mixed3"))?;

    // mixed4..mixed7: factorised 7x7 blocks.
    for (i, f) in [128, 160, 160, 192].into_iter().enumerate() {
        let b1 = b.conv(x, 192, (1, 1))?;
        let b7 = b.conv(x, f, (1, 1))?;
        let b7 = b.conv(b7, f, (1, 7))?;
        let b7 = b.conv(b7, 192, (7, 1))?;
        let d = b.conv(x, f, (1, 1))?;
        let d = b.conv(d, f, (7, 1))?;
        let d = b.conv(d, f, (1, 7))?;
        let d = b.conv(d, f, (7, 1))?;
        let d = b.conv(d, 192, (1, 7))?;
        let p = b.avg_pool(x)?;
        let p = b.conv(p, 192, (1, 1))?;
        x = b.concat(&[b1, b7, d, p], Some(&format!("mixed{}", 4 + i)))?;
    }

    // mixed8: reduction to 8x8.
    let b3 = b.conv(x, 192, (1, 1))?;
    let b3 = b.conv_bn(b3, 320, (3, 3), 2, Padding::Valid)?;
    let d = b.conv(x, 192, (1, 1))?;
    let d = b.conv(d, 192, (1, 7))?;
    let d = b.conv(d, 192, (7, 1))?;
    let d = b.conv_bn(d, 192, (3, 3), 2, Padding::Valid)?;
    let p = b.max_pool(x)?;
    x = b.concat(&[b3, d, p], Some("mixed8"))?;

    // mixed9, mixed10: expanded filter banks.
    for i in 0..2 {
        let b1 = b.conv(x, 320, (1, 1))?;
        let b3 = b.conv(x, 384, (1, 1))?;
        let b3_1 = b.conv(b3, 384, (1, 3))?;
        let b3_2 = b.conv(b3, 384, (3, 1))?;
        let b3 = b.concat(&[b3_1, b3_2], Some(&format!("mixed9_{i}")))?;
        let d = b.conv(x, 448, (1, 1))?;
        let d = b.conv(d, 384, (3, 3))?;
        let d_1 = b.conv(d, 384, (1, 3))?;
        let d_2 = b.conv(d, 384, (3, 1))?;
        let d = b.concat(&[d_1, d_2], None)?;
        let p = b.avg_pool(x)?;
        let p = b.conv(p, 192, (1, 1))?;
        x = b.concat(&[b1, b3, d, p], Some(&format!("mixed{}", 9 + i)))?;
    }

    if include_top {
        x = g.apply(GlobalAveragePooling2D::new().name("avg_pool"), &[x])?;
        x = g.apply(Dense::new(classes).activation("softmax").name("predictions"), &[x])?;
    } else {
        match pooling {
            Pooling::None => {}
            Pooling::Avg => x = g.apply(GlobalAveragePooling2D::new(), &[x])?,
            Pooling::Max => x = g.apply(GlobalMaxPooling2D::new(), &[x])?,
        }
    }
    g.build(&[img], &[x], seed)
}

/// The block helpers of Keras's `inception_v3.py`; layers are left unnamed
/// so that the builder numbers them as Keras does.
struct Blocks<'a> {
    g: &'a mut ModelBuilder,
}

impl Blocks<'_> {
    /// `conv2d_bn(x, filters, kh, kw, padding, strides)`.
    fn conv_bn(
        &mut self,
        x: SymbolicTensor,
        filters: usize,
        kernel: (usize, usize),
        strides: usize,
        padding: Padding,
    ) -> Result<SymbolicTensor> {
        let conv = Conv2D::new(filters, kernel).strides(strides).padding(padding).use_bias(false);
        let x = self.g.apply(conv, &[x])?;
        let x = self.g.apply(BatchNormalization::new().scale(false), &[x])?;
        self.g.apply(Activation::new("relu"), &[x])
    }

    /// `conv2d_bn` with its defaults: stride 1, 'same'.
    fn conv(&mut self, x: SymbolicTensor, filters: usize, kernel: (usize, usize)) -> Result<SymbolicTensor> {
        self.conv_bn(x, filters, kernel, 1, Padding::Same)
    }

    /// `MaxPooling2D((3, 3), strides=(2, 2))`, 'valid'.
    fn max_pool(&mut self, x: SymbolicTensor) -> Result<SymbolicTensor> {
        self.g.apply(MaxPooling2D::new(3).strides(2), &[x])
    }

    /// `AveragePooling2D((3, 3), strides=(1, 1), padding="same")`.
    fn avg_pool(&mut self, x: SymbolicTensor) -> Result<SymbolicTensor> {
        self.g.apply(AveragePooling2D::new(3).strides(1).padding(Padding::Same), &[x])
    }

    fn concat(&mut self, xs: &[SymbolicTensor], name: Option<&str>) -> Result<SymbolicTensor> {
        let layer = match name {
            Some(n) => Concatenate::new().name(n),
            None => Concatenate::new(),
        };
        self.g.apply(layer, xs)
    }
}
