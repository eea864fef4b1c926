//! `Flatten()`: `[B, d1, d2, ...]` -> `[B, d1 * d2 * ...]`.

use super::{expect_inputs, layer_base_methods, CallContext, Layer, LayerBase, TensorSpec, Value};
use crate::autodiff::{self, Tape, Var};
use crate::error::{OpsError, Result};

/// Collapses all non-batch axes.
#[derive(Clone, Debug, Default)]
pub struct Flatten {
    base: LayerBase,
}

impl Flatten {
    pub fn new() -> Self {
        Flatten::default()
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        if v.as_object().is_some_and(|o| !o.is_empty()) {
            return Err(OpsError::Config(format!("Flatten takes no arguments, got {v}")));
        }
        Ok(Flatten::default())
    }
}

impl Layer for Flatten {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Flatten"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        Ok(TensorSpec { shape: vec![inputs[0].shape.iter().product()], dtype: inputs[0].dtype, masked: false })
    }

    fn forward(
        &self,
        tape: &mut Tape,
        _weights: &[Var],
        inputs: &[Value],
        _ctx: &mut CallContext<'_>,
    ) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let s = tape.shape(x);
        let shape = [s[0], s[1..].iter().product()];
        Ok(Value::Float { var: autodiff::reshape(tape, x, &shape)?, mask: None })
    }
}
