//! `DepthwiseConv2D(kernel_size, strides, padding, depth_multiplier,
//! dilation_rate, activation, use_bias)`: each input channel convolved with
//! its own `depth_multiplier` filters. Keras 3 layout and names: `kernel`
//! `[kh, kw, in, depth_multiplier]`, `bias` `[in * depth_multiplier]` (Keras 2
//! called the kernel `depthwise_kernel`; Keras 3, whose checkpoints we read,
//! calls it `kernel`).
//!
//! Shapes: `[B, H, W, in]` -> `[B, OH, OW, in * depth_multiplier]`, `OH` as
//! for Conv2D.

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

/// Keras arguments of DepthwiseConv2D.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthwiseConv2DConfig {
    pub kernel_size: Pair,
    #[serde(default = "one")]
    pub strides: Pair,
    #[serde(default = "valid")]
    pub padding: Padding,
    #[serde(default = "channels_last")]
    pub data_format: String,
    #[serde(default = "one_multiplier")]
    pub depth_multiplier: usize,
    #[serde(default = "one")]
    pub dilation_rate: Pair,
    #[serde(default = "linear")]
    pub activation: String,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default = "glorot")]
    pub depthwise_initializer: String,
    #[serde(default = "zeros")]
    pub bias_initializer: String,
}

fn one_multiplier() -> usize {
    1
}

/// A depthwise 2-D convolution layer.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2D {
    base: LayerBase,
    cfg: DepthwiseConv2DConfig,
    act: Activation,
}

impl DepthwiseConv2D {
    pub fn new(kernel_size: impl Into<Pair>) -> Self {
        DepthwiseConv2D {
            base: LayerBase::default(),
            cfg: DepthwiseConv2DConfig {
                kernel_size: kernel_size.into(),
                strides: one(),
                padding: Padding::Valid,
                data_format: channels_last(),
                depth_multiplier: 1,
                dilation_rate: one(),
                activation: linear(),
                use_bias: true,
                depthwise_initializer: glorot(),
                bias_initializer: zeros(),
            },
            act: Activation::Linear,
        }
    }

    pub fn depth_multiplier(mut self, m: usize) -> Self {
        self.cfg.depth_multiplier = m;
        self
    }

    conv_builder_methods!();

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        let cfg: DepthwiseConv2DConfig = parse_config("DepthwiseConv2D", v)?;
        let act = Activation::from_name(&cfg.activation)?;
        check_config(&cfg)?;
        Ok(DepthwiseConv2D { base: LayerBase::default(), cfg, act })
    }
}

fn check_config(cfg: &DepthwiseConv2DConfig) -> Result<()> {
    check_channels_last("DepthwiseConv2D", &cfg.data_format)?;
    check_strides_dilation("DepthwiseConv2D", cfg.strides, cfg.dilation_rate)?;
    if cfg.depth_multiplier == 0 {
        return Err(OpsError::Config("DepthwiseConv2D: depth_multiplier must be positive".into()));
    }
    Ok(())
}

impl Layer for DepthwiseConv2D {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "DepthwiseConv2D"
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
        let (c, dm) = (x.shape[2], self.cfg.depth_multiplier);
        let mut w =
            vec![Weight::declare("kernel", &[kh, kw, c, dm], Initializer::from_name(&self.cfg.depthwise_initializer)?)];
        if self.cfg.use_bias {
            w.push(Weight::declare("bias", &[c * dm], Initializer::from_name(&self.cfg.bias_initializer)?));
        }
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        Ok(TensorSpec::f32(&[win.out_h, win.out_w, c * dm]))
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let z = autodiff::depthwise_conv2d(tape, x, weights[0], weights.get(1).copied(), self.options())?;
        let y = autodiff::activation(tape, z, self.act)?;
        Ok(Value::Float { var: y, mask: None })
    }
}
