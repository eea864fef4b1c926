//! A model used as a layer of another model, as in Keras where a `Model` is a
//! `Layer`: `outer.apply(cnn, &[frames])`, or inside `TimeDistributed`.
//!
//! Shapes: the nested model's input specs -> its single output spec.
//!
//! The nested model runs its own graph on the outer model's tape, on the weight
//! vars the outer model hands it (all of its layers' weights, in layer order),
//! so gradients, frozen weights and state updates work as for any layer.
//!
//! Weight keys: a weight is keyed by the names of the layers from the outer
//! model down to the layer that owns it, then its own name:
//! `frame_cnn/conv1/kernel`, or `td_cnn/frame_cnn/conv1/kernel` when the
//! nested model sits inside a `TimeDistributed` named `td_cnn`. That is
//! Keras 3's variable path when the inner layers are built inside their
//! wrapper, it never collides (layer names are unique at each level), and a
//! checkpoint of the outer model holds the nested model's weights under one
//! prefix, ready to be loaded elsewhere.
//!
//! Initialisation: building the outer model keeps the nested model's weights
//! (drawn from its own seed when it was built, or loaded, e.g. pre-trained),
//! as Keras does. Freezing (`Layer::set_trainable(false)`, Keras
//! `model.trainable = False`) freezes every inner layer, so its
//! BatchNormalization layers also run in inference mode.

use super::config::FunctionalJson;
use super::Model;
use crate::autodiff::{Tape, Var};
use crate::error::{OpsError, Result};
use crate::init::Rng;
use crate::layers::{CallContext, Layer, TensorSpec, Value, Weight, WeightPath};

impl Model {
    /// A nested model from its layer config (the graph config object).
    pub(crate) fn from_layer_config(v: &serde_json::Value) -> Result<Model> {
        let c: FunctionalJson =
            serde_json::from_value(v.clone()).map_err(|e| OpsError::Config(format!("Functional config: {e}")))?;
        Model::from_functional(c)
    }

    /// Freezes or unfreezes every layer (Keras `model.trainable = ...`); only
    /// matters when this model is a layer of another one, or for its own
    /// training (a frozen layer gets no gradient).
    pub fn set_all_trainable(&mut self, trainable: bool) {
        Layer::set_trainable(self, trainable);
    }

    fn layer_error(&self, detail: String, expected: String, got: &[usize]) -> OpsError {
        OpsError::LayerInput {
            layer: self.name.clone(),
            class: "Functional".into(),
            detail,
            expected,
            got: got.to_vec(),
        }
    }
}

impl Layer for Model {
    fn class_name(&self) -> &'static str {
        "Functional"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn set_name(&mut self, name: String) {
        self.name = name;
    }

    fn trainable(&self) -> bool {
        self.trainable
    }

    fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
        for l in self.layers.iter_mut() {
            l.set_trainable(trainable);
        }
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.functional_json()).expect("model config serialises")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        if inputs.len() != self.inputs.len() {
            return Err(self.layer_error(
                format!("called on {} inputs", inputs.len()),
                format!("{} input(s)", self.inputs.len()),
                &[],
            ));
        }
        for (got, &t) in inputs.iter().zip(&self.inputs) {
            let want = &self.tensors[t].spec;
            if got.shape != want.shape || got.dtype != want.dtype {
                return Err(self.layer_error(
                    format!("input '{}' does not fit", self.tensors[t].name),
                    format!("{} {}", want.dtype, want.keras_shape()),
                    &got.shape,
                ));
            }
        }
        match self.outputs[..] {
            [o] => Ok(self.tensors[o].spec.clone()),
            _ => Err(self.layer_error(
                format!("a nested model must have one output, this one has {}", self.outputs.len()),
                "a single-output model".into(),
                &[],
            )),
        }
    }

    fn weights(&self) -> Vec<&Weight> {
        self.layers.iter().flat_map(|l| l.weights()).collect()
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        self.layers.iter_mut().flat_map(|l| l.weights_mut()).collect()
    }

    fn weight_paths(&self) -> Vec<WeightPath> {
        self.layers
            .iter()
            .flat_map(|l| {
                let name = l.name().to_string();
                l.weight_paths().into_iter().map(move |p| WeightPath {
                    path: format!("{name}/{}", p.path),
                    trainable: self.trainable && p.trainable,
                })
            })
            .collect()
    }

    /// Keeps the weights the nested model already has.
    fn init_weights(&mut self, _rng: &mut Rng) {}

    fn uses_batch_statistics(&self) -> bool {
        self.layers.iter().any(|l| l.uses_batch_statistics())
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], ctx: &mut CallContext<'_>) -> Result<Value> {
        let mut wvars = Vec::with_capacity(self.layers.len());
        let mut at = 0;
        for l in &self.layers {
            let n = l.weights().len();
            let Some(vars) = weights.get(at..at + n) else {
                return Err(self.layer_error(
                    "given too few weight vars".into(),
                    format!("{} weights", Layer::weights(self).len()),
                    &[weights.len()],
                ));
            };
            wvars.push(vars.to_vec());
            at += n;
        }
        let outs = self.run_graph(tape, &wvars, inputs.to_vec(), ctx, &[])?;
        outs.into_iter().next().ok_or_else(|| self.layer_error("has no output".into(), "one output".into(), &[]))
    }

    fn box_clone(&self) -> Box<dyn Layer> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
