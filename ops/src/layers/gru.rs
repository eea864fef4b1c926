//! `GRU(units, return_sequences)` as Keras with `reset_after=True`:
//! `kernel [in, 3u]`, `recurrent_kernel [u, 3u]`, `bias [2, 3u]`, gate order z, r, h.
//!
//! Shapes: `[B, T, in]` -> `[B, u]`, or `[B, T, u]` with `return_sequences`.

use super::dense::{glorot, yes, zeros};
use super::lstm::{check_activations, orthogonal, sigmoid, tanh};
use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    TensorSpec, Value, Weight,
};
use crate::autodiff::{self, GruOptions, Tape, Var};
use crate::error::{OpsError, Result};
use crate::init::Initializer;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of GRU.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GruConfig {
    pub units: usize,
    #[serde(default = "tanh")]
    pub activation: String,
    #[serde(default = "sigmoid")]
    pub recurrent_activation: String,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default)]
    pub return_sequences: bool,
    #[serde(default = "yes")]
    pub reset_after: bool,
    #[serde(default = "glorot")]
    pub kernel_initializer: String,
    #[serde(default = "orthogonal")]
    pub recurrent_initializer: String,
    #[serde(default = "zeros")]
    pub bias_initializer: String,
}

/// Gated recurrent unit over a sequence.
#[derive(Clone, Debug)]
pub struct Gru {
    base: LayerBase,
    cfg: GruConfig,
}

impl Gru {
    pub fn new(units: usize) -> Self {
        Gru {
            base: LayerBase::default(),
            cfg: GruConfig {
                units,
                activation: tanh(),
                recurrent_activation: sigmoid(),
                use_bias: true,
                return_sequences: false,
                reset_after: true,
                kernel_initializer: glorot(),
                recurrent_initializer: orthogonal(),
                bias_initializer: zeros(),
            },
        }
    }

    pub fn return_sequences(mut self, on: bool) -> Self {
        self.cfg.return_sequences = on;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: GruConfig = parse_config("GRU", v)?;
        check_activations("GRU", &cfg.activation, &cfg.recurrent_activation)?;
        if !cfg.reset_after {
            return Err(OpsError::Config("GRU: only reset_after=true (the Keras default) is supported".into()));
        }
        Ok(Gru { base: LayerBase::default(), cfg })
    }
}

impl Layer for Gru {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "GRU"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 || x.shape.len() != 2 {
            return Err(bad_input(self, "needs a float sequence", "float32 [batch, time, features]", &x.shape));
        }
        let (t, inp, u) = (x.shape[0], x.shape[1], self.cfg.units);
        let mut w = vec![
            Weight::declare("kernel", &[inp, 3 * u], Initializer::from_name(&self.cfg.kernel_initializer)?),
            Weight::declare("recurrent_kernel", &[u, 3 * u], Initializer::from_name(&self.cfg.recurrent_initializer)?),
        ];
        if self.cfg.use_bias {
            w.push(Weight::declare("bias", &[2, 3 * u], Initializer::from_name(&self.cfg.bias_initializer)?));
        }
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        Ok(if self.cfg.return_sequences {
            TensorSpec { shape: vec![t, u], dtype: DType::F32, masked: x.masked }
        } else {
            TensorSpec { shape: vec![u], dtype: DType::F32, masked: false }
        })
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        let opts = GruOptions { return_sequences: self.cfg.return_sequences, mask: mask.clone() };
        let y = autodiff::gru(tape, x, weights[0], weights[1], weights.get(2).copied(), opts)?;
        Ok(Value::Float { var: y, mask: if self.cfg.return_sequences { mask } else { None } })
    }
}
