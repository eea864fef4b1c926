//! Keras layers: names, arguments, defaults and weight layouts as in Keras.
//!
//! A layer is a config plus its weights. [`Layer::build`] checks the input
//! specs, declares the weights (shape and initialiser) and returns the output
//! spec; the model draws the weights from a seed; [`Layer::forward`] records
//! the layer's ops on a tape given the weights as tape vars, which is also how
//! the gradient checks feed it perturbed weights.

mod activation;
mod add;
mod args;
mod batch_normalization;
mod concatenate;
mod conv2d;
mod dense;
mod depthwise_conv2d;
mod dropout;
mod embedding;
mod flatten;
mod gru;
mod lstm;
mod pooling;
mod registry;
mod rescaling;
mod reshape;
mod time_distributed;
mod zero_padding2d;

pub use crate::autodiff::PoolKind;
pub use activation::Activation;
pub use add::Add;
pub use args::{Padding, Pair};
pub use batch_normalization::BatchNormalization;
pub use concatenate::Concatenate;
pub use conv2d::Conv2D;
pub use dense::Dense;
pub use depthwise_conv2d::DepthwiseConv2D;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use flatten::Flatten;
pub use gru::Gru;
pub use lstm::Lstm;
pub use pooling::{
    AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, GlobalPooling2D, MaxPooling2D, Pooling2D,
};
pub use registry::{layer_from_config, LayerJson};
pub use rescaling::Rescaling;
pub use reshape::Reshape;
pub use time_distributed::{TimeDistributed, FRAMES_PER_BLOCK};
pub use zero_padding2d::{Padding2d, ZeroPadding2D};

use crate::autodiff::{Mask, Tape, Var};
use crate::error::{OpsError, Result};
use crate::init::{Initializer, Rng};
use crate::tensor::{DType, IntTensor};

/// A symbolic tensor's static description: shape without the batch axis, dtype,
/// and whether it carries a time-step mask.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub masked: bool,
}

impl TensorSpec {
    pub fn f32(shape: &[usize]) -> Self {
        TensorSpec { shape: shape.to_vec(), dtype: DType::F32, masked: false }
    }

    /// `(None, d1, d2)` as Keras prints it.
    pub fn keras_shape(&self) -> String {
        let dims: Vec<String> =
            std::iter::once("None".to_string()).chain(self.shape.iter().map(|d| d.to_string())).collect();
        format!("({})", dims.join(", "))
    }
}

/// A weight: name (Keras's), value, initialiser, and whether the optimizer may change it.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub value: crate::tensor::Tensor,
    pub initializer: Initializer,
    pub trainable: bool,
    /// The declared shape when it holds more than [`MAX_WEIGHT_ELEMENTS`]
    /// (then `value` is empty and the model builder refuses the layer).
    pub oversized: Option<Vec<usize>>,
}

/// The most elements one weight may hold (1 GiB of f32; VGG16's largest
/// kernel has 103 M, a 1 M x 256 embedding 256 M): a config asking for more
/// is an error naming the layer, not an allocation that aborts.
pub const MAX_WEIGHT_ELEMENTS: usize = 1 << 28;

impl Weight {
    /// A declared (zero-valued) trainable weight.
    pub fn declare(name: &str, shape: &[usize], initializer: Initializer) -> Self {
        let fits = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_some_and(|n| n <= MAX_WEIGHT_ELEMENTS);
        let (value, oversized) = match fits {
            true => (crate::tensor::Tensor::zeros(shape), None),
            false => (crate::tensor::Tensor::zeros(&[0]), Some(shape.to_vec())),
        };
        Weight { name: name.to_string(), value, initializer, trainable: true, oversized }
    }

    /// A declared non-trainable weight: state the layer updates itself (moving statistics).
    pub fn state(name: &str, shape: &[usize], initializer: Initializer) -> Self {
        Weight { trainable: false, ..Weight::declare(name, shape, initializer) }
    }
}

/// A runtime value flowing between layers: float activations (with an optional
/// `[B, T]` mask) or integer ids.
#[derive(Clone, Debug)]
pub enum Value {
    Float { var: Var, mask: Option<Mask> },
    Int(IntTensor),
}

impl Value {
    /// The float var, or a typed error naming the layer that needed one.
    pub fn float(&self, layer: &str, class: &str) -> Result<(Var, Option<Mask>)> {
        match self {
            Value::Float { var, mask } => Ok((*var, mask.clone())),
            Value::Int(t) => Err(OpsError::LayerInput {
                layer: layer.into(),
                class: class.into(),
                detail: "got integer ids".into(),
                expected: "float32 input".into(),
                got: t.shape().to_vec(),
            }),
        }
    }
}

/// A new value for a non-trainable weight, computed by a forward pass in
/// training mode (BatchNormalization's moving statistics). `weight` is the tape
/// var the layer received for that weight; the model maps it back to the
/// weight and writes the value after the step (see `model::run`).
#[derive(Clone, Debug, PartialEq)]
pub struct StateUpdate {
    pub weight: Var,
    pub value: crate::tensor::Tensor,
}

/// What a layer needs at call time besides its inputs, and what it reports back.
pub struct CallContext<'a> {
    pub training: bool,
    pub rng: &'a mut Rng,
    /// State updates recorded by the layers of this forward pass, in call order.
    pub updates: Vec<StateUpdate>,
    /// Weights packed for this pass's products (a batch of several shards).
    pub packed: Option<std::sync::Arc<crate::backend::PackedWeights>>,
}

impl<'a> CallContext<'a> {
    pub fn new(training: bool, rng: &'a mut Rng) -> Self {
        CallContext { training, rng, updates: vec![], packed: None }
    }
}

/// The key of a weight relative to the layer that exposes it, and whether the
/// optimizer may change it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightPath {
    /// `"kernel"` for a layer's own weight; `"conv1/kernel"` for the weight
    /// `kernel` of layer `conv1` inside a nested model or wrapper.
    pub path: String,
    /// False for non-trainable weights and for every weight of a frozen layer.
    pub trainable: bool,
}

/// A Keras layer. Contract: `build` may be called several times (a shared
/// layer is called on several inputs); the first call declares the weights and
/// later calls must fit them, else a [`OpsError::LayerInput`] naming the
/// layer. `forward` receives the weights in the order of `weights()`, which
/// includes the weights of wrapped layers (TimeDistributed, a nested model).
pub trait Layer: Send + Sync + std::fmt::Debug {
    /// Keras class name (`"Dense"`, `"LSTM"`, ...).
    fn class_name(&self) -> &'static str;
    /// The layer's unique name in its model.
    fn name(&self) -> &str;
    fn set_name(&mut self, name: String);
    /// Whether the optimizer updates this layer's weights.
    fn trainable(&self) -> bool;
    /// Freezes or unfreezes the layer; wrappers and nested models pass it on to
    /// every layer inside, as Keras's `layer.trainable = ...` does.
    fn set_trainable(&mut self, trainable: bool);
    /// Keras-style arguments (without `name` and `trainable`, which the model writes).
    fn config(&self) -> serde_json::Value;
    /// Checks the inputs, declares weights on first call, and returns the output spec.
    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec>;
    /// Every weight, in `forward` order (a wrapper's come from the layers it holds).
    fn weights(&self) -> Vec<&Weight>;
    fn weights_mut(&mut self) -> Vec<&mut Weight>;
    /// Key and trainability of each weight of `weights()`, in the same order.
    /// Default: the weight's name, trainable if both the layer and the weight are.
    fn weight_paths(&self) -> Vec<WeightPath> {
        let on = self.trainable();
        self.weights().iter().map(|w| WeightPath { path: w.name.clone(), trainable: on && w.trainable }).collect()
    }
    /// Draws the weights from their initialisers. A nested model keeps the
    /// weights it already has (drawn when it was built, or loaded), as a Keras
    /// model used as a layer does.
    fn init_weights(&mut self, rng: &mut Rng) {
        for w in self.weights_mut() {
            let shape = w.value.shape().to_vec();
            w.value = w.initializer.init(&shape, rng);
        }
    }
    /// Whether a training-mode forward pass depends on the whole batch at once
    /// (BatchNormalization's batch statistics), so the batch must not be split
    /// into shards that run separately.
    fn uses_batch_statistics(&self) -> bool {
        false
    }
    /// Records the layer's ops on `tape`.
    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], ctx: &mut CallContext<'_>) -> Result<Value>;
    /// A boxed copy (layers are cloned when models are copied to worker threads).
    fn box_clone(&self) -> Box<dyn Layer>;
    /// The concrete layer, for the model's inference fusions (`model/token_tables.rs`).
    fn as_any(&self) -> &dyn std::any::Any;
}

impl Clone for Box<dyn Layer> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}

/// Name and trainable flag shared by all layers.
#[derive(Clone, Debug)]
pub struct LayerBase {
    pub name: String,
    pub trainable: bool,
    pub weights: Vec<Weight>,
}

impl Default for LayerBase {
    fn default() -> Self {
        LayerBase { name: String::new(), trainable: true, weights: vec![] }
    }
}

/// Implements the bookkeeping methods of [`Layer`] through a `base: LayerBase` field.
macro_rules! layer_base_methods {
    () => {
        fn name(&self) -> &str {
            &self.base.name
        }
        fn set_name(&mut self, name: String) {
            self.base.name = name;
        }
        fn trainable(&self) -> bool {
            self.base.trainable
        }
        fn set_trainable(&mut self, trainable: bool) {
            self.base.trainable = trainable;
        }
        fn weights(&self) -> Vec<&$crate::layers::Weight> {
            self.base.weights.iter().collect()
        }
        fn weights_mut(&mut self) -> Vec<&mut $crate::layers::Weight> {
            self.base.weights.iter_mut().collect()
        }
        fn box_clone(&self) -> Box<dyn $crate::layers::Layer> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use layer_base_methods;

/// Error for an input a layer cannot take.
pub(crate) fn bad_input(layer: &dyn Layer, detail: &str, expected: impl Into<String>, got: &[usize]) -> OpsError {
    OpsError::LayerInput {
        layer: layer.name().to_string(),
        class: layer.class_name().to_string(),
        detail: detail.to_string(),
        expected: expected.into(),
        got: got.to_vec(),
    }
}

/// Checks the number of inputs of a call.
pub(crate) fn expect_inputs(layer: &dyn Layer, inputs: &[TensorSpec], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(bad_input(layer, &format!("called on {} inputs", inputs.len()), format!("{n} input(s)"), &[]));
    }
    Ok(())
}

/// Declares weights on the first build; on later builds checks they still fit.
pub(crate) fn declare_or_check(layer_name: &str, class: &str, base: &mut LayerBase, wanted: Vec<Weight>) -> Result<()> {
    if base.weights.is_empty() {
        base.weights = wanted;
        return Ok(());
    }
    for (have, want) in base.weights.iter().zip(&wanted) {
        if have.value.shape() != want.value.shape() {
            return Err(OpsError::LayerInput {
                layer: layer_name.into(),
                class: class.into(),
                detail: format!("shared layer called on an input that needs weight '{}' of another shape", want.name),
                expected: format!("{:?}", have.value.shape()),
                got: want.value.shape().to_vec(),
            });
        }
    }
    Ok(())
}

/// Reads a layer config with serde, naming the layer and key on error.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(class: &str, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| OpsError::Config(format!("{class} config: {e}")))
}

/// `LSTM` -> `lstm`, `GlobalAveragePooling2D` -> `global_average_pooling2d`.
pub(crate) fn snake(class: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = class.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase()
            && i > 0
            && (chars[i - 1].is_lowercase() || chars.get(i + 1).is_some_and(|n| n.is_lowercase()))
        {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}
