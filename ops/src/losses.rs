//! Losses by Keras name, as `compile` takes them.

use crate::autodiff::{self, Tape, Var};
use crate::error::{OpsError, Result};
use crate::tensor::Data;

/// A loss function with its Keras arguments.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Loss {
    SparseCategoricalCrossentropy {
        #[serde(default)]
        from_logits: bool,
    },
    CategoricalCrossentropy {
        #[serde(default)]
        from_logits: bool,
    },
    BinaryCrossentropy {
        #[serde(default)]
        from_logits: bool,
    },
    MeanSquaredError,
}

impl Loss {
    /// Parses a Keras loss name (`"sparse_categorical_crossentropy"`, `"mse"`, ...).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "sparse_categorical_crossentropy" => Loss::SparseCategoricalCrossentropy { from_logits: false },
            "categorical_crossentropy" => Loss::CategoricalCrossentropy { from_logits: false },
            "binary_crossentropy" => Loss::BinaryCrossentropy { from_logits: false },
            "mean_squared_error" | "mse" => Loss::MeanSquaredError,
            other => {
                return Err(OpsError::Config(format!(
                    "unknown loss '{other}' (expected sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy or mean_squared_error)"
                )))
            }
        })
    }

    /// The mean loss of a batch, recorded on `tape`.
    pub fn compute(&self, tape: &mut Tape, pred: Var, target: &Data) -> Result<Var> {
        match (self, target) {
            (Loss::SparseCategoricalCrossentropy { from_logits }, Data::I32(t)) => {
                autodiff::sparse_categorical_crossentropy(tape, pred, t, *from_logits)
            }
            (Loss::CategoricalCrossentropy { from_logits }, Data::F32(t)) => {
                autodiff::categorical_crossentropy(tape, pred, t, *from_logits)
            }
            (Loss::BinaryCrossentropy { from_logits }, Data::F32(t)) => {
                autodiff::binary_crossentropy(tape, pred, t, *from_logits)
            }
            (Loss::MeanSquaredError, Data::F32(t)) => autodiff::mean_squared_error(tape, pred, t),
            (loss, t) => Err(OpsError::Config(format!("loss {loss:?} cannot take {} targets", t.dtype()))),
        }
    }
}
