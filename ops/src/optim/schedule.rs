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
    /// `lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)`.
    CosineDecay {
        initial_learning_rate: f32,
        decay_steps: u64,
        #[serde(default)]
        alpha: f32,
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
            LearningRate::Schedule(Schedule::CosineDecay { initial_learning_rate, decay_steps, alpha }) => {
                let frac = step.min(*decay_steps) as f64 / (*decay_steps).max(1) as f64;
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * frac).cos());
                (*initial_learning_rate as f64 * ((1.0 - *alpha as f64) * cosine + *alpha as f64)) as f32
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
        let c =
            LearningRate::Schedule(Schedule::CosineDecay { initial_learning_rate: 1.0, decay_steps: 100, alpha: 0.1 });
        assert!((c.at(0) - 1.0).abs() < 1e-6 && (c.at(50) - 0.55).abs() < 1e-6 && (c.at(500) - 0.1).abs() < 1e-6);
    }
}
