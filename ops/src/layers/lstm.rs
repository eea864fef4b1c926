//! `LSTM(units, return_sequences)`, Keras layout: `kernel [in, 4u]`,
//! `recurrent_kernel [u, 4u]`, `bias [4u]`, gate order i, f, c, o, forget
//! bias initialised to 1, `tanh` / `sigmoid` activations.
//!
//! Shapes: `[B, T, in]` -> `[B, u]`, or `[B, T, u]` with `return_sequences`
//! (which keeps the input's mask). A mask from `Embedding(mask_zero=True)`
//! skips padded steps.

use super::dense::{glorot, yes, zeros};
use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    TensorSpec, Value, Weight,
};
use crate::autodiff::{self, LstmOptions, Mask, Tape, Var};
use crate::error::{OpsError, Result};
use crate::init::Initializer;
use crate::tensor::{DType, IntTensor, Tensor};
use serde::{Deserialize, Serialize};

/// Keras arguments of LSTM (the activations are fixed to Keras's defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmConfig {
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
    pub unit_forget_bias: bool,
    #[serde(default = "glorot")]
    pub kernel_initializer: String,
    #[serde(default = "orthogonal")]
    pub recurrent_initializer: String,
    #[serde(default = "zeros")]
    pub bias_initializer: String,
}

pub(crate) fn tanh() -> String {
    "tanh".into()
}
pub(crate) fn sigmoid() -> String {
    "sigmoid".into()
}
pub(crate) fn orthogonal() -> String {
    "orthogonal".into()
}

/// Long short-term memory over a sequence.
#[derive(Clone, Debug)]
pub struct Lstm {
    base: LayerBase,
    cfg: LstmConfig,
}

impl Lstm {
    pub fn new(units: usize) -> Self {
        Lstm {
            base: LayerBase::default(),
            cfg: LstmConfig {
                units,
                activation: tanh(),
                recurrent_activation: sigmoid(),
                use_bias: true,
                return_sequences: false,
                unit_forget_bias: true,
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

    /// Inference over token ids whose gate inputs are rows of `table` (see
    /// [`autodiff::lstm_over_projected_tokens`]); `weights` as for `forward`.
    pub(crate) fn forward_over_projected_tokens(
        &self,
        tape: &mut Tape,
        weights: &[Var],
        table: &Tensor,
        (ids, mask): (&IntTensor, Option<Mask>),
        embedding_layer: &str,
        ctx: &CallContext<'_>,
    ) -> Result<Value> {
        let packed = ctx.packed.clone();
        let opts = LstmOptions { return_sequences: self.cfg.return_sequences, mask: mask.clone(), packed };
        let y = autodiff::lstm_over_projected_tokens(tape, table, ids, weights[1], opts, embedding_layer)?;
        Ok(Value::Float { var: y, mask: if self.cfg.return_sequences { mask } else { None } })
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: LstmConfig = parse_config("LSTM", v)?;
        check_activations("LSTM", &cfg.activation, &cfg.recurrent_activation)?;
        Ok(Lstm { base: LayerBase::default(), cfg })
    }
}

pub(crate) fn check_activations(class: &str, act: &str, rec: &str) -> Result<()> {
    if act != "tanh" || rec != "sigmoid" {
        return Err(OpsError::Config(format!(
            "{class}: only activation='tanh' with recurrent_activation='sigmoid' is supported, got '{act}' / '{rec}'"
        )));
    }
    Ok(())
}

impl Layer for Lstm {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "LSTM"
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
            Weight::declare("kernel", &[inp, 4 * u], Initializer::from_name(&self.cfg.kernel_initializer)?),
            Weight::declare("recurrent_kernel", &[u, 4 * u], Initializer::from_name(&self.cfg.recurrent_initializer)?),
        ];
        if self.cfg.use_bias {
            let init = if self.cfg.unit_forget_bias {
                Initializer::UnitForgetBias
            } else {
                Initializer::from_name(&self.cfg.bias_initializer)?
            };
            w.push(Weight::declare("bias", &[4 * u], init));
        }
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        Ok(if self.cfg.return_sequences {
            TensorSpec { shape: vec![t, u], dtype: DType::F32, masked: x.masked }
        } else {
            TensorSpec { shape: vec![u], dtype: DType::F32, masked: false }
        })
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        let opts =
            LstmOptions { return_sequences: self.cfg.return_sequences, mask: mask.clone(), packed: ctx.packed.clone() };
        let y = autodiff::lstm(tape, x, weights[0], weights[1], weights.get(2).copied(), opts)?;
        Ok(Value::Float { var: y, mask: if self.cfg.return_sequences { mask } else { None } })
    }
}
