//! `Activation(activation)`: applies an activation by Keras name (`relu`,
//! `sigmoid`, `tanh`, `softmax`, `gelu`, `linear`) as a layer of its own, as
//! Keras applications do after a BatchNormalization (InceptionV3's
//! `conv2d_bn` blocks). The op and its derivative live in
//! `autodiff::activation`, shared with Dense and Conv2D.
//!
//! Shapes: unchanged, `[B, ...]`; softmax runs over the last axis.

use super::{
    bad_input, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value,
};
use crate::autodiff::{self, Tape, Var};
use crate::backend;
use crate::error::Result;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of Activation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    pub activation: String,
}

/// An elementwise activation (or last-axis softmax) without weights.
#[derive(Clone, Debug)]
pub struct Activation {
    base: LayerBase,
    cfg: ActivationConfig,
    act: backend::Activation,
}

impl Activation {
    /// An activation by Keras name; an unknown name fails at build with the
    /// list of known names.
    pub fn new(activation: &str) -> Self {
        Activation {
            base: LayerBase::default(),
            cfg: ActivationConfig { activation: activation.to_string() },
            act: backend::Activation::Linear,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: ActivationConfig = parse_config("Activation", v)?;
        let act = backend::Activation::from_name(&cfg.activation)?;
        Ok(Activation { base: LayerBase::default(), cfg, act })
    }
}

impl Layer for Activation {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Activation"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 {
            return Err(bad_input(self, "needs float input", "float32 [batch, ...]", &x.shape));
        }
        self.act = backend::Activation::from_name(&self.cfg.activation)?;
        Ok(x.clone())
    }

    fn forward(&self, tape: &mut Tape, _w: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        Ok(Value::Float { var: autodiff::activation(tape, x, self.act)?, mask })
    }
}
