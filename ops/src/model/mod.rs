//! The Keras functional model: symbolic inputs, layers applied to symbolic
//! tensors (a layer object applied twice shares its weights), several inputs
//! and outputs.
//!
//! [`ModelBuilder`] records the graph; [`ModelBuilder::build`] draws the
//! weights from a seed and returns a [`Model`], which runs forward/backward
//! ([`Model::train_on_batch`] and friends), prints a [`Model::summary`],
//! serialises to JSON ([`Model::to_json`] / [`Model::from_json`]) and saves its
//! weights and optimizer state as safetensors.

mod builder;
mod config;
mod run;
mod summary;
mod weights;

pub use weights::{read_safetensors, write_atomic, write_safetensors};

pub use builder::{LayerId, ModelBuilder, SymbolicTensor};
pub use run::{BatchResult, Compiled, WeightGrads};

use crate::layers::{Layer, TensorSpec};
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

    /// Total number of weights (trainable and not).
    pub fn count_params(&self) -> usize {
        self.layers.iter().flat_map(|l| l.weights()).map(|w| w.value.len()).sum()
    }

    /// Number of weights the optimizer updates.
    pub fn count_trainable_params(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.trainable())
            .flat_map(|l| l.weights())
            .filter(|w| w.trainable)
            .map(|w| w.value.len())
            .sum()
    }

    /// `<layer>/<weight>` keys of all weights, in layer order.
    pub fn weight_keys(&self) -> Vec<String> {
        self.layers.iter().flat_map(|l| l.weights().iter().map(move |w| format!("{}/{}", l.name(), w.name))).collect()
    }

    /// A weight by `<layer>/<weight>` key.
    pub fn weight(&self, key: &str) -> Option<&crate::tensor::Tensor> {
        let (l, w) = key.split_once('/')?;
        self.layer(l)?.weights().iter().find(|x| x.name == w).map(|x| &x.value)
    }

    /// The optimizer, once compiled.
    pub fn optimizer(&self) -> Option<&Optimizer> {
        self.optimizer.as_ref()
    }
}
