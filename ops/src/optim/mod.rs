//! Optimizers with Keras's update rules and defaults: SGD (momentum,
//! Nesterov), Adam, AdamW, RMSprop; per-variable `clipnorm` and
//! `global_clipnorm`; learning-rate schedules. The slots (moments, velocities)
//! and the iteration count are state saved with the weights.

mod ranged;
mod schedule;

pub use ranged::RangedStep;
pub use schedule::{LearningRate, Schedule};

use crate::backend::{calls::Elementwise, default_backend};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which update rule, with its Keras arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerKind {
    Sgd {
        #[serde(default)]
        momentum: f32,
        #[serde(default)]
        nesterov: bool,
    },
    Adam {
        #[serde(default = "beta_1")]
        beta_1: f32,
        #[serde(default = "beta_2")]
        beta_2: f32,
        #[serde(default = "eps")]
        epsilon: f32,
    },
    Adamw {
        #[serde(default = "beta_1")]
        beta_1: f32,
        #[serde(default = "beta_2")]
        beta_2: f32,
        #[serde(default = "eps")]
        epsilon: f32,
        #[serde(default = "weight_decay")]
        weight_decay: f32,
    },
    Rmsprop {
        #[serde(default = "rho")]
        rho: f32,
        #[serde(default)]
        momentum: f32,
        #[serde(default = "eps")]
        epsilon: f32,
    },
}

fn beta_1() -> f32 {
    0.9
}
fn beta_2() -> f32 {
    0.999
}
fn eps() -> f32 {
    1e-7
}
fn weight_decay() -> f32 {
    0.004
}
fn rho() -> f32 {
    0.9
}

impl OptimizerKind {
    /// Keras's default learning rate for this optimizer.
    pub fn default_learning_rate(&self) -> f32 {
        match self {
            OptimizerKind::Sgd { .. } => 0.01,
            _ => 0.001,
        }
    }

    /// Names of the per-variable slots this rule keeps.
    pub fn slot_names(&self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd { momentum, .. } if *momentum != 0.0 => &["momentum"],
            OptimizerKind::Sgd { .. } => &[],
            OptimizerKind::Adam { .. } | OptimizerKind::Adamw { .. } => &["m", "v"],
            OptimizerKind::Rmsprop { momentum, .. } if *momentum != 0.0 => &["velocity", "momentum"],
            OptimizerKind::Rmsprop { .. } => &["velocity"],
        }
    }
}

/// An optimizer's full configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    #[serde(flatten)]
    pub kind: OptimizerKind,
    /// A constant or a schedule; Keras's default for the kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<LearningRate>,
    /// Clip each variable's gradient to this L2 norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipnorm: Option<f32>,
    /// Clip all gradients together to this global L2 norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_clipnorm: Option<f32>,
}

impl OptimizerConfig {
    /// Adam with Keras defaults and this learning rate.
    pub fn adam(lr: f32) -> Self {
        OptimizerConfig::new(OptimizerKind::Adam { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7 }).learning_rate(lr)
    }

    /// Plain SGD with this learning rate.
    pub fn sgd(lr: f32) -> Self {
        OptimizerConfig::new(OptimizerKind::Sgd { momentum: 0.0, nesterov: false }).learning_rate(lr)
    }

    pub fn new(kind: OptimizerKind) -> Self {
        OptimizerConfig { kind, learning_rate: None, clipnorm: None, global_clipnorm: None }
    }

    pub fn learning_rate(mut self, lr: f32) -> Self {
        self.learning_rate = Some(LearningRate::Constant(lr));
        self
    }

    pub fn schedule(mut self, s: Schedule) -> Self {
        self.learning_rate = Some(LearningRate::Schedule(s));
        self
    }

    pub fn clipnorm(mut self, c: f32) -> Self {
        self.clipnorm = Some(c);
        self
    }

    pub fn global_clipnorm(mut self, c: f32) -> Self {
        self.global_clipnorm = Some(c);
        self
    }

    /// The learning rate at optimizer step `iterations` (0-based).
    pub fn lr_at(&self, iterations: u64) -> f32 {
        match &self.learning_rate {
            None => self.kind.default_learning_rate(),
            Some(lr) => lr.at(iterations),
        }
    }
}

/// One variable handed to [`Optimizer::apply`].
pub struct ParamUpdate<'a> {
    /// `<layer>/<weight>`: the key of its slots.
    pub key: &'a str,
    pub value: &'a mut [f32],
    pub grad: Buf,
}

/// One variable handed to [`Optimizer::apply_borrowed`]: its gradient borrowed.
pub struct BorrowedUpdate<'a> {
    pub key: &'a str,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
}

fn check_sizes(key: &str, value: &[f32], grad: &[f32]) -> Result<()> {
    if grad.len() != value.len() {
        return Err(OpsError::shape(
            format!("optimizer update of '{key}'"),
            "gradient and variable sizes differ",
            &[&[grad.len()], &[value.len()]],
        ));
    }
    Ok(())
}

/// An optimizer: its config, iteration count and slots.
#[derive(Clone, Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub iterations: u64,
    /// Slots per variable key, in `slot_names()` order.
    pub slots: BTreeMap<String, Vec<Buf>>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer { config, iterations: 0, slots: BTreeMap::new() }
    }

    /// One optimizer step over `params` (each with its gradient); then `iterations += 1`.
    pub fn apply(&mut self, params: &mut [ParamUpdate<'_>]) -> Result<()> {
        self.apply_scaled(params, 1.0)
    }

    /// [`Self::apply`] with this step's learning rate multiplied by `lr_scale`
    /// (a parameter server damps stale gradients so).
    pub fn apply_scaled(&mut self, params: &mut [ParamUpdate<'_>], lr_scale: f32) -> Result<()> {
        for p in params.iter() {
            check_sizes(p.key, p.value, &p.grad)?;
        }
        let be = default_backend();
        let l2 = |g: &[f32]| -> Result<f32> { Ok(be.dot(g, g)?.sqrt() as f32) };
        if let Some(c) = self.config.clipnorm {
            for p in params.iter_mut() {
                let n = l2(&p.grad)?;
                if n > c {
                    be.elementwise(Elementwise::ScaleInPlace { x: &mut p.grad, scale: c / n })?;
                }
            }
        }
        if let Some(c) = self.config.global_clipnorm {
            let mut squares = 0.0f32;
            for p in params.iter() {
                squares += l2(&p.grad)?.powi(2);
            }
            let n = squares.sqrt();
            if n > c {
                for p in params.iter_mut() {
                    be.elementwise(Elementwise::ScaleInPlace { x: &mut p.grad, scale: c / n })?;
                }
            }
        }
        let mut borrowed: Vec<BorrowedUpdate<'_>> =
            params.iter_mut().map(|p| BorrowedUpdate { key: p.key, value: &mut *p.value, grad: &p.grad }).collect();
        self.step_unclipped(&mut borrowed, lr_scale)
    }

    /// [`Self::apply_scaled`] with gradients borrowed from their owner (a
    /// parameter server's caller in its own process), for an optimizer that
    /// clips nothing: no gradient is copied.
    pub fn apply_borrowed(&mut self, params: &mut [BorrowedUpdate<'_>], lr_scale: f32) -> Result<()> {
        if self.config.clipnorm.is_some() || self.config.global_clipnorm.is_some() {
            return Err(OpsError::Config("apply_borrowed: this optimizer clips gradients (use apply_scaled)".into()));
        }
        for p in params.iter() {
            check_sizes(p.key, p.value, p.grad)?;
        }
        self.step_unclipped(params, lr_scale)
    }

    fn step_unclipped(&mut self, params: &mut [BorrowedUpdate<'_>], lr_scale: f32) -> Result<()> {
        let be = default_backend();
        let lr = self.config.lr_at(self.iterations) * lr_scale;
        let step = self.iterations + 1;
        let names = self.config.kind.slot_names();
        for p in params.iter_mut() {
            if !self.slots.contains_key(p.key) {
                let fresh = names.iter().map(|_| be.zeros(p.value.len())).collect::<Result<Vec<_>>>()?;
                self.slots.insert(p.key.to_string(), fresh);
            }
            let slots = self.slots.get_mut(p.key).expect("inserted above");
            if slots.len() != names.len() || slots.iter().any(|s| s.len() != p.value.len()) {
                return Err(OpsError::shape(
                    format!("optimizer slots of '{}'", p.key),
                    "slot sizes differ from the variable",
                    &[&[p.value.len()]],
                ));
            }
            let mut slots: Vec<&mut [f32]> = slots.iter_mut().map(|s| s.as_mut_slice()).collect();
            be.optimizer_step(&self.config.kind, lr, step, p.value, p.grad, &mut slots)?;
        }
        self.iterations = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: OptimizerConfig, grads: &[f32], steps: usize) -> (Vec<f32>, Optimizer) {
        let mut opt = Optimizer::new(cfg);
        let mut w = vec![1.0f32, -2.0, 0.5];
        for _ in 0..steps {
            let mut ps = [ParamUpdate { key: "l/w", value: &mut w, grad: grads.to_vec().into() }];
            opt.apply(&mut ps).unwrap();
        }
        (w, opt)
    }

    #[test]
    fn borrowed_gradients_step_as_owned_ones_and_refuse_clipping() {
        let grads = [0.3f32, -1.5, 0.02];
        let (owned, opt_owned) = run(OptimizerConfig::adam(1e-2), &grads, 3);
        let mut opt = Optimizer::new(OptimizerConfig::adam(1e-2));
        let mut w = vec![1.0f32, -2.0, 0.5];
        for _ in 0..3 {
            opt.apply_borrowed(&mut [BorrowedUpdate { key: "l/w", value: &mut w, grad: &grads }], 1.0).unwrap();
        }
        assert_eq!(w, owned);
        assert_eq!(opt.slots["l/w"], opt_owned.slots["l/w"]);
        assert_eq!(opt.iterations, 3);
        let mut clipping = Optimizer::new(OptimizerConfig::adam(1e-2).clipnorm(1.0));
        let update = &mut [BorrowedUpdate { key: "l/w", value: &mut w, grad: &grads }];
        assert!(clipping.apply_borrowed(update, 1.0).is_err());
        let short = &mut [BorrowedUpdate { key: "l/w", value: &mut w, grad: &grads[..2] }];
        assert!(opt.apply_borrowed(short, 1.0).is_err());
    }

    // Expected values follow Keras 3's update rules, derived by hand in the comments.
    #[test]
    fn sgd_plain_and_momentum() {
        let (w, _) = run(OptimizerConfig::sgd(0.1), &[1.0, 2.0, -1.0], 1);
        assert_eq!(w, vec![0.9, -2.2, 0.6]);
        // m1 = -0.1 g; m2 = 0.9 m1 - 0.1 g = -0.19 g; w = w0 - 0.29 g
        let cfg = OptimizerConfig::new(OptimizerKind::Sgd { momentum: 0.9, nesterov: false }).learning_rate(0.1);
        let (w, _) = run(cfg, &[1.0, 0.0, 0.0], 2);
        assert!((w[0] - 0.71).abs() < 1e-6);
        // nesterov: w += 0.9 m - 0.1 g per step; step1: m=-0.1 -> w -= 0.19; step2: m=-0.19 -> w += -0.171 - 0.1
        let cfg = OptimizerConfig::new(OptimizerKind::Sgd { momentum: 0.9, nesterov: true }).learning_rate(0.1);
        let (w, _) = run(cfg, &[1.0, 0.0, 0.0], 2);
        assert!((w[0] - (1.0 - 0.19 - 0.271)).abs() < 1e-6, "{}", w[0]);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // step 1: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001)/0.1 -> update = lr * g/|g| (eps aside)
        let (w, opt) = run(OptimizerConfig::adam(0.01), &[3.0, -0.5, 0.0], 1);
        assert!((w[0] - 0.99).abs() < 1e-5 && (w[1] + 1.99).abs() < 1e-5 && w[2] == 0.5);
        assert_eq!(opt.iterations, 1);
        assert_eq!(opt.slots["l/w"].len(), 2);
    }

    #[test]
    fn adamw_decays_weights_before_the_step() {
        let cfg =
            OptimizerConfig::new(OptimizerKind::Adamw { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7, weight_decay: 0.5 })
                .learning_rate(0.1);
        let (w, _) = run(cfg, &[0.0, 0.0, 0.0], 1);
        // zero gradient: only the decay w -= w * 0.5 * 0.1
        assert!((w[0] - 0.95).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6);
    }

    #[test]
    fn rmsprop_first_step() {
        // v = 0.1 g^2; w -= lr g / sqrt(v + eps) = lr * sqrt(10) * sign(g)
        let cfg =
            OptimizerConfig::new(OptimizerKind::Rmsprop { rho: 0.9, momentum: 0.0, epsilon: 1e-7 }).learning_rate(0.01);
        let (w, _) = run(cfg, &[2.0, 0.0, 0.0], 1);
        assert!((w[0] - (1.0 - 0.01 * 10f32.sqrt())).abs() < 1e-5);
    }

    #[test]
    fn clipnorm_and_global_clipnorm() {
        // g = (3, 4, 0), |g| = 5 -> clipped to norm 1: (0.6, 0.8, 0); SGD lr 1
        let (w, _) = run(OptimizerConfig::sgd(1.0).clipnorm(1.0), &[3.0, 4.0, 0.0], 1);
        assert!((w[0] - 0.4).abs() < 1e-6 && (w[1] + 2.8).abs() < 1e-6);
        let (w, _) = run(OptimizerConfig::sgd(1.0).global_clipnorm(2.5), &[3.0, 4.0, 0.0], 1);
        assert!((w[0] + 0.5).abs() < 1e-6 && (w[1] + 4.0).abs() < 1e-6);
    }

    #[test]
    fn config_json_uses_keras_names() {
        let cfg: OptimizerConfig =
            serde_json::from_str(r#"{"name": "adam", "learning_rate": 0.002, "clipnorm": 1.0}"#).unwrap();
        assert_eq!(cfg.lr_at(0), 0.002);
        assert!(matches!(cfg.kind, OptimizerKind::Adam { beta_1, .. } if beta_1 == 0.9));
        assert!(serde_json::from_str::<OptimizerConfig>(r#"{"name": "adam", "beta_3": 1}"#).is_err());
    }
}
