//! `Embedding(input_dim, output_dim, mask_zero)`: token ids -> vectors.
//! Weight `embeddings [input_dim, output_dim]`, initialised U(-0.05, 0.05).
//!
//! Shapes: int `[B, L]` -> `[B, L, output_dim]`. With `mask_zero`, id 0 is
//! padding and the output carries a `[B, L]` mask that recurrent layers honour.

use super::{
    bad_input, declare_or_check, expect_inputs, layer_base_methods, parse_config, CallContext, Layer, LayerBase,
    TensorSpec, Value, Weight,
};
use crate::autodiff::{self, Mask, Tape, Var};
use crate::error::Result;
use crate::init::Initializer;
use crate::tensor::{DType, IntTensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Keras arguments of Embedding.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    pub input_dim: usize,
    pub output_dim: usize,
    #[serde(default)]
    pub mask_zero: bool,
    #[serde(default = "uniform")]
    pub embeddings_initializer: String,
}

fn uniform() -> String {
    "uniform".into()
}

/// A lookup table of learned vectors.
#[derive(Clone, Debug)]
pub struct Embedding {
    base: LayerBase,
    cfg: EmbeddingConfig,
}

impl Embedding {
    pub fn new(input_dim: usize, output_dim: usize) -> Self {
        Embedding {
            base: LayerBase::default(),
            cfg: EmbeddingConfig { input_dim, output_dim, mask_zero: false, embeddings_initializer: uniform() },
        }
    }

    /// Treat id 0 as padding and mask it.
    pub fn mask_zero(mut self, on: bool) -> Self {
        self.cfg.mask_zero = on;
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.base.name = name.into();
        self
    }

    /// The `[B, L]` mask of `ids` when id 0 is padding (`mask_zero`).
    pub(crate) fn mask_of(&self, ids: &IntTensor) -> Option<Mask> {
        self.cfg.mask_zero.then(|| Arc::new(ids.data().iter().map(|&i| i != 0).collect::<Vec<bool>>()))
    }

    pub(crate) fn from_config(v: &serde_json::Value) -> Result<Self> {
        Ok(Embedding { base: LayerBase::default(), cfg: parse_config("Embedding", v)? })
    }
}

impl Layer for Embedding {
    layer_base_methods!();

    fn class_name(&self) -> &'static str {
        "Embedding"
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("serialisable")
    }

    fn build(&mut self, inputs: &[TensorSpec]) -> Result<TensorSpec> {
        expect_inputs(self, inputs, 1)?;
        let x = &inputs[0];
        if x.dtype != DType::I32 {
            return Err(bad_input(self, "needs integer token ids", "int32 [batch, length]", &x.shape));
        }
        let init = Initializer::from_name(&self.cfg.embeddings_initializer)?;
        let w = vec![Weight::declare("embeddings", &[self.cfg.input_dim, self.cfg.output_dim], init)];
        let (name, class) = (self.base.name.clone(), self.class_name());
        declare_or_check(&name, class, &mut self.base, w)?;
        let mut shape = x.shape.clone();
        shape.push(self.cfg.output_dim);
        Ok(TensorSpec { shape, dtype: DType::F32, masked: self.cfg.mask_zero })
    }

    fn forward(&self, tape: &mut Tape, weights: &[Var], inputs: &[Value], _ctx: &mut CallContext<'_>) -> Result<Value> {
        let Value::Int(ids) = &inputs[0] else {
            return Err(bad_input(self, "got float input", "int32 token ids", &[]));
        };
        let y = autodiff::embedding(tape, weights[0], ids, self.name())?;
        Ok(Value::Float { var: y, mask: self.mask_of(ids) })
    }
}
