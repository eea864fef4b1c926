//! `Reshape(target_shape)`: `[B, ...]` -> `[B, *target_shape]`; one entry may be -1.

use super::{
    bad_input, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value,
};
use crate::autodiff::{self, Tape, Var};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Keras arguments of Reshape.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshapeConfig {
    pub target_shape: Vec<i64>,
}

/// Changes the non-batch shape.
#[derive(Clone, Debug)]
pub struct Reshape {
    base: LayerBase,
    cfg: ReshapeConfig,
    resolved: Vec<usize>,
}

impl Reshape {
    pub fn new(target_shape: &[i64]) -> Self {
        Reshape {
            base: LayerBase::default(),
            cfg: ReshapeConfig { target_shape: target_shape.to_vec() },
            resolved: vec![],
        }
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        Ok(Reshape { base: LayerBase::default(), cfg: parse_config("Reshape", v)?, resolved: vec![] })
    }
}

impl Layer for Reshape {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Reshape"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let total: usize = inputs[0].shape.iter().product();
        let known: i64 = self.cfg.target_shape.iter().filter(|&&d| d != -1).product();
        let unknown = self.cfg.target_shape.iter().filter(|&&d| d == -1).count();
        let bad = |me: &Self| {
            bad_input(
                me,
                "target_shape does not fit the input",
                format!("a shape with {total} elements, got target {:?}", me.cfg.target_shape),
                &inputs[0].shape,
            )
        };
        if unknown > 1 || known <= 0 || self.cfg.target_shape.iter().any(|&d| d == 0 || d < -1) {
            return Err(bad(self));
        }
        let fill = if unknown == 1 {
            if total as i64 % known != 0 {
                return Err(bad(self));
            }
            total as i64 / known
        } else {
            if known as usize != total {
                return Err(bad(self));
            }
            0
        };
        self.resolved =
            self.cfg.target_shape.iter().map(|&d| if d == -1 { fill as usize } else { d as usize }).collect();
        Ok(TensorSpec { shape: self.resolved.clone(), dtype: inputs[0].dtype, masked: false })
    }

    fn forward(
        &self,
        tape: &mut Tape,
        _weights: &[Var],
        inputs: &[Value],
        _ctx: &mut CallContext<'_>,
    ) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let mut shape = vec![tape.shape(x)[0]];
        shape.extend(&self.resolved);
        Ok(Value::Float { var: autodiff::reshape(tape, x, &shape)?, mask: None })
    }
}
