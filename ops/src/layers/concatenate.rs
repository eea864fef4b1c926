//! `Concatenate(axis=-1)`: joins its inputs on the last axis.
//! Shapes: `[B, ..., d_k]` for each input -> `[B, ..., sum d_k]`.

use super::{bad_input, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value};
use crate::autodiff::{self, Tape, Var};
use crate::error::{OpsError, Result};
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of Concatenate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatenateConfig {
    #[serde(default = "last")]
    pub axis: i64,
}

fn last() -> i64 {
    -1
}

/// Concatenation of several inputs.
#[derive(Clone, Debug)]
pub struct Concatenate {
    base: LayerBase,
    cfg: ConcatenateConfig,
}

impl Default for Concatenate {
    fn default() -> Self {
        Self::new()
    }
}

impl Concatenate {
    pub fn new() -> Self {
        Concatenate { base: LayerBase::default(), cfg: ConcatenateConfig { axis: -1 } }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: ConcatenateConfig = parse_config("Concatenate", v)?;
        if cfg.axis != -1 {
            return Err(OpsError::Config(format!("Concatenate: only axis=-1 is supported, got {}", cfg.axis)));
        }
        Ok(Concatenate { base: LayerBase::default(), cfg })
    }
}

impl Layer for Concatenate {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Concatenate"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        if inputs.len() < 2 {
            return Err(bad_input(self, "needs at least two inputs", "2 or more inputs", &[]));
        }
        let first = &inputs[0];
        let lead = &first.shape[..first.shape.len().saturating_sub(1)];
        let mut total = 0;
        for x in inputs {
            if x.dtype != DType::F32 || x.shape.is_empty() || &x.shape[..x.shape.len() - 1] != lead {
                let expected = format!("float32 inputs sharing the leading dims {lead:?}");
                return Err(bad_input(self, "inputs differ in more than the last axis", expected, &x.shape));
            }
            total += x.shape[x.shape.len() - 1];
        }
        let mut shape = lead.to_vec();
        shape.push(total);
        Ok(TensorSpec { shape, dtype: DType::F32, masked: false })
    }

    fn forward(
        &self,
        tape: &mut Tape,
        _weights: &[Var],
        inputs: &[Value],
        _ctx: &mut CallContext<'_>,
    ) -> Result<Value> {
        let vars =
            inputs.iter().map(|v| v.float(self.name(), self.class_name()).map(|p| p.0)).collect::<Result<Vec<_>>>()?;
        Ok(Value::Float { var: autodiff::concat_last(tape, &vars)?, mask: None })
    }
}
