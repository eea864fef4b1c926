//! Rebuilds a layer from its Keras class name and config (how executors
//! rebuild a model from its JSON).

use super::*;
use crate::error::{OpsError, Result};

/// A layer from `class_name` and its config object.
pub fn layer_from_config(class_name: &str, config: &serde_json::Value) -> Result<Box<dyn Layer>> {
    Ok(match class_name {
        "Dense" => Box::new(Dense::from_config(config)?),
        "Embedding" => Box::new(Embedding::from_config(config)?),
        "LSTM" => Box::new(Lstm::from_config(config)?),
        "GRU" => Box::new(Gru::from_config(config)?),
        "Dropout" => Box::new(Dropout::from_config(config)?),
        "Concatenate" => Box::new(Concatenate::from_config(config)?),
        "Add" => Box::new(Add::from_config(config)?),
        "Flatten" => Box::new(Flatten::from_config(config)?),
        "Reshape" => Box::new(Reshape::from_config(config)?),
        other => {
            return Err(OpsError::Config(format!(
                "unknown layer class '{other}' (known: Dense, Embedding, LSTM, GRU, Dropout, Concatenate, Add, Flatten, Reshape)"
            )))
        }
    })
}
