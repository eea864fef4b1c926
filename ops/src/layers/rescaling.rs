//! `Rescaling(scale, offset=0.0)`: `x * scale + offset`, e.g. `1/255` to turn
//! raw pixels into `[0, 1]`. Takes float32 or uint8 input (a `uint8` model
//! input reaches the layers as f32 values `0..=255`; see `DType::U8`) and
//! outputs float32.
//!
//! Shapes: unchanged.

use super::{
    bad_input, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value,
};
use crate::autodiff::{self, Tape, Var};
use crate::error::Result;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of Rescaling.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RescalingConfig {
    pub scale: f32,
    #[serde(default)]
    pub offset: f32,
}

/// Multiplies by a constant and adds another.
#[derive(Clone, Debug)]
pub struct Rescaling {
    base: LayerBase,
    cfg: RescalingConfig,
}

impl Rescaling {
    pub fn new(scale: f32, offset: f32) -> Self {
        Rescaling { base: LayerBase::default(), cfg: RescalingConfig { scale, offset } }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        Ok(Rescaling { base: LayerBase::default(), cfg: parse_config("Rescaling", v)? })
    }
}

impl Layer for Rescaling {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Rescaling"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::I32 {
            return Err(bad_input(self, "cannot rescale integer ids", "float32 or uint8 input", &x.shape));
        }
        Ok(TensorSpec { shape: x.shape.clone(), dtype: DType::F32, masked: x.masked })
    }

    fn forward(&self, tape: &mut Tape, _w: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        Ok(Value::Float { var: autodiff::scale_shift(tape, x, self.cfg.scale, self.cfg.offset)?, mask })
    }
}
