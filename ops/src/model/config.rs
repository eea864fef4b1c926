//! The model's JSON config, Keras-like: inputs, layers with their class name
//! and arguments, the call graph (`nodes`), outputs, and the weight seed.
//! Executors rebuild models from it.
//!
//! A nested model is a layer whose `class_name` is `"Functional"` and whose
//! `config` is the nested model's own config object (as Keras writes it);
//! `TimeDistributed` holds its layer's `{class_name, name, trainable, config}`.

use super::{Model, ModelBuilder, SymbolicTensor};
use crate::error::{OpsError, Result};
use crate::layers::LayerJson;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    class_name: String,
    config: FunctionalJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FunctionalJson {
    pub(super) name: String,
    #[serde(default)]
    pub(super) seed: u64,
    pub(super) inputs: Vec<InputJson>,
    pub(super) layers: Vec<LayerJson>,
    pub(super) nodes: Vec<NodeJson>,
    pub(super) outputs: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InputJson {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    pub(super) dtype: String,
}

/// A call of a layer on named tensors; its output is named after the layer
/// (`layer` on the first call, `layer@k` on the k-th later one).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeJson {
    pub(super) layer: String,
    pub(super) inputs: Vec<String>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "float32" => Ok(DType::F32),
        "int32" | "int64" => Ok(DType::I32),
        "uint8" => Ok(DType::U8),
        other => Err(OpsError::Config(format!("input dtype '{other}' (expected float32, int32 or uint8)"))),
    }
}

impl Model {
    /// The model's config as pretty JSON.
    pub fn to_json(&self) -> String {
        let j = ModelJson { class_name: "Functional".into(), config: self.functional_json() };
        serde_json::to_string_pretty(&j).expect("model config serialises")
    }

    /// The config object of the graph (what a nested model writes as its layer config).
    pub(crate) fn functional_json(&self) -> FunctionalJson {
        FunctionalJson {
            name: self.name.clone(),
            seed: self.seed,
            inputs: self
                .inputs
                .iter()
                .map(|&t| InputJson {
                    name: self.tensors[t].name.clone(),
                    shape: self.tensors[t].spec.shape.clone(),
                    dtype: self.tensors[t].spec.dtype.to_string(),
                })
                .collect(),
            layers: self.layers.iter().map(|l| LayerJson::of(&**l)).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeJson {
                    layer: self.layers[n.layer].name().into(),
                    inputs: n.inputs.iter().map(|&i| self.tensors[i].name.clone()).collect(),
                })
                .collect(),
            outputs: self.outputs.iter().map(|&o| self.tensors[o].name.clone()).collect(),
        }
    }

    /// Rebuilds a model from [`Model::to_json`]'s output; weights are drawn from the config's seed.
    pub fn from_json(json: &str) -> Result<Model> {
        Model::from_json_with(json, true)
    }

    /// [`Self::from_json`] with the weights left at zero, for a caller that
    /// loads all of them next ([`Model::load_weights`] refuses a file that
    /// lacks one): drawing them is wasted work.
    pub fn from_json_to_load(json: &str) -> Result<Model> {
        Model::from_json_with(json, false)
    }

    fn from_json_with(json: &str, draw_weights: bool) -> Result<Model> {
        let j: ModelJson = serde_json::from_str(json)?;
        if j.class_name != "Functional" {
            return Err(OpsError::Config(format!("model class_name '{}' (expected Functional)", j.class_name)));
        }
        Model::from_functional_with(j.config, draw_weights)
    }

    /// Rebuilds a model from its graph config object.
    pub(crate) fn from_functional(c: FunctionalJson) -> Result<Model> {
        Self::from_functional_with(c, true)
    }

    /// [`Self::from_functional`], its weights drawn from the config's seed or left at zero.
    fn from_functional_with(c: FunctionalJson, draw_weights: bool) -> Result<Model> {
        let mut g = ModelBuilder::new(&c.name);
        let mut named: HashMap<String, SymbolicTensor> = HashMap::new();
        let mut inputs = vec![];
        for i in &c.inputs {
            let t = g.input(&i.name, &i.shape, parse_dtype(&i.dtype)?);
            named.insert(i.name.clone(), t);
            inputs.push(t);
        }
        let mut ids = HashMap::new();
        for l in &c.layers {
            let layer = l.build()?;
            if ids.contains_key(&l.name) {
                return Err(OpsError::Config(format!("two layers are named '{}'", l.name)));
            }
            ids.insert(l.name.clone(), g.add_boxed_layer(layer));
        }
        let mut calls: HashMap<String, usize> = HashMap::new();
        for n in &c.nodes {
            let id = *ids
                .get(&n.layer)
                .ok_or_else(|| OpsError::Config(format!("node calls unknown layer '{}'", n.layer)))?;
            let args = n
                .inputs
                .iter()
                .map(|name| {
                    named.get(name).copied().ok_or_else(|| {
                        OpsError::Config(format!("layer '{}' is called on unknown tensor '{name}'", n.layer))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let out = g.call(id, &args)?;
            let k = calls.entry(n.layer.clone()).or_insert(0);
            let name = if *k == 0 { n.layer.clone() } else { format!("{}@{k}", n.layer) };
            *k += 1;
            named.insert(name, out);
        }
        let outputs = c
            .outputs
            .iter()
            .map(|o| named.get(o).copied().ok_or_else(|| OpsError::Config(format!("unknown output tensor '{o}'"))))
            .collect::<Result<Vec<_>>>()?;
        match draw_weights {
            true => g.build(&inputs, &outputs, c.seed),
            false => g.build_to_load(&inputs, &outputs, c.seed),
        }
    }
}

impl ModelBuilder {
    /// Adds an already boxed layer, keeping its name (used when rebuilding from JSON).
    pub(crate) fn add_boxed_layer(&mut self, layer: Box<dyn crate::layers::Layer>) -> super::LayerId {
        self.push_layer(layer)
    }
}
