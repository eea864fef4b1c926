//! `Dropout(rate)`: in training, zeroes each element with probability `rate`
//! and scales the rest by `1 / (1 - rate)`; identity in inference.
//! Shapes: unchanged; the mask passes through.

use super::{expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value};
use crate::autodiff::{self, Tape, Var};
use crate::error::{OpsError, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Keras arguments of Dropout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutConfig {
    pub rate: f32,
}

/// Random zeroing of activations during training.
#[derive(Clone, Debug)]
pub struct Dropout {
    base: LayerBase,
    cfg: DropoutConfig,
}

impl Dropout {
    pub fn new(rate: f32) -> Self {
        Dropout { base: LayerBase::default(), cfg: DropoutConfig { rate } }
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        Ok(Dropout { base: LayerBase::default(), cfg: parse_config("Dropout", v)? })
    }
}

impl Layer for Dropout {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Dropout"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        if !(0.0..1.0).contains(&self.cfg.rate) {
            return Err(OpsError::Config(format!(
                "Dropout '{}': rate must be in [0, 1), got {}",
                self.name(),
                self.cfg.rate
            )));
        }
        Ok(inputs[0].clone())
    }

    fn forward(&self, tape: &mut Tape, _weights: &[Var], inputs: &[Value], ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        if !ctx.training || self.cfg.rate == 0.0 {
            return Ok(inputs[0].clone());
        }
        let keep = 1.0 - self.cfg.rate;
        let scale: Vec<f32> =
            (0..tape.value(x).len()).map(|_| if ctx.rng.uniform(0.0, 1.0) < keep { 1.0 / keep } else { 0.0 }).collect();
        let y = autodiff::dropout(tape, x, Arc::new(scale))?;
        Ok(Value::Float { var: y, mask })
    }
}
