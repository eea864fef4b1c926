//! Numbers of a job file that their types accept but training cannot use:
//! `.nan` and `.inf` anywhere (a NaN learning rate would otherwise be read as
//! "absent" and train with the default), and optimizer settings out of range.

use kallista_ops::optim::{LearningRate, OptimizerConfig, OptimizerKind, Schedule};
use serde_yaml::Value;

/// The key of the first non-finite number in a job file's YAML, if any
/// (`training.optimizer.learning_rate`, `model.layers[2].rate`).
pub fn non_finite_key(text: &str) -> Option<String> {
    fn walk(v: &Value, at: &str) -> Option<String> {
        match v {
            Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(at.to_string()),
            Value::Sequence(items) => items.iter().enumerate().find_map(|(i, x)| walk(x, &format!("{at}[{i}]"))),
            Value::Mapping(m) => m.iter().find_map(|(k, x)| {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                walk(x, &if at.is_empty() { k } else { format!("{at}.{k}") })
            }),
            Value::Tagged(t) => walk(&t.value, at),
            _ => None,
        }
    }
    walk(&serde_yaml::from_str::<Value>(text).ok()?, "")
}

/// Checks an optimizer's numbers; the error is (key under `training.optimizer`, what is wrong).
pub fn check_optimizer(c: &OptimizerConfig) -> Result<(), (&'static str, String)> {
    let positive = |key: &'static str, v: f32| {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err((key, format!("{v}: must be positive and finite (as a 32-bit float)")))
        }
    };
    let fraction = |key: &'static str, v: f32| {
        if (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            Err((key, format!("{v}: must be at least 0 and below 1")))
        }
    };
    match &c.learning_rate {
        None => {}
        Some(LearningRate::Constant(lr)) => positive("learning_rate", *lr)?,
        Some(LearningRate::Schedule(Schedule::ExponentialDecay {
            initial_learning_rate,
            decay_steps,
            decay_rate,
            ..
        })) => {
            positive("learning_rate.initial_learning_rate", *initial_learning_rate)?;
            positive("learning_rate.decay_steps", *decay_steps as f32)?;
            positive("learning_rate.decay_rate", *decay_rate)?;
        }
        Some(LearningRate::Schedule(Schedule::CosineDecay {
            initial_learning_rate,
            decay_steps,
            alpha,
            warmup_target,
            warmup_steps,
        })) => {
            match warmup_target {
                // A warm-up may start from 0, as Keras's example does.
                Some(target) => {
                    positive("learning_rate.warmup_target", *target)?;
                    if !(*initial_learning_rate >= 0.0 && initial_learning_rate.is_finite()) {
                        return Err((
                            "learning_rate.initial_learning_rate",
                            format!("{initial_learning_rate}: must be at least 0 and finite"),
                        ));
                    }
                }
                None if *warmup_steps > 0 => {
                    return Err(("learning_rate.warmup_steps", "needs learning_rate.warmup_target".into()))
                }
                None => positive("learning_rate.initial_learning_rate", *initial_learning_rate)?,
            }
            positive("learning_rate.decay_steps", *decay_steps as f32)?;
            if !(0.0..=1.0).contains(alpha) {
                return Err(("learning_rate.alpha", format!("{alpha}: must be between 0 and 1")));
            }
        }
    }
    for (key, v) in [("clipnorm", c.clipnorm), ("global_clipnorm", c.global_clipnorm)] {
        if let Some(v) = v {
            positive(key, v)?;
        }
    }
    match &c.kind {
        OptimizerKind::Sgd { momentum, .. } => fraction("momentum", *momentum),
        OptimizerKind::Adam { beta_1, beta_2, epsilon } => {
            fraction("beta_1", *beta_1)?;
            fraction("beta_2", *beta_2)?;
            positive("epsilon", *epsilon)
        }
        OptimizerKind::Adamw { beta_1, beta_2, epsilon, weight_decay } => {
            fraction("beta_1", *beta_1)?;
            fraction("beta_2", *beta_2)?;
            positive("epsilon", *epsilon)?;
            if *weight_decay < 0.0 {
                return Err(("weight_decay", format!("{weight_decay}: must not be negative")));
            }
            Ok(())
        }
        OptimizerKind::Rmsprop { rho, momentum, epsilon } => {
            fraction("rho", *rho)?;
            fraction("momentum", *momentum)?;
            positive("epsilon", *epsilon)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_number_is_named_by_its_key() {
        let text = "training:\n  optimizer: {name: adam, learning_rate: .nan}\nmodel:\n  layers: [{rate: 0.5}, {rate: -.inf}]\n";
        assert_eq!(non_finite_key(text).as_deref(), Some("training.optimizer.learning_rate"));
        assert_eq!(
            non_finite_key("model:\n  layers: [{rate: 0.5}, {rate: -.inf}]\n").as_deref(),
            Some("model.layers[1].rate")
        );
        assert_eq!(non_finite_key("a: 1.5\nb: [1, 2]\n"), None);
    }

    #[test]
    fn out_of_range_optimizer_settings_name_their_key() {
        assert!(check_optimizer(&OptimizerConfig::adam(0.001)).is_ok());
        assert_eq!(check_optimizer(&OptimizerConfig::adam(0.0)).unwrap_err().0, "learning_rate");
        assert_eq!(check_optimizer(&OptimizerConfig::adam(1e39f64 as f32)).unwrap_err().0, "learning_rate");
        assert_eq!(check_optimizer(&OptimizerConfig::sgd(0.1).clipnorm(-1.0)).unwrap_err().0, "clipnorm");
        let bad_beta = OptimizerConfig::new(OptimizerKind::Adam { beta_1: 1.0, beta_2: 0.999, epsilon: 1e-7 });
        assert_eq!(check_optimizer(&bad_beta).unwrap_err().0, "beta_1");
    }

    #[test]
    fn a_warm_up_may_start_from_zero_but_needs_its_target() {
        let cosine = |initial_learning_rate, warmup_target, warmup_steps| {
            OptimizerConfig::adam(0.001).schedule(Schedule::CosineDecay {
                initial_learning_rate,
                decay_steps: 100,
                alpha: 0.0,
                warmup_target,
                warmup_steps,
            })
        };
        assert!(check_optimizer(&cosine(0.0, Some(0.001), 10)).is_ok());
        assert_eq!(check_optimizer(&cosine(0.0, None, 0)).unwrap_err().0, "learning_rate.initial_learning_rate");
        assert_eq!(check_optimizer(&cosine(0.1, None, 10)).unwrap_err().0, "learning_rate.warmup_steps");
        assert_eq!(
            check_optimizer(&cosine(-0.1, Some(0.001), 10)).unwrap_err().0,
            "learning_rate.initial_learning_rate"
        );
        assert_eq!(check_optimizer(&cosine(0.0, Some(0.0), 10)).unwrap_err().0, "learning_rate.warmup_target");
    }
}
