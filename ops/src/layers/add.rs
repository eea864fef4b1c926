//! `Add()`: elementwise sum of inputs of one shape.

use super::{bad_input, layer_base_methods, CallContext, Layer, LayerBase, TensorSpec, Value};
use crate::autodiff::{self, Tape, Var};
use crate::error::{OpsError, Result};

/// Elementwise sum.
#[derive(Clone, Debug, Default)]
pub struct Add {
    base: LayerBase,
}

impl Add {
    pub fn new() -> Self {
        Add::default()
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        if v.as_object().is_some_and(|o| !o.is_empty()) {
            return Err(OpsError::Config(format!("Add takes no arguments, got {v}")));
        }
        Ok(Add::default())
    }
}

impl Layer for Add {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Add"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        if inputs.len() < 2 {
            return Err(bad_input(self, "needs at least two inputs", "2 or more inputs", &[]));
        }
        for x in &inputs[1..] {
            if x.shape != inputs[0].shape || x.dtype != inputs[0].dtype {
                return Err(bad_input(self, "inputs differ in shape", format!("{:?}", inputs[0].shape), &x.shape));
            }
        }
        Ok(TensorSpec { masked: false, ..inputs[0].clone() })
    }

    fn forward(
        &self,
        tape: &mut Tape,
        _weights: &[Var],
        inputs: &[Value],
        _ctx: &mut CallContext<'_>,
    ) -> Result<Value> {
        let mut acc = inputs[0].float(self.name(), self.class_name())?.0;
        for v in &inputs[1..] {
            let x = v.float(self.name(), self.class_name())?.0;
            acc = autodiff::add(tape, acc, x)?;
        }
        Ok(Value::Float { var: acc, mask: None })
    }
}
