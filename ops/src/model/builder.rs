//! Records a functional graph: `input`, `apply` (or `add_layer` + `call` for
//! shared layers), then `build` with a seed.

use super::{Model, Node, SymTensor};
use crate::error::{OpsError, Result};
use crate::init::Rng;
use crate::layers::{snake, Layer, TensorSpec};
use crate::tensor::DType;
use std::collections::HashMap;

/// A handle to a symbolic tensor of a [`ModelBuilder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymbolicTensor(pub(crate) usize);

/// A handle to a layer added to a [`ModelBuilder`] (to call it several times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerId(pub(crate) usize);

/// Builds a [`Model`] the Keras functional way.
pub struct ModelBuilder {
    name: String,
    layers: Vec<Box<dyn Layer>>,
    tensors: Vec<SymTensor>,
    nodes: Vec<Node>,
    inputs: Vec<usize>,
    used_names: HashMap<String, usize>,
}

impl ModelBuilder {
    pub fn new(name: &str) -> Self {
        ModelBuilder {
            name: name.into(),
            layers: vec![],
            tensors: vec![],
            nodes: vec![],
            inputs: vec![],
            used_names: HashMap::new(),
        }
    }

    /// `keras.Input(shape, dtype, name)`; `shape` excludes the batch axis.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> SymbolicTensor {
        let name = self.unique(name);
        self.tensors.push(SymTensor { name, spec: TensorSpec { shape: shape.to_vec(), dtype, masked: false } });
        self.inputs.push(self.tensors.len() - 1);
        SymbolicTensor(self.tensors.len() - 1)
    }

    /// Adds a layer without calling it; unnamed layers get Keras-style names (`dense_1`).
    pub fn add_layer(&mut self, mut layer: impl Layer + 'static) -> LayerId {
        let base = if layer.name().is_empty() { snake(layer.class_name()) } else { layer.name().to_string() };
        layer.set_name(self.unique(&base));
        self.layers.push(Box::new(layer));
        LayerId(self.layers.len() - 1)
    }

    pub(crate) fn push_layer(&mut self, layer: Box<dyn Layer>) -> LayerId {
        let name = layer.name().to_string();
        self.used_names.entry(name).or_insert(1);
        self.layers.push(layer);
        LayerId(self.layers.len() - 1)
    }

    /// Calls an added layer on symbolic tensors (again for a shared layer).
    pub fn call(&mut self, layer: LayerId, inputs: &[SymbolicTensor]) -> Result<SymbolicTensor> {
        let specs: Vec<TensorSpec> = inputs
            .iter()
            .map(|t| {
                self.tensors
                    .get(t.0)
                    .map(|s| s.spec.clone())
                    .ok_or_else(|| OpsError::Config(format!("symbolic tensor {} is not from this builder", t.0)))
            })
            .collect::<Result<_>>()?;
        let l = self
            .layers
            .get_mut(layer.0)
            .ok_or_else(|| OpsError::Config(format!("layer id {} is not from this builder", layer.0)))?;
        let out = l.build(&specs)?;
        if let Some(w) = l.weights().into_iter().find(|w| w.oversized.is_some()) {
            return Err(OpsError::Config(format!(
                "layer '{}': weight '{}' of shape {:?} would hold more than {} elements",
                l.name(),
                w.name,
                w.oversized.as_deref().unwrap_or_default(),
                crate::layers::MAX_WEIGHT_ELEMENTS
            )));
        }
        let calls = self.nodes.iter().filter(|n| n.layer == layer.0).count();
        let name = if calls == 0 { l.name().to_string() } else { format!("{}@{calls}", l.name()) };
        self.tensors.push(SymTensor { name, spec: out });
        self.nodes.push(Node {
            layer: layer.0,
            inputs: inputs.iter().map(|t| t.0).collect(),
            output: self.tensors.len() - 1,
        });
        Ok(SymbolicTensor(self.tensors.len() - 1))
    }

    /// `layer(inputs)`: adds and calls a layer.
    pub fn apply(&mut self, layer: impl Layer + 'static, inputs: &[SymbolicTensor]) -> Result<SymbolicTensor> {
        let id = self.add_layer(layer);
        self.call(id, inputs)
    }

    /// The spec of a symbolic tensor.
    pub fn spec(&self, t: SymbolicTensor) -> &TensorSpec {
        &self.tensors[t.0].spec
    }

    /// `keras.Model(inputs, outputs)`, with weights drawn from `seed`.
    pub fn build(self, inputs: &[SymbolicTensor], outputs: &[SymbolicTensor], seed: u64) -> Result<Model> {
        let mut model = self.build_to_load(inputs, outputs, seed)?;
        model.initialize(seed);
        Ok(model)
    }

    /// [`Self::build`] with the weights left at zero, for a caller that
    /// loads every one of them next (drawing W1's took 60 ms).
    pub(crate) fn build_to_load(
        self,
        inputs: &[SymbolicTensor],
        outputs: &[SymbolicTensor],
        seed: u64,
    ) -> Result<Model> {
        let want: Vec<usize> = inputs.iter().map(|t| t.0).collect();
        for &i in &want {
            if !self.inputs.contains(&i) {
                return Err(OpsError::Config(format!(
                    "model '{}': '{}' is not an input",
                    self.name,
                    self.tensors.get(i).map_or("?", |t| &t.name)
                )));
            }
        }
        let model = Model {
            name: self.name,
            layers: self.layers,
            tensors: self.tensors,
            nodes: self.nodes,
            inputs: want,
            outputs: outputs.iter().map(|t| t.0).collect(),
            seed,
            compiled: None,
            optimizer: None,
            steps_run: 0,
            trainable: true,
            token_tables: Default::default(),
        };
        model.check_reachable()?;
        Ok(model)
    }

    fn unique(&mut self, base: &str) -> String {
        let n = self.used_names.entry(base.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_string()
        } else {
            format!("{base}_{}", *n - 1)
        }
    }
}

impl Model {
    /// Every output must be computable from the declared inputs.
    pub(crate) fn check_reachable(&self) -> Result<()> {
        let mut known: Vec<bool> = vec![false; self.tensors.len()];
        for &i in &self.inputs {
            known[i] = true;
        }
        for n in &self.nodes {
            if n.inputs.iter().all(|&i| known[i]) {
                known[n.output] = true;
            }
        }
        for &o in &self.outputs {
            if !known[o] {
                return Err(OpsError::Config(format!(
                    "model '{}': output '{}' does not depend only on the model's inputs",
                    self.name, self.tensors[o].name
                )));
            }
        }
        Ok(())
    }

    /// Draws every weight from its initialiser: one generator per layer, seeded
    /// in layer order. Nested models keep their weights (see [`Layer::init_weights`]).
    pub fn initialize(&mut self, seed: u64) {
        let mut master = Rng::new(seed);
        for layer in self.layers.iter_mut() {
            let mut rng = Rng::new(master.next_seed());
            layer.init_weights(&mut rng);
        }
        self.seed = seed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names_match_keras() {
        assert_eq!(snake("LSTM"), "lstm");
        assert_eq!(snake("Dense"), "dense");
        assert_eq!(snake("GlobalAveragePooling2D"), "global_average_pooling2d");
    }
}
