//! Metrics by Keras name: accuracy and sparse top-k accuracy.

use crate::error::{OpsError, Result};
use crate::tensor::{Data, Tensor};

/// A metric with its Keras arguments.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Metric {
    /// Keras's "accuracy": sparse labels -> argmax match; dense targets -> argmax match
    /// (categorical) or threshold 0.5 (one output).
    Accuracy,
    /// Label among the `k` highest scores.
    SparseTopKCategoricalAccuracy { k: usize },
}

impl Metric {
    /// Parses a Keras metric name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "accuracy" | "acc" | "sparse_categorical_accuracy" => Metric::Accuracy,
            "sparse_top_k_categorical_accuracy" => Metric::SparseTopKCategoricalAccuracy { k: 5 },
            other => {
                return Err(OpsError::Config(format!(
                    "unknown metric '{other}' (expected accuracy or sparse_top_k_categorical_accuracy)"
                )))
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Metric::Accuracy => "accuracy".into(),
            Metric::SparseTopKCategoricalAccuracy { k } => format!("top_{k}_accuracy"),
        }
    }

    /// (number correct, number of samples) for one batch.
    pub fn count(&self, pred: &Tensor, target: &Data) -> Result<(usize, usize)> {
        let c = *pred.shape().last().unwrap_or(&1);
        let rows = pred.len() / c.max(1);
        let p = pred.data();
        let row = |r: usize| &p[r * c..(r + 1) * c];
        let argmax = |r: usize| {
            row(r).iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
        };
        match (self, target) {
            (Metric::Accuracy, Data::I32(t)) if t.len() == rows => {
                Ok(((0..rows).filter(|&r| argmax(r) as i32 == t.data()[r]).count(), rows))
            }
            (Metric::Accuracy, Data::F32(t)) if t.len() == pred.len() => {
                if c == 1 {
                    Ok(((0..rows).filter(|&r| (p[r] > 0.5) == (t.data()[r] > 0.5)).count(), rows))
                } else {
                    let targ = |r: usize| {
                        t.data()[r * c..(r + 1) * c]
                            .iter()
                            .enumerate()
                            .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                            .0
                    };
                    Ok(((0..rows).filter(|&r| argmax(r) == targ(r)).count(), rows))
                }
            }
            (Metric::SparseTopKCategoricalAccuracy { k }, Data::I32(t)) if t.len() == rows => {
                let hits = (0..rows)
                    .filter(|&r| {
                        let l = t.data()[r];
                        if l < 0 || l as usize >= c {
                            return false;
                        }
                        let v = row(r)[l as usize];
                        row(r).iter().filter(|&&x| x > v).count() < *k
                    })
                    .count();
                Ok((hits, rows))
            }
            _ => Err(OpsError::shape(
                format!("metric {}", self.name()),
                "targets do not fit the predictions",
                &[pred.shape(), target.shape()],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::IntTensor;

    #[test]
    fn accuracy_and_top_k() {
        let pred = Tensor::new(&[2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.3, 0.2]).unwrap();
        let t = Data::I32(IntTensor::new(&[2], vec![1, 1]).unwrap());
        assert_eq!(Metric::Accuracy.count(&pred, &t).unwrap(), (1, 2));
        assert_eq!(Metric::SparseTopKCategoricalAccuracy { k: 2 }.count(&pred, &t).unwrap(), (2, 2));
        assert_eq!(Metric::SparseTopKCategoricalAccuracy { k: 1 }.count(&pred, &t).unwrap(), (1, 2));
    }
}
