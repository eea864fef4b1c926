//! Rebuilds a layer from its Keras class name and config (how executors
//! rebuild a model from its JSON).

use super::*;
use crate::error::{OpsError, Result};
use serde::{Deserialize, Serialize};

/// A layer as the model config writes it: Keras class name, name, trainable
/// flag and arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerJson {
    pub class_name: String,
    pub name: String,
    #[serde(default = "super::dense::yes")]
    pub trainable: bool,
    #[serde(default)]
    pub config: serde_json::Value,
}

impl LayerJson {
    /// The config of `layer`.
    pub fn of(layer: &dyn Layer) -> Self {
        LayerJson {
            class_name: layer.class_name().into(),
            name: layer.name().into(),
            trainable: layer.trainable(),
            config: layer.config(),
        }
    }

    /// Rebuilds the layer (unbuilt: weights are declared when it is called).
    pub fn build(&self) -> Result<Box<dyn Layer>> {
        let mut layer = layer_from_config(&self.class_name, &self.config)
            .map_err(|e| OpsError::Config(format!("layer '{}': {e}", self.name)))?;
        layer.set_name(self.name.clone());
        // Only ever freeze here: unfreezing a nested model would also unfreeze
        // the inner layers that its own config lists as frozen.
        if !self.trainable {
            layer.set_trainable(false);
        }
        Ok(layer)
    }
}

/// A layer from `class_name` and its config object.
pub fn layer_from_config(class_name: &str, config: &serde_json::Value) -> Result<Box<dyn Layer>> {
    Ok(match class_name {
        "Activation" => Box::new(Activation::from_config(config)?),
        "Dense" => Box::new(Dense::from_config(config)?),
        "Embedding" => Box::new(Embedding::from_config(config)?),
        "LSTM" => Box::new(Lstm::from_config(config)?),
        "GRU" => Box::new(Gru::from_config(config)?),
        "Dropout" => Box::new(Dropout::from_config(config)?),
        "Concatenate" => Box::new(Concatenate::from_config(config)?),
        "Add" => Box::new(Add::from_config(config)?),
        "Flatten" => Box::new(Flatten::from_config(config)?),
        "Reshape" => Box::new(Reshape::from_config(config)?),
        "Conv2D" => Box::new(Conv2D::from_config(config)?),
        "DepthwiseConv2D" => Box::new(DepthwiseConv2D::from_config(config)?),
        "MaxPooling2D" => Box::new(Pooling2D::from_config(PoolKind::Max, config)?),
        "AveragePooling2D" => Box::new(Pooling2D::from_config(PoolKind::Average, config)?),
        "GlobalMaxPooling2D" => Box::new(GlobalPooling2D::from_config(PoolKind::Max, config)?),
        "GlobalAveragePooling2D" => Box::new(GlobalPooling2D::from_config(PoolKind::Average, config)?),
        "BatchNormalization" => Box::new(BatchNormalization::from_config(config)?),
        "Rescaling" => Box::new(Rescaling::from_config(config)?),
        "ZeroPadding2D" => Box::new(ZeroPadding2D::from_config(config)?),
        "TimeDistributed" => Box::new(TimeDistributed::from_config(config)?),
        "Functional" => Box::new(crate::model::Model::from_layer_config(config)?),
        other => return Err(OpsError::Config(format!("unknown layer class '{other}' (known: {})", KNOWN.join(", ")))),
    })
}

const KNOWN: &[&str] = &[
    "Activation",
    "Dense",
    "Embedding",
    "LSTM",
    "GRU",
    "Dropout",
    "Concatenate",
    "Add",
    "Flatten",
    "Reshape",
    "Conv2D",
    "DepthwiseConv2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
    "BatchNormalization",
    "Rescaling",
    "ZeroPadding2D",
    "TimeDistributed",
    "Functional",
];
