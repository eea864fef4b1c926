//! `Conv2D(filters, kernel_size, strides, padding, dilation_rate, activation,
//! use_bias)`: 2-D convolution, channels-last, Keras layout: kernel
//! `[kh, kw, in, filters]`, bias `[filters]`; `'same'` padding as TensorFlow
//! computes it (see `autodiff/window.rs`).
//!
//! Shapes: `[B, H, W, in]` -> `[B, OH, OW, filters]`, with `OH = ceil(H / sh)`
//! for `'same'` and `(H - (kh - 1) * dh - 1) / sh + 1` for `'valid'`.

use super::args::{
    channels_last, check_channels_last, check_strides_dilation, conv_builder_methods, one, valid, Padding, Pair,
};
use super::dense::{glorot, linear, yes, zeros};
use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    TensorSpec, Value, Weight,
};
use crate::autodiff::{self, Tape, Var, Window2d};
use crate::backend::Activation;
use crate::error::{OpsError, Result};
use crate::init::Initializer;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of Conv2D.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2DConfig {
    pub filters: usize,
    pub kernel_size: Pair,
    #[serde(default = "one")]
    pub strides: Pair,
    #[serde(default = "valid")]
    pub padding: Padding,
    #[serde(default = "channels_last")]
    pub data_format: String,
    #[serde(default = "one")]
    pub dilation_rate: Pair,
    #[serde(default = "one_group")]
    pub groups: usize,
    #[serde(default = "linear")]
    pub activation: String,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default = "glorot")]
    pub kernel_initializer: String,
    #[serde(default = "zeros")]
    pub bias_initializer: String,
}

fn one_group() -> usize {
    1
}

/// A 2-D convolution layer.
#[derive(Clone, Debug)]
pub struct Conv2D {
    base: LayerBase,
    cfg: Conv2DConfig,
    act: Activation,
}

impl Conv2D {
    pub fn new(filters: usize, kernel_size: impl Into<Pair>) -> Self {
        Conv2D {
            base: LayerBase::default(),
            cfg: Conv2DConfig {
                filters,
                kernel_size: kernel_size.into(),
                strides: one(),
                padding: Padding::Valid,
                data_format: channels_last(),
                dilation_rate: one(),
                groups: 1,
                activation: linear(),
                use_bias: true,
                kernel_initializer: glorot(),
                bias_initializer: zeros(),
            },
            act: Activation::Linear,
        }
    }

    conv_builder_methods!();

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: Conv2DConfig = parse_config("Conv2D", v)?;
        let act = Activation::from_name(&cfg.activation)?;
        check_config(&cfg)?;
        Ok(Conv2D { base: LayerBase::default(), cfg, act })
    }
}

fn check_config(cfg: &Conv2DConfig) -> Result<()> {
    check_channels_last("Conv2D", &cfg.data_format)?;
    check_strides_dilation("Conv2D", cfg.strides, cfg.dilation_rate)?;
    if cfg.groups != 1 {
        return Err(OpsError::Config(format!("Conv2D: groups={} is not supported (only 1)", cfg.groups)));
    }
    if cfg.filters == 0 {
        return Err(OpsError::Config("Conv2D: filters must be positive".into()));
    }
    Ok(())
}

impl Layer for Conv2D {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Conv2D"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        check_config(&self.cfg)?;
        self.act = Activation::from_name(&self.cfg.activation)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 || x.shape.len() != 3 {
            return Err(bad_input(self, "needs float images", "float32 [batch, height, width, channels]", &x.shape));
        }
        let o = self.options();
        let win = Window2d::new(
            &self.base.name,
            (x.shape[0], x.shape[1]),
            self.cfg.kernel_size.tuple(),
            o.strides,
            o.dilation,
            o.padding,
        )
        .map_err(|e| bad_input(self, &e.to_string(), "an input at least as large as the kernel's span", &x.shape))?;
        let (kh, kw) = self.cfg.kernel_size.tuple();
        let mut w = vec![Weight::declare(
            "kernel",
            &[kh, kw, x.shape[2], self.cfg.filters],
            Initializer::from_name(&self.cfg.kernel_initializer)?,
        )];
        if self.cfg.use_bias {
            w.push(Weight::declare("bias", &[self.cfg.filters], Initializer::from_name(&self.cfg.bias_initializer)?));
        }
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        Ok(TensorSpec::f32(&[win.out_h, win.out_w, self.cfg.filters]))
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let y = autodiff::conv2d(tape, x, weights[0], weights.get(1).copied(), self.options(), self.act)?;
        Ok(Value::Float { var: y, mask: None })
    }
}
