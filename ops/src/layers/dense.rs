//! `Dense(units, activation, use_bias)`: `activation(x · kernel + bias)` on the
//! last axis. Kernel `[in, units]`, bias `[units]`.
//!
//! Shapes: `[B, ..., in]` -> `[B, ..., units]`; a time-step mask passes through.

use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    TensorSpec, Value, Weight,
};
use crate::autodiff::{self, Tape, Var};
use crate::backend::Activation;
use crate::error::Result;
use crate::init::Initializer;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of Dense.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseConfig {
    pub units: usize,
    #[serde(default = "linear")]
    pub activation: String,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default = "glorot")]
    pub kernel_initializer: String,
    #[serde(default = "zeros")]
    pub bias_initializer: String,
}

pub(crate) fn linear() -> String {
    "linear".into()
}
pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn glorot() -> String {
    "glorot_uniform".into()
}
pub(crate) fn zeros() -> String {
    "zeros".into()
}

/// A densely connected layer.
#[derive(Clone, Debug)]
pub struct Dense {
    base: LayerBase,
    cfg: DenseConfig,
    act: Activation,
}

impl Dense {
    pub fn new(units: usize) -> Self {
        Dense {
            base: LayerBase::default(),
            cfg: DenseConfig {
                units,
                activation: linear(),
                use_bias: true,
                kernel_initializer: glorot(),
                bias_initializer: zeros(),
            },
            act: Activation::Linear,
        }
    }

    /// Sets the activation by Keras name; an unknown name fails at build.
    pub fn activation(mut self, name: &str) -> Self {
        self.cfg.activation = name.to_string();
        self
    }

    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.cfg.use_bias = use_bias;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: DenseConfig = parse_config("Dense", v)?;
        let act = Activation::from_name(&cfg.activation)?;
        Ok(Dense { base: LayerBase::default(), cfg, act })
    }
}

impl Layer for Dense {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Dense"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 || x.shape.is_empty() {
            return Err(bad_input(
                self,
                "needs float input with a feature axis",
                "float32 [batch, ..., features]",
                &x.shape,
            ));
        }
        self.act = Activation::from_name(&self.cfg.activation)?;
        let inp = *x.shape.last().expect("non-empty");
        let mut w = vec![Weight::declare(
            "kernel",
            &[inp, self.cfg.units],
            Initializer::from_name(&self.cfg.kernel_initializer)?,
        )];
        if self.cfg.use_bias {
            w.push(Weight::declare("bias", &[self.cfg.units], Initializer::from_name(&self.cfg.bias_initializer)?));
        }
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("non-empty") = self.cfg.units;
        Ok(TensorSpec { shape, dtype: DType::F32, masked: x.masked })
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        let z = autodiff::dense(tape, x, weights[0], weights.get(1).copied())?;
        let y = autodiff::activation(tape, z, self.act)?;
        Ok(Value::Float { var: y, mask })
    }
}
