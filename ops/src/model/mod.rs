//! The Keras functional model: symbolic inputs, layers applied to symbolic
//! tensors (a layer object applied twice shares its weights), several inputs
//! and outputs.
//!
//! [`ModelBuilder`] records the graph; [`ModelBuilder::build`] draws the
//! weights from a seed and returns a [`Model`], which runs forward/backward
//! ([`Model::train_on_batch`] and friends), prints a [`Model::summary`],
//! serialises to JSON ([`Model::to_json`] / [`Model::from_json`]) and saves its
//! weights and optimizer state as safetensors.
//!
//! A `Model` is also a [`Layer`] (as in Keras): applied inside another model it
//! runs its graph on the outer tape, and its weights are keyed
//! `<model name>/<inner layer>/<weight>` in the outer model (see `nested.rs`).

mod builder;
mod config;
mod import;
mod keras_h5;
mod nested;
mod pass;
mod run;
mod split;
mod summary;
mod token_tables;
mod truncate;
mod weights;

pub use import::{read_torch_safetensors, TorchEntry, TorchLayout, TorchMapping};
pub use keras_h5::{read_keras_weights_h5, read_keras_weights_h5_bytes, KerasVars};
pub use weights::{
    parse_safetensors, read_safetensors, replace_file, safetensors_bytes, write_atomic, write_safetensors,
};

pub use builder::{LayerId, ModelBuilder, SymbolicTensor};
pub use run::{BatchResult, Compiled, ForwardPass, RangedUpdate, WeightGrads};
pub use split::Split;

use crate::layers::{Layer, TensorSpec, Weight};
use crate::optim::Optimizer;

/// A model input: its name and per-sample spec.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub spec: TensorSpec,
}

/// One application of a layer to symbolic tensors.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub layer: usize,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// Where a symbolic tensor comes from.
#[derive(Clone, Debug)]
pub(crate) struct SymTensor {
    pub name: String,
    pub spec: TensorSpec,
}

/// A built functional model.
#[derive(Clone, Debug)]
pub struct Model {
    pub(crate) name: String,
    pub(crate) layers: Vec<Box<dyn Layer>>,
    pub(crate) tensors: Vec<SymTensor>,
    pub(crate) nodes: Vec<Node>,
    /// Tensor indices of the inputs, in call order.
    pub(crate) inputs: Vec<usize>,
    pub(crate) outputs: Vec<usize>,
    pub(crate) seed: u64,
    pub(crate) compiled: Option<Compiled>,
    pub(crate) optimizer: Option<Optimizer>,
    /// Training steps run (drives the dropout random stream).
    pub(crate) steps_run: u64,
    /// Whether the optimizer may change the weights when this model is a layer
    /// of another model (Keras `model.trainable`).
    pub(crate) trainable: bool,
    /// Projected-token tables for inference (`token_tables.rs`).
    pub(crate) token_tables: token_tables::TokenTables,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's inputs with their specs.
    pub fn input_specs(&self) -> Vec<InputSpec> {
        self.inputs
            .iter()
            .map(|&t| InputSpec { name: self.tensors[t].name.clone(), spec: self.tensors[t].spec.clone() })
            .collect()
    }

    /// The output specs.
    pub fn output_specs(&self) -> Vec<TensorSpec> {
        self.outputs.iter().map(|&t| self.tensors[t].spec.clone()).collect()
    }

    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The layer called `name`.
    pub fn layer(&self, name: &str) -> Option<&dyn Layer> {
        self.layers.iter().find(|l| l.name() == name).map(|l| &**l)
    }

    /// Freezes or unfreezes a layer by name (a frozen layer gets no gradient and no optimizer slot).
    pub fn set_trainable(&mut self, layer: &str, trainable: bool) -> crate::Result<()> {
        let l = self
            .layers
            .iter_mut()
            .find(|l| l.name() == layer)
            .ok_or_else(|| crate::OpsError::Config(format!("no layer named '{layer}'")))?;
        l.set_trainable(trainable);
        Ok(())
    }

    /// Every weight in forward order (the order of [`Model::weight_keys`] and of
    /// [`WeightGrads`]): its key `<layer>/<path>`, value, and whether the optimizer
    /// may change it.
    pub(crate) fn weight_entries(&self) -> Vec<(String, &Weight, bool)> {
        self.layers
            .iter()
            .flat_map(|l| {
                let name = l.name().to_string();
                l.weights()
                    .into_iter()
                    .zip(l.weight_paths())
                    .map(move |(w, p)| (format!("{name}/{}", p.path), w, p.trainable))
            })
            .collect()
    }

    /// Every weight, mutable, in the order of [`Model::weight_entries`].
    pub(crate) fn weights_flat_mut(&mut self) -> Vec<&mut Weight> {
        self.layers.iter_mut().flat_map(|l| l.weights_mut()).collect()
    }

    /// The trainable weights, as `(index in [`Model::weight_keys`], key,
    /// elements)`: what a parameter server shards among its servers.
    pub fn trainable_entries(&self) -> Vec<(usize, String, usize)> {
        let entries = self.weight_entries().into_iter().enumerate();
        entries.filter(|(_, (_, _, t))| *t).map(|(i, (k, w, _))| (i, k, w.value.len())).collect()
    }

    /// Every weight's values, mutable, in [`Model::weight_keys`] order: a
    /// parameter server's worker writes pulled weights into them in place.
    pub fn weight_values_mut(&mut self) -> Vec<&mut [f32]> {
        self.weights_flat_mut().into_iter().map(|w| w.value.data_mut()).collect()
    }

    /// Total number of weights (trainable and not).
    pub fn count_params(&self) -> usize {
        self.weight_entries().iter().map(|(_, w, _)| w.value.len()).sum()
    }

    /// Number of weights the optimizer updates.
    pub fn count_trainable_params(&self) -> usize {
        self.weight_entries().iter().filter(|(_, _, t)| *t).map(|(_, w, _)| w.value.len()).sum()
    }

    /// `<layer>/<weight>` keys of all weights, in layer order; a nested model's or
    /// wrapper's weights are `<layer>/<inner layer>/<weight>`.
    pub fn weight_keys(&self) -> Vec<String> {
        self.weight_entries().into_iter().map(|(k, _, _)| k).collect()
    }

    /// A weight by key (see [`Model::weight_keys`]).
    pub fn weight(&self, key: &str) -> Option<&crate::tensor::Tensor> {
        self.weight_entries().into_iter().find(|(k, _, _)| k == key).map(|(_, w, _)| &w.value)
    }

    /// The optimizer, once compiled.
    pub fn optimizer(&self) -> Option<&Optimizer> {
        self.optimizer.as_ref()
    }

    /// The optimizer, to set its state (a driver averaging workers' slots).
    pub fn optimizer_mut(&mut self) -> Option<&mut Optimizer> {
        self.optimizer.as_mut()
    }
}
