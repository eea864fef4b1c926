//! Pooling layers, channels-last:
//! `MaxPooling2D` / `AveragePooling2D(pool_size=(2, 2), strides=pool_size,
//! padding='valid')` and `GlobalMaxPooling2D` / `GlobalAveragePooling2D(keepdims=False)`.
//! With `'same'` padding, padded cells are ignored: an average divides by the
//! number of valid cells of its window, as Keras (TensorFlow) does.
//!
//! Shapes: windowed `[B, H, W, C]` -> `[B, OH, OW, C]`; global `[B, H, W, C]`
//! -> `[B, C]` (`[B, 1, 1, C]` with `keepdims`).

use super::args::{channels_last, check_channels_last, valid, Padding, Pair};
use super::{
    bad_input, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase, TensorSpec, Value,
};
use crate::autodiff::{self, PoolKind, Tape, Var, Window2d};
use crate::error::Result;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// Keras arguments of MaxPooling2D and AveragePooling2D.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pooling2DConfig {
    #[serde(default = "two")]
    pub pool_size: Pair,
    /// `None` (Keras's default): the pool size.
    #[serde(default)]
    pub strides: Option<Pair>,
    #[serde(default = "valid")]
    pub padding: Padding,
    #[serde(default = "channels_last")]
    pub data_format: String,
}

fn two() -> Pair {
    Pair(2, 2)
}

/// Windowed max or average pooling.
#[derive(Clone, Debug)]
pub struct Pooling2D {
    base: LayerBase,
    kind: PoolKind,
    cfg: Pooling2DConfig,
}

/// `MaxPooling2D`: a [`Pooling2D`] taking maxima.
pub struct MaxPooling2D;

/// `AveragePooling2D`: a [`Pooling2D`] taking means.
pub struct AveragePooling2D;

impl MaxPooling2D {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(pool_size: impl Into<Pair>) -> Pooling2D {
        Pooling2D::new(PoolKind::Max, pool_size)
    }
}

impl AveragePooling2D {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(pool_size: impl Into<Pair>) -> Pooling2D {
        Pooling2D::new(PoolKind::Average, pool_size)
    }
}

impl Pooling2D {
    pub fn new(kind: PoolKind, pool_size: impl Into<Pair>) -> Self {
        Pooling2D {
            base: LayerBase::default(),
            kind,
            cfg: Pooling2DConfig {
                pool_size: pool_size.into(),
                strides: None,
                padding: Padding::Valid,
                data_format: channels_last(),
            },
        }
    }

    pub fn strides(mut self, strides: impl Into<Pair>) -> Self {
        self.cfg.strides = Some(strides.into());
        self
    }

    pub fn padding(mut self, padding: Padding) -> Self {
        self.cfg.padding = padding;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(kind: PoolKind, v: &serde_json::Value) -> Result<Self> {
        let me = Pooling2D { base: LayerBase::default(), kind, cfg: parse_config(class(kind), v)? };
        check_channels_last(class(kind), &me.cfg.data_format)?;
        Ok(me)
    }

    fn strides_or_pool(&self) -> (usize, usize) {
        self.cfg.strides.unwrap_or(self.cfg.pool_size).tuple()
    }
}

fn class(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Max => "MaxPooling2D",
        PoolKind::Average => "AveragePooling2D",
    }
}

fn check_images(layer: &dyn Layer, x: &TensorSpec) -> Result<()> {
    if x.dtype != DType::F32 || x.shape.len() != 3 {
        return Err(bad_input(layer, "needs float images", "float32 [batch, height, width, channels]", &x.shape));
    }
    Ok(())
}

impl Layer for Pooling2D {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        class(self.kind)
    }

    fn config(&self) -> serde_json::Value {
        let mut cfg = self.cfg.clone();
        cfg.strides = Some(self.strides_or_pool().into());
        serde_json::to_value(&cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        check_channels_last(class(self.kind), &self.cfg.data_format)?;
        let x = &inputs[0];
        check_images(self, x)?;
        let win = Window2d::new(
            &self.base.name,
            (x.shape[0], x.shape[1]),
            self.cfg.pool_size.tuple(),
            self.strides_or_pool(),
            (1, 1),
            self.cfg.padding,
        )
        .map_err(|e| bad_input(self, &e.to_string(), "an input at least as large as the pool", &x.shape))?;
        Ok(TensorSpec::f32(&[win.out_h, win.out_w, x.shape[2]]))
    }

    fn forward(&self, tape: &mut Tape, _w: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let y =
            autodiff::pool2d(tape, x, self.kind, self.cfg.pool_size.tuple(), self.strides_or_pool(), self.cfg.padding)?;
        Ok(Value::Float { var: y, mask: None })
    }
}

/// Keras arguments of GlobalMaxPooling2D and GlobalAveragePooling2D.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPooling2DConfig {
    #[serde(default = "channels_last")]
    pub data_format: String,
    #[serde(default)]
    pub keepdims: bool,
}

/// Global max or average pooling over height and width.
#[derive(Clone, Debug)]
pub struct GlobalPooling2D {
    base: LayerBase,
    kind: PoolKind,
    cfg: GlobalPooling2DConfig,
}

/// `GlobalAveragePooling2D`: a [`GlobalPooling2D`] taking means.
pub struct GlobalAveragePooling2D;

/// `GlobalMaxPooling2D`: a [`GlobalPooling2D`] taking maxima.
pub struct GlobalMaxPooling2D;

impl GlobalAveragePooling2D {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> GlobalPooling2D {
        GlobalPooling2D::new(PoolKind::Average)
    }
}

impl GlobalMaxPooling2D {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> GlobalPooling2D {
        GlobalPooling2D::new(PoolKind::Max)
    }
}

fn global_class(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Max => "GlobalMaxPooling2D",
        PoolKind::Average => "GlobalAveragePooling2D",
    }
}

impl GlobalPooling2D {
    pub fn new(kind: PoolKind) -> Self {
        GlobalPooling2D {
            base: LayerBase::default(),
            kind,
            cfg: GlobalPooling2DConfig { data_format: channels_last(), keepdims: false },
        }
    }

    pub fn keepdims(mut self, keepdims: bool) -> Self {
        self.cfg.keepdims = keepdims;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(kind: PoolKind, v: &serde_json::Value) -> Result<Self> {
        let me = GlobalPooling2D { base: LayerBase::default(), kind, cfg: parse_config(global_class(kind), v)? };
        check_channels_last(global_class(kind), &me.cfg.data_format)?;
        Ok(me)
    }
}

impl Layer for GlobalPooling2D {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        global_class(self.kind)
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        check_channels_last(global_class(self.kind), &self.cfg.data_format)?;
        let x = &inputs[0];
        check_images(self, x)?;
        let c = x.shape[2];
        let shape = if self.cfg.keepdims { vec![1, 1, c] } else { vec![c] };
        Ok(TensorSpec::f32(&shape))
    }

    fn forward(&self, tape: &mut Tape, _w: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, _) = inputs[0].float(self.name(), self.class_name())?;
        let y = autodiff::global_pool2d(tape, x, self.kind, self.cfg.keepdims)?;
        Ok(Value::Float { var: y, mask: None })
    }
}
