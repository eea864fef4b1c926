//! `BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3, center=True,
//! scale=True)`: per-channel normalisation with Keras weights `gamma`, `beta`
//! (trainable; absent without `scale` / `center`) and `moving_mean`,
//! `moving_variance` (non-trainable, initialised to zeros and ones).
//!
//! Shapes: unchanged, `[B, ..., C]`; statistics are per channel (last axis)
//! over all other axes.
//!
//! As Keras 3 does: in training mode **and** when the layer is trainable, the
//! output is normalised with the batch mean and biased batch variance, the
//! gradient flows through them, and the forward pass reports the state updates
//! `moving = moving * momentum + batch_stat * (1 - momentum)` (biased variance
//! too; Keras 3's `BatchNormalization.call`), which the model writes after the
//! step. Otherwise (inference, or a frozen layer, even while the rest of the
//! model trains) it normalises with the moving statistics and updates nothing.

use super::dense::yes;
use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    StateUpdate, TensorSpec, Value, Weight,
};
use crate::autodiff::{self, BatchNormStats, Tape, Var};
use crate::error::{OpsError, Result};
use crate::init::Initializer;
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Keras arguments of BatchNormalization.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormalizationConfig {
    #[serde(default = "last_axis")]
    pub axis: i64,
    #[serde(default = "momentum")]
    pub momentum: f32,
    #[serde(default = "epsilon")]
    pub epsilon: f32,
    #[serde(default = "yes")]
    pub center: bool,
    #[serde(default = "yes")]
    pub scale: bool,
}

fn last_axis() -> i64 {
    -1
}
fn momentum() -> f32 {
    0.99
}
fn epsilon() -> f32 {
    1e-3
}

/// Batch normalisation over the channel axis.
#[derive(Clone, Debug)]
pub struct BatchNormalization {
    base: LayerBase,
    cfg: BatchNormalizationConfig,
}

impl Default for BatchNormalization {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchNormalization {
    pub fn new() -> Self {
        BatchNormalization {
            base: LayerBase::default(),
            cfg: BatchNormalizationConfig {
                axis: -1,
                momentum: momentum(),
                epsilon: epsilon(),
                center: true,
                scale: true,
            },
        }
    }

    pub fn momentum(mut self, momentum: f32) -> Self {
        self.cfg.momentum = momentum;
        self
    }

    pub fn epsilon(mut self, epsilon: f32) -> Self {
        self.cfg.epsilon = epsilon;
        self
    }

    pub fn center(mut self, center: bool) -> Self {
        self.cfg.center = center;
        self
    }

    pub fn scale(mut self, scale: bool) -> Self {
        self.cfg.scale = scale;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        Ok(BatchNormalization { base: LayerBase::default(), cfg: parse_config("BatchNormalization", v)? })
    }

    /// Whether a forward pass with `training` uses (and updates) batch statistics.
    fn uses_batch(&self, training: bool) -> bool {
        training && self.base.trainable
    }
}

impl Layer for BatchNormalization {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "BatchNormalization"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype != DType::F32 || x.shape.is_empty() {
            return Err(bad_input(
                self,
                "needs float input with a channel axis",
                "float32 [batch, ..., channels]",
                &x.shape,
            ));
        }
        if self.cfg.axis != -1 && self.cfg.axis != x.shape.len() as i64 {
            return Err(OpsError::Config(format!(
                "BatchNormalization '{}': axis={} is not supported (only the last axis, -1)",
                self.base.name, self.cfg.axis
            )));
        }
        if !(0.0..=1.0).contains(&self.cfg.momentum) || self.cfg.epsilon <= 0.0 {
            return Err(OpsError::Config(format!(
                "BatchNormalization '{}': momentum must be in [0, 1] and epsilon > 0, got {} and {}",
                self.base.name, self.cfg.momentum, self.cfg.epsilon
            )));
        }
        let c = *x.shape.last().expect("non-empty");
        let mut w = vec![];
        if self.cfg.scale {
            w.push(Weight::declare("gamma", &[c], Initializer::Ones));
        }
        if self.cfg.center {
            w.push(Weight::declare("beta", &[c], Initializer::Zeros));
        }
        w.push(Weight::state("moving_mean", &[c], Initializer::Zeros));
        w.push(Weight::state("moving_variance", &[c], Initializer::Ones));
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        Ok(TensorSpec { shape: x.shape.clone(), dtype: DType::F32, masked: x.masked })
    }

    fn uses_batch_statistics(&self) -> bool {
        self.base.trainable
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], ctx: &mut CallContext<'_>) -> Result<Value> {
        let (x, mask) = inputs[0].float(self.name(), self.class_name())?;
        let mut it = weights.iter().copied();
        let gamma = if self.cfg.scale { it.next() } else { None };
        let beta = if self.cfg.center { it.next() } else { None };
        let (Some(mm), Some(mv)) = (it.next(), it.next()) else {
            return Err(OpsError::shape(
                format!("BatchNormalization '{}'", self.name()),
                "given fewer weight vars than it declared",
                &[&[weights.len()]],
            ));
        };
        let training = self.uses_batch(ctx.training);
        let stats = if training { BatchNormStats::Batch } else { BatchNormStats::Given { mean: mm, variance: mv } };
        let (y, moments) = autodiff::batch_norm(tape, x, gamma, beta, stats, self.cfg.epsilon)?;
        if let Some(m) = moments {
            let mo = self.cfg.momentum;
            let blend = |old: &Tensor, new: &[f32]| -> Result<Tensor> {
                let v = old.data().iter().zip(new).map(|(o, n)| o * mo + n * (1.0 - mo)).collect();
                Tensor::new(old.shape(), v)
            };
            let mean = blend(tape.value(mm), &m.mean)?;
            let var = blend(tape.value(mv), &m.variance)?;
            ctx.updates.push(StateUpdate { weight: mm, value: mean });
            ctx.updates.push(StateUpdate { weight: mv, value: var });
        }
        Ok(Value::Float { var: y, mask })
    }
}
