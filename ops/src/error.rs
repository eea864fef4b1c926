//! The typed error of every fallible op, layer and model call.
//!
//! Each variant carries enough context to act on: the layer and the shapes for
//! graph errors, the position of a bad token id, the file for weight I/O.

use thiserror::Error;

/// Result alias used throughout `kallista-ops`.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// Everything that can go wrong in `kallista-ops`.
#[derive(Debug, Error)]
pub enum OpsError {
    /// An op got tensors whose shapes do not fit together.
    #[error("{op}: shape mismatch: {detail} (got {shapes:?})")]
    Shape { op: String, detail: String, shapes: Vec<Vec<usize>> },

    /// A layer was called on an input it cannot take.
    #[error("layer '{layer}' ({class}): {detail}; expected {expected}, got {got:?}")]
    LayerInput { layer: String, class: String, detail: String, expected: String, got: Vec<usize> },

    /// A token id is outside an Embedding's vocabulary.
    #[error(
        "layer '{layer}': token id {id} at [row {row}, position {pos}] is outside the vocabulary [0, {input_dim})"
    )]
    TokenOutOfRange { layer: String, id: i64, row: usize, pos: usize, input_dim: usize },

    /// A model was called with the wrong number of inputs or targets.
    #[error("model '{model}': expected {expected} {what}, got {got}")]
    Arity { model: String, what: &'static str, expected: usize, got: usize },

    /// A batch's tensor does not fit the model input it is fed to.
    #[error("model '{model}': input '{input}' expects {expected}, got {got}")]
    InputMismatch { model: String, input: String, expected: String, got: String },

    /// A model or layer configuration is invalid (unknown class, bad argument, dangling reference).
    #[error("config: {0}")]
    Config(String),

    /// Weights in a file do not match the model; lists every mismatch.
    #[error("weights do not match the model ({} mismatches):\n  {}", .0.len(), .0.join("\n  "))]
    WeightMismatch(Vec<String>),

    /// The model must be compiled (optimizer and loss set) before training.
    #[error("model '{0}' is not compiled: call compile() with an optimizer and a loss first")]
    NotCompiled(String),

    /// The CUDA backend was asked for but this build has no `cuda` feature.
    #[error("this build has no CUDA backend: rebuild with `cargo build --release --features cuda`, or use device cpu")]
    NotCompiledWithCuda,

    /// A CUDA device could not be opened or a CUDA call failed on it.
    #[error("{device}: {detail}")]
    Cuda { device: String, detail: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },

    /// A safetensors file is malformed.
    #[error("{path}: invalid safetensors file: {detail}")]
    Safetensors { path: String, detail: String },

    /// An HDF5 file (Keras `.weights.h5`) cannot be read, or an object in it
    /// is not what the Keras format puts there; `object` is its HDF5 path.
    #[error("{path}: HDF5 object '{object}': {detail}")]
    Hdf5 { path: String, object: String, detail: String },

    /// JSON (de)serialisation of a model config failed.
    #[error("model config JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl OpsError {
    /// Shorthand for a [`OpsError::Shape`] error.
    pub fn shape(op: impl Into<String>, detail: impl Into<String>, shapes: &[&[usize]]) -> Self {
        OpsError::Shape { op: op.into(), detail: detail.into(), shapes: shapes.iter().map(|s| s.to_vec()).collect() }
    }
}
