//! `ZeroPadding2D(padding=(1, 1))`: zero rows above and below, zero columns
//! left and right of each image. `padding` is an int (all four sides), a pair
//! `(rows, cols)` (symmetric), or `((top, bottom), (left, right))`, as in Keras;
//! it is written back in the last form.
//!
//! Shapes: `[B, H, W, C]` -> `[B, top + H + bottom, left + W + right, C]`.

use super::args::{channels_last, check_channels_last};
use super::{
    bad_input, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value,
};
use crate::autodiff::{self, Tape, Var};
use crate::error::Result;
use crate::tensor::DType;
use serde::{Deserialize, Deserializer, Serialize};

/// `((top, bottom), (left, right))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Padding2d(pub (usize, usize), pub (usize, usize));

impl From<usize> for Padding2d {
    fn from(p: usize) -> Self {
        Padding2d((p, p), (p, p))
    }
}

impl From<(usize, usize)> for Padding2d {
    fn from((h, w): (usize, usize)) -> Self {
        Padding2d((h, h), (w, w))
    }
}

impl From<((usize, usize), (usize, usize))> for Padding2d {
    fn from((rows, cols): ((usize, usize), (usize, usize))) -> Self {
        Padding2d(rows, cols)
    }
}

impl<'de> Deserialize<'de> for Padding2d {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            All(usize),
            Symmetric([usize; 2]),
            Full([[usize; 2]; 2]),
        }
        Ok(match Any::deserialize(d)? {
            Any::All(p) => p.into(),
            Any::Symmetric([h, w]) => (h, w).into(),
            Any::Full([[t, b], [l, r]]) => Padding2d((t, b), (l, r)),
        })
    }
}

fn one() -> Padding2d {
    1.into()
}

/// Keras arguments of ZeroPadding2D.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroPadding2DConfig {
    #[serde(default = "one")]
    pub padding: Padding2d,
    #[serde(default = "channels_last")]
    pub data_format: String,
}

/// Pads images with zeros.
#[derive(Clone, Debug)]
pub struct ZeroPadding2D {
    base: LayerBase,
    cfg: ZeroPadding2DConfig,
}

impl ZeroPadding2D {
    pub fn new(padding: impl Into<Padding2d>) -> Self {
        ZeroPadding2D {
            base: LayerBase::default(),
            cfg: ZeroPadding2DConfig { padding: padding.into(), data_format: channels_last() },
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let me = ZeroPadding2D { base: LayerBase::default(), cfg: parse_config("ZeroPadding2D", v)? };
        check_channels_last("ZeroPadding2D", &me.cfg.data_format)?;
        Ok(me)
    }
}

impl Layer for ZeroPadding2D {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "ZeroPadding2D"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        check_channels_last("ZeroPadding2D", &self.cfg.data_format)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 || x.shape.len() != 3 {
            return Err(bad_input(self, "needs float images", "float32 [batch, height, width, channels]", &x.shape));
        }
        let Padding2d((t, b), (l, r)) = self.cfg.padding;
        Ok(TensorSpec::f32(&[t + x.shape[0] + b, l + x.shape[1] + r, x.shape[2]]))
    }

    fn forward(&self, tape: &mut Tape, _w: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let Padding2d(rows, cols) = self.cfg.padding;
        Ok(Value::Float { var: autodiff::zero_pad2d(tape, x, rows, cols)?, mask: None })
    }
}
