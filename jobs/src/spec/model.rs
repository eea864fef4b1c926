//! The job file's model: layers by Keras class name, each naming its input,
//! the way the talk's ~15 lines of Keras read; or a path to a model JSON.
//!
//! ```yaml
//! model:
//!   name: video_qa
//!   inputs:
//!     - {name: video, shape: [8, 64, 64, 3], dtype: uint8, column: frames}
//!     - {name: question, shape: [12], dtype: int32, column: question_ids}
//!   models:                       # sub-models, used by name
//!     frame_cnn:
//!       inputs: [{name: frame, shape: [64, 64, 3]}]
//!       layers:
//!         - {name: conv1, class: Conv2D, input: frame, filters: 16, kernel_size: 3, strides: 2, padding: same, activation: relu}
//!         - {name: gap, class: GlobalAveragePooling2D, input: conv1}
//!       outputs: [gap]
//!   layers:
//!     - {name: td_cnn, class: TimeDistributed, input: video, layer: frame_cnn}
//!     - {name: video_lstm, class: LSTM, input: td_cnn, units: 128}
//!     ...
//!   outputs: [fc_out]
//! ```
//!
//! It becomes the model's JSON config (`kallista_ops::model`), so the graph
//! is exactly what `ModelBuilder` code with the same layers gives.

use super::spec_error;
use crate::error::JobError;
use kallista_ops::model::Model;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model JSON file (as `model.json` in a job dir) instead of `layers`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_name")]
    pub name: String,
    pub inputs: Vec<InputSpec>,
    #[serde(default)]
    pub models: BTreeMap<String, SubModelSpec>,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub outputs: Vec<String>,
}

fn default_name() -> String {
    "model".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default = "float32")]
    pub dtype: String,
    /// The data column feeding it (top-level inputs only): `frames` or `question_ids`.
    #[serde(default)]
    pub column: Option<String>,
}

fn float32() -> String {
    "float32".into()
}

/// A sub-model: layers, as the model's own, or a pre-trained application.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubModelSpec {
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub outputs: Vec<String>,
    /// A built-in application instead of layers (see [`super::application`]).
    #[serde(default)]
    pub application: Option<String>,
    #[serde(default)]
    pub include_top: bool,
    #[serde(default)]
    pub pooling: Option<String>,
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub classes: Option<usize>,
    /// A Keras weights file for it (relative to the job file), loaded after the model is built.
    #[serde(default)]
    pub weights: Option<String>,
}

/// One layer: `name`, Keras `class`, `input` (a tensor name or a list), and
/// the layer's Keras arguments.
#[derive(Clone, Debug, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    pub class: String,
    pub input: InputRef,
    #[serde(default = "yes")]
    pub trainable: bool,
    #[serde(flatten)]
    pub args: Map<String, Value>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    One(String),
    Many(Vec<String>),
}

impl InputRef {
    fn names(&self) -> Vec<String> {
        match self {
            InputRef::One(s) => vec![s.clone()],
            InputRef::Many(v) => v.clone(),
        }
    }
}

/// One graph of the model section (the model or a sub-model).
struct Graph<'a> {
    name: &'a str,
    seed: u64,
    inputs: &'a [InputSpec],
    layers: &'a [LayerSpec],
    outputs: &'a [String],
}

/// `{name, seed, inputs, layers, nodes, outputs}` of a graph; `key` names it in errors.
fn functional(file: &Path, key: &str, g: &Graph<'_>, models: &BTreeMap<String, Value>) -> Result<Value, JobError> {
    let Graph { name, seed, inputs, layers, outputs } = g;
    let mut layer_json = vec![];
    let mut nodes = vec![];
    for (i, l) in layers.iter().enumerate() {
        let mut args = l.args.clone();
        if l.class == "TimeDistributed" {
            let inner = args.get("layer").and_then(Value::as_str).and_then(|n| models.get(n)).ok_or_else(|| {
                spec_error(file, &format!("{key}.layers[{i}].layer"), "expected the name of an entry of model.models")
            })?;
            args.insert("layer".into(), inner.clone());
        }
        layer_json.push(json!({ "class_name": l.class, "name": l.name, "trainable": l.trainable, "config": args }));
        nodes.push(json!({ "layer": l.name, "inputs": l.input.names() }));
    }
    Ok(json!({
        "name": name,
        "seed": seed,
        "inputs": inputs.iter().map(|i| json!({"name": i.name, "shape": i.shape, "dtype": i.dtype})).collect::<Vec<_>>(),
        "layers": layer_json,
        "nodes": nodes,
        "outputs": outputs,
    }))
}

impl ModelSpec {
    /// Builds the model; sub-model `k` (in name order) draws its weights from `seed + 1 + k`.
    pub fn build(&self, file: &Path, seed: u64) -> Result<Model, JobError> {
        if let Some(p) = &self.path {
            let path = file.parent().unwrap_or(Path::new(".")).join(p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| spec_error(file, "model.path", format!("{}: {e}", path.display())))?;
            return Model::from_json(&text).map_err(|e| spec_error(file, "model.path", e));
        }
        if self.layers.is_empty() || self.outputs.is_empty() {
            return Err(spec_error(file, "model.layers", "a model needs layers and outputs (or a path)"));
        }
        let mut models = BTreeMap::new();
        for (k, (name, m)) in self.models.iter().enumerate() {
            let key = format!("model.models.{name}");
            let seed = seed.wrapping_add(1 + k as u64);
            let config = if m.application.is_some() {
                super::application::config(file, &key, name, m, seed)?
            } else {
                let graph = Graph { name, seed, inputs: &m.inputs, layers: &m.layers, outputs: &m.outputs };
                functional(file, &key, &graph, &models)?
            };
            // Build it alone first, so that its errors name it.
            let text = json!({"class_name": "Functional", "config": config}).to_string();
            Model::from_json(&text).map_err(|e| spec_error(file, &key, e))?;
            models.insert(
                name.clone(),
                json!({"class_name": "Functional", "name": name, "trainable": true, "config": config}),
            );
        }
        let graph =
            Graph { name: &self.name, seed, inputs: &self.inputs, layers: &self.layers, outputs: &self.outputs };
        let config = functional(file, "model", &graph, &models)?;
        let text = json!({"class_name": "Functional", "config": config}).to_string();
        let mut model = Model::from_json(&text).map_err(|e| {
            let msg = e.to_string();
            let key = self
                .layers
                .iter()
                .position(|l| msg.contains(&format!("'{}'", l.name)))
                .map_or("model.layers".to_string(), |i| format!("model.layers[{i}] ({})", self.layers[i].name));
            spec_error(file, &key, msg)
        })?;
        self.load_pretrained(file, &mut model)?;
        Ok(model)
    }

    /// Loads each sub-model's `weights:` file into every TimeDistributed layer that wraps it.
    fn load_pretrained(&self, file: &Path, model: &mut Model) -> Result<(), JobError> {
        for (name, m) in &self.models {
            let Some(weights) = &m.weights else { continue };
            let key = format!("model.models.{name}.weights");
            let path = file.parent().unwrap_or(Path::new(".")).join(weights);
            if !path.exists() {
                return Err(spec_error(file, &key, format!("{}: no such file", path.display())));
            }
            let wrappers: Vec<&LayerSpec> = self
                .layers
                .iter()
                .filter(|l| l.class == "TimeDistributed" && l.args.get("layer").and_then(Value::as_str) == Some(name))
                .collect();
            if wrappers.is_empty() {
                return Err(spec_error(file, &key, "no TimeDistributed layer of model.layers uses this sub-model"));
            }
            for l in wrappers {
                model
                    .load_keras_weights_h5_at(&format!("{}/{name}", l.name), &path)
                    .map_err(|e| spec_error(file, &key, format!("{}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The data column of each model input, in input order.
    pub fn input_columns(&self, file: &Path) -> Result<Vec<String>, JobError> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, input)| match input.column.as_deref() {
                Some(c) if !c.trim().is_empty() => Ok(c.to_string()),
                Some(_) | None => {
                    Err(spec_error(file, &format!("model.inputs[{i}].column"), "missing: which data column feeds it"))
                }
            })
            .collect()
    }
}
