//! One optimizer step taken a range of each variable at a time, so that a
//! caller can make each range's gradient just before its update (the exact
//! sums of `sync` training, a cache-sized chunk at a time) instead of
//! writing and re-reading whole gradient vectors. The rules are elementwise,
//! so the result has the bits of [`super::Optimizer::apply`].

use super::{Optimizer, OptimizerKind};
use crate::backend::{default_backend, Backend};
use crate::error::{OpsError, Result};
use std::sync::Arc;

/// The rule, learning rate and step number every range of one step uses.
#[derive(Clone)]
pub struct RangedStep {
    kind: OptimizerKind,
    lr: f32,
    step: u64,
    backend: Arc<dyn Backend>,
}

impl RangedStep {
    /// Updates `value` (a range of a variable) with the same range of its
    /// gradient and of each of its slots.
    pub fn apply(&self, value: &mut [f32], grad: &[f32], slots: &mut [&mut [f32]]) -> Result<()> {
        self.backend.optimizer_step(&self.kind, self.lr, self.step, value, grad, slots)
    }

    /// Whether the step runs on the host's cores (each call on a device
    /// copies its range there and back: few large ranges are then better).
    pub fn on_host(&self) -> bool {
        self.backend.name() == "cpu"
    }

    /// This step with its learning rate multiplied by `lr_scale`, as
    /// [`super::Optimizer::apply_scaled`] takes it (a stale push, damped).
    pub fn lr_scaled(mut self, lr_scale: f32) -> RangedStep {
        self.lr *= lr_scale;
        self
    }
}

impl Optimizer {
    /// Starts step `iterations + 1` over the variables `(key, values)`, to be
    /// applied range by range ([`RangedStep::apply`] on each range of each
    /// variable, with [`Optimizer::slots`] of its key), creating the slots a
    /// variable lacks. `None` when gradients are clipped by norm, which needs
    /// each whole gradient first: then use [`Optimizer::apply`].
    pub fn ranged_step(&mut self, vars: &[(&str, usize)]) -> Result<Option<RangedStep>> {
        if self.config.clipnorm.is_some() || self.config.global_clipnorm.is_some() {
            return Ok(None);
        }
        let backend = default_backend();
        let names = self.config.kind.slot_names();
        for &(key, len) in vars {
            if !self.slots.contains_key(key) {
                let fresh = names.iter().map(|_| backend.zeros(len)).collect::<Result<Vec<_>>>()?;
                self.slots.insert(key.to_string(), fresh);
            }
            let slots = &self.slots[key];
            if slots.len() != names.len() || slots.iter().any(|s| s.len() != len) {
                return Err(OpsError::shape(
                    format!("optimizer slots of '{key}'"),
                    "slot sizes differ from the variable",
                    &[&[len]],
                ));
            }
        }
        let lr = self.config.lr_at(self.iterations);
        self.iterations += 1;
        Ok(Some(RangedStep { kind: self.config.kind.clone(), lr, step: self.iterations, backend }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimizerConfig, ParamUpdate};

    /// Three steps of Adam applied in ranges of 3 give the bits of whole
    /// steps, the third with its learning rate scaled.
    #[test]
    fn ranges_give_the_bits_of_a_whole_step() {
        let grads: Vec<Vec<f32>> =
            (0..3).map(|s| (0..10).map(|i| ((i * 7 + s * 3) % 5) as f32 - 2.1).collect()).collect();
        let mut whole = Optimizer::new(OptimizerConfig::adam(0.01));
        let mut ranged = whole.clone();
        let (mut w_whole, mut w_ranged) = (vec![0.5f32; 10], vec![0.5f32; 10]);
        for (s, g) in grads.iter().enumerate() {
            let lr_scale = if s == 2 { 0.25 } else { 1.0 };
            let update = ParamUpdate { key: "l/w", value: &mut w_whole, grad: g.clone().into() };
            whole.apply_scaled(&mut [update], lr_scale).unwrap();
            let step = ranged.ranged_step(&[("l/w", 10)]).unwrap().expect("no clipping").lr_scaled(lr_scale);
            let slots = ranged.slots.get_mut("l/w").unwrap();
            let (m, v) = slots.split_at_mut(1);
            let chunks = w_ranged.chunks_mut(3).zip(g.chunks(3)).zip(m[0].chunks_mut(3).zip(v[0].chunks_mut(3)));
            for ((w, g), (m, v)) in chunks {
                step.apply(w, g, &mut [m, v]).unwrap();
            }
        }
        assert_eq!(
            w_whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w_ranged.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(whole.slots, ranged.slots);
        assert_eq!((whole.iterations, ranged.iterations), (3, 3));
        let clipped = &mut Optimizer::new(OptimizerConfig::adam(0.01).clipnorm(1.0));
        assert!(clipped.ranged_step(&[("l/w", 10)]).unwrap().is_none(), "clipping needs whole gradients");
    }
}
