//! Learning rates: a constant or a Keras schedule evaluated at the optimizer's
//! iteration count.

use serde::{Deserialize, Serialize};

/// A constant learning rate or a schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LearningRate {
    Constant(f32),
    Schedule(Schedule),
}

/// Keras learning-rate schedules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `lr0 * rate ^ (step / decay_steps)` (floored exponent with `staircase`).
    ExponentialDecay {
        initial_learning_rate: f32,
        decay_steps: u64,
        decay_rate: f32,
        #[serde(default)]
        staircase: bool,
    },
    /// `lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)`;
    /// with `warmup_target`, first a linear rise from `lr0` to it over
    /// `warmup_steps`, then that decay from it (Keras 3's warm-up: early
    /// steps are where stale or large-batch gradients do the most harm).
    CosineDecay {
        initial_learning_rate: f32,
        decay_steps: u64,
        #[serde(default)]
        alpha: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warmup_target: Option<f32>,
        #[serde(default)]
        warmup_steps: u64,
    },
}

impl LearningRate {
    /// The rate at 0-based step `step`.
    pub fn at(&self, step: u64) -> f32 {
        match self {
            LearningRate::Constant(lr) => *lr,
            LearningRate::Schedule(Schedule::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
            }) => {
                let mut p = step as f64 / (*decay_steps).max(1) as f64;
                if *staircase {
                    p = p.floor();
                }
                (*initial_learning_rate as f64 * (*decay_rate as f64).powf(p)) as f32
            }
            LearningRate::Schedule(Schedule::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            }) => {
                let (lr0, decay_steps) = (*initial_learning_rate as f64, *decay_steps);
                let decay = |step: u64, from: f64| {
                    let frac = step.min(decay_steps) as f64 / decay_steps.max(1) as f64;
                    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * frac).cos());
                    (from * ((1.0 - *alpha as f64) * cosine + *alpha as f64)) as f32
                };
                match warmup_target.map(f64::from) {
                    None => decay(step, lr0),
                    Some(target) if step < *warmup_steps => {
                        (lr0 + (target - lr0) * step as f64 / *warmup_steps as f64) as f32
                    }
                    Some(target) => decay(step - warmup_steps, target),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_keras_formulas() {
        let e = LearningRate::Schedule(Schedule::ExponentialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 10,
            decay_rate: 0.5,
            staircase: false,
        });
        assert!((e.at(10) - 0.05).abs() < 1e-7 && (e.at(5) - 0.1 * 0.5f32.sqrt()).abs() < 1e-7);
        let s = LearningRate::Schedule(Schedule::ExponentialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 10,
            decay_rate: 0.5,
            staircase: true,
        });
        assert_eq!(s.at(9), 0.1);
        let c = LearningRate::Schedule(Schedule::CosineDecay {
            initial_learning_rate: 1.0,
            decay_steps: 100,
            alpha: 0.1,
            warmup_target: None,
            warmup_steps: 0,
        });
        assert!((c.at(0) - 1.0).abs() < 1e-6 && (c.at(50) - 0.55).abs() < 1e-6 && (c.at(500) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn cosine_decay_warms_up_as_keras_does() {
        // Keras 3.15.1: CosineDecay(1e-4, 6000, alpha=0.1, warmup_target=1e-3, warmup_steps=1000)(step).
        let keras: [(u64, f64); 9] = [
            (0, 9.999999747378752e-05),
            (1, 0.00010089999705087394),
            (500, 0.0005499999970197678),
            (999, 0.0009991000406444073),
            (1000, 0.0010000000474974513),
            (1001, 0.0009999999310821295),
            (4000, 0.0005499999970197678),
            (7000, 0.00010000000474974513),
            (9000, 0.00010000000474974513),
        ];
        let c: LearningRate = serde_json::from_str(
            r#"{"schedule": "cosine_decay", "initial_learning_rate": 1e-4, "decay_steps": 6000, "alpha": 0.1,
                "warmup_target": 1e-3, "warmup_steps": 1000}"#,
        )
        .unwrap();
        for (step, lr) in keras {
            let ours = c.at(step) as f64;
            assert!((ours - lr).abs() <= 1e-6 * lr, "step {step}: {ours} against Keras's {lr}");
        }
        // Keras's own example warms up from 0; alpha 1 keeps the target afterwards.
        let flat = LearningRate::Schedule(Schedule::CosineDecay {
            initial_learning_rate: 0.0,
            decay_steps: 100,
            alpha: 1.0,
            warmup_target: Some(0.5),
            warmup_steps: 10,
        });
        assert_eq!([flat.at(0), flat.at(3), flat.at(10), flat.at(200)], [0.0, 0.15, 0.5, 0.5]);
    }
}
