//! Adam's `beta_1` on a shard, lowered for the staleness of its pushes.
//!
//! Asynchrony adds momentum of its own: a gradient computed `τ` versions ago
//! keeps pushing the weights the way they went then (Mitliagkas et al. 2016,
//! "Asynchrony begets momentum"). Stacked on Adam's `beta_1 = 0.9`, four
//! workers' gradients about three versions old never left the video-QA
//! job's plateau near 0.25 accuracy. Adam's first moment averages over about
//! `1 / (1 - beta_1)` pushes; a shard divides that window by `1 + τ`, `τ`
//! the running mean staleness of the pushes it applied: `beta_1 = 1 - (1 -
//! beta_1) * (1 + τ)`, never below 0. Measured, not assumed from the worker
//! count: `W` workers computing at once push gradients about `W - 1`
//! versions old (the mean starts there, as one push), but 4 workers taking
//! turns on 2 cores push them about 0.95 versions old, as 2 workers do, and
//! run with `beta_1` about 0.8 (the video-QA job: 0.77 to 0.90 eval
//! accuracy over runs, `sync` 0.915; left at 0.9, 4 workers stayed on its
//! plateau in the one run tried).

use kallista_ops::optim::{OptimizerConfig, OptimizerKind};
use serde::{Deserialize, Serialize};

/// The least weight of an applied push in the running mean staleness:
/// once past the first pushes, about the last 32 count.
const LEAST_PUSH_WEIGHT: f64 = 1.0 / 32.0;

/// How a shard lowers the job's Adam `beta_1` (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MomentumCompensation {
    /// The job's `beta_1`.
    pub beta_1: f32,
    /// The mean staleness before any push: `workers - 1`.
    pub prior_staleness: f64,
}

impl MomentumCompensation {
    /// For `workers` workers on the job's `optimizer`: none for one worker
    /// (whose pushes are never stale) or an optimizer without Adam's first moment.
    pub fn for_job(optimizer: &OptimizerConfig, workers: usize) -> Option<MomentumCompensation> {
        match optimizer.kind {
            OptimizerKind::Adam { beta_1, .. } | OptimizerKind::Adamw { beta_1, .. } if workers > 1 => {
                Some(MomentumCompensation { beta_1, prior_staleness: (workers - 1) as f64 })
            }
            _ => None,
        }
    }

    /// `beta_1` for pushes `mean_staleness` versions old on average.
    pub fn beta_1_for(&self, mean_staleness: f64) -> f32 {
        let b = f64::from(self.beta_1);
        (1.0 - (1.0 - b) * (1.0 + mean_staleness.max(0.0))).clamp(0.0, b) as f32
    }
}

/// A shard's mean staleness of the pushes it applied: the prior counts as
/// one push, then the mean of all of them, then of about the last 32 (the
/// prior, from the worker count alone, gave way too slowly as the first of 32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunningStaleness {
    pub mean: f64,
    pub pushes: u64,
}

impl RunningStaleness {
    pub fn new(prior: f64) -> RunningStaleness {
        RunningStaleness { mean: prior, pushes: 0 }
    }

    /// After a push `staleness` versions old.
    pub fn updated(self, staleness: u64) -> RunningStaleness {
        let weight = (1.0 / (self.pushes + 2) as f64).max(LEAST_PUSH_WEIGHT);
        RunningStaleness { mean: self.mean + weight * (staleness as f64 - self.mean), pushes: self.pushes + 1 }
    }
}

/// Sets Adam's (or AdamW's) `beta_1` in `config`.
pub fn set_beta_1(config: &mut OptimizerConfig, value: f32) {
    if let OptimizerKind::Adam { beta_1, .. } | OptimizerKind::Adamw { beta_1, .. } = &mut config.kind {
        *beta_1 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_1s_window_is_divided_by_one_plus_the_mean_staleness() {
        let adam = OptimizerConfig::adam(0.001);
        let m = MomentumCompensation::for_job(&adam, 4).unwrap();
        assert_eq!(m.prior_staleness, 3.0);
        let lowered: Vec<f32> = [0.0, 1.0, 3.0, 20.0].iter().map(|&t| m.beta_1_for(t)).collect();
        assert!(lowered.iter().zip([0.9, 0.8, 0.6, 0.0]).all(|(a, b)| (a - b).abs() < 1e-6), "{lowered:?}");
        assert_eq!(MomentumCompensation::for_job(&adam, 1), None, "one worker keeps the job's");
        let sgd = OptimizerConfig::new(OptimizerKind::Sgd { momentum: 0.9, nesterov: false });
        assert_eq!(MomentumCompensation::for_job(&sgd, 4), None, "only Adam's first moment is lowered");
        // The mean follows the pushes: the prior counts as one push, ...
        let after = |stalenesses: &[u64]| stalenesses.iter().fold(RunningStaleness::new(3.0), |r, &s| r.updated(s));
        assert_eq!(after(&[1]).mean, 2.0);
        assert_eq!(after(&[1, 1, 1]).mean, 1.5);
        // ... and later pushes, about the last 32, count more than earlier ones.
        let (early, late) = (after(&[[0; 100], [2; 100]].concat()), after(&[[2; 100], [0; 100]].concat()));
        assert!(early.mean > 1.9 && late.mean < 0.1, "{early:?} {late:?}");
        assert_eq!(late.pushes, 200);
    }
}
