//! Weight import from Keras 3 `.weights.h5` files (`model.save_weights(...)`,
//! also the `model.weights.h5` inside a `.keras` archive), read with the
//! pure-Rust `hdf5-pure` crate so that no HDF5 C library is needed.
//!
//! The format names HDF5 groups after the layer *classes*, numbered per
//! model (`layers/conv2d`, `layers/conv2d_1`, ...), and keeps the layer's own
//! name in the `name` attribute of its `vars` group, whose datasets `0`, `1`,
//! ... are the layer's weights in creation order. Wrapped objects sit below
//! their owner: `layer/` (TimeDistributed's layer), `layers/` (a nested
//! model's layers), `cell/` (an RNN's weights). So the import walks the tree,
//! names each `vars` group by the chain of `name` attributes
//! (`td_cnn/frame_cnn/conv1`; an RNN cell adds no name), and matches its
//! weights by position to the Kallista weights of the layer with that path,
//! whose order is Keras's (kernel, bias; gamma, beta, moving_mean,
//! moving_variance; kernel, recurrent_kernel, bias).
//!
//! Class-numbered group names are not used, so a file still loads when the
//! two sides created their layers in another order; layer *names* must agree.

use super::Model;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use hdf5_pure::{AttrValue, File, Group};
use std::collections::BTreeMap;
use std::path::Path;

/// The weights of one Keras object: its HDF5 path and its `vars` datasets in order.
#[derive(Clone, Debug)]
pub struct KerasVars {
    pub h5_path: String,
    pub weights: Vec<Tensor>,
}

/// Reads every `vars` group of a Keras `.weights.h5` file, keyed by the
/// layer path Kallista uses (`td_cnn/frame_cnn/conv1`, `video_lstm`); the
/// top model's own name is not part of it, as in Kallista's weight keys.
/// Groups without datasets (inputs, poolings) are left out.
pub fn read_keras_weights_h5(path: &Path) -> Result<BTreeMap<String, KerasVars>> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|e| h5_err(&p, "/", e))?;
    let mut out = BTreeMap::new();
    walk(&p, &file.root(), "", "", true, &mut out)?;
    Ok(out)
}

fn h5_err(path: &str, object: &str, e: impl std::fmt::Display) -> OpsError {
    OpsError::Hdf5 { path: path.into(), object: object.into(), detail: e.to_string() }
}

/// Visits `group` (at HDF5 path `at`) whose owner has Kallista path `prefix`.
fn walk(
    file: &str,
    group: &Group,
    at: &str,
    prefix: &str,
    inherit: bool,
    out: &mut BTreeMap<String, KerasVars>,
) -> Result<()> {
    let children = group.groups().map_err(|e| h5_err(file, at, e))?;
    let mut own = prefix.to_string();
    if children.iter().any(|c| c == "vars") {
        let vars_at = format!("{at}/vars");
        let vars = group.group("vars").map_err(|e| h5_err(file, &vars_at, e))?;
        // The root's name is the top model's, and an RNN cell's (`lstm_cell`)
        // is no Kallista layer: both keep their owner's path.
        if !inherit {
            let attrs = vars.attrs().map_err(|e| h5_err(file, &vars_at, e))?;
            let name = match attrs.get("name") {
                Some(
                    AttrValue::VarLenString(s)
                    | AttrValue::VarLenAsciiString(s)
                    | AttrValue::String(s)
                    | AttrValue::AsciiString(s),
                ) => s.clone(),
                Some(AttrValue::StringSized { value, .. }) => value.clone(),
                other => {
                    return Err(h5_err(
                        file,
                        &vars_at,
                        format!("expected a string attribute 'name' (Keras 3 format), got {other:?}"),
                    ))
                }
            };
            own = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        }
        let mut names = vars.datasets().map_err(|e| h5_err(file, &vars_at, e))?;
        let mut indexed = Vec::with_capacity(names.len());
        for n in names.drain(..) {
            let i: usize = n.parse().map_err(|_| h5_err(file, &vars_at, format!("dataset '{n}' is not an index")))?;
            indexed.push((i, n));
        }
        indexed.sort();
        let mut weights = vec![];
        for (k, (i, n)) in indexed.iter().enumerate() {
            let ds_at = format!("{vars_at}/{n}");
            if *i != k {
                return Err(h5_err(file, &ds_at, format!("weights are numbered with a gap (expected {k})")));
            }
            let ds = vars.dataset(n).map_err(|e| h5_err(file, &ds_at, e))?;
            let shape: Vec<usize> =
                ds.shape().map_err(|e| h5_err(file, &ds_at, e))?.into_iter().map(|d| d as usize).collect();
            let data = ds.read_f32().map_err(|e| h5_err(file, &ds_at, e))?;
            weights.push(Tensor::new(&shape, data).map_err(|e| h5_err(file, &ds_at, e))?);
        }
        if !weights.is_empty() {
            let entry =
                out.entry(own.clone()).or_insert_with(|| KerasVars { h5_path: vars_at.clone(), weights: vec![] });
            entry.weights.extend(weights);
        }
    }
    for c in children.iter().filter(|c| c.as_str() != "vars") {
        let c_at = format!("{at}/{c}");
        let child = group.group(c).map_err(|e| h5_err(file, &c_at, e))?;
        // `layers/` only groups a model's layers and has no vars of its own.
        walk(file, &child, &c_at, &own, c == "cell", out)?;
    }
    Ok(())
}

impl Model {
    /// Loads a Keras 3 `.weights.h5` file. Layer names must match the
    /// model's; weights match by position within each layer. Nothing changes
    /// on error; the [`OpsError::WeightMismatch`] lists every layer the file
    /// lacks, every layer of the file the model lacks, and every count or
    /// shape that differs, with the HDF5 path.
    pub fn load_keras_weights_h5(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = read_keras_weights_h5(path.as_ref())?;
        let mut by_layer: BTreeMap<String, Vec<(String, Vec<usize>)>> = BTreeMap::new();
        for (key, w, _) in self.weight_entries() {
            let layer = key.rsplit_once('/').map_or("", |(l, _)| l).to_string();
            by_layer.entry(layer).or_default().push((key, w.value.shape().to_vec()));
        }
        let mut problems = vec![];
        let mut weights = BTreeMap::new();
        for (layer, want) in &by_layer {
            let Some(have) = file.get(layer) else {
                let keys: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
                problems.push(format!("missing layer '{layer}' in the file (model expects {keys:?})"));
                continue;
            };
            if have.weights.len() != want.len() {
                problems.push(format!(
                    "layer '{layer}' ({}): file has {} weights, model expects {}",
                    have.h5_path,
                    have.weights.len(),
                    want.len()
                ));
                continue;
            }
            for (i, ((key, shape), t)) in want.iter().zip(&have.weights).enumerate() {
                if t.shape() != shape.as_slice() {
                    problems.push(format!(
                        "'{key}' ({}/{i}): file has {:?}, model expects {shape:?}",
                        have.h5_path,
                        t.shape()
                    ));
                } else {
                    weights.insert(key.clone(), t.clone());
                }
            }
        }
        for (layer, have) in &file {
            if !by_layer.contains_key(layer) {
                problems.push(format!(
                    "unexpected layer '{layer}' ({}) in the file (no such layer in the model)",
                    have.h5_path
                ));
            }
        }
        if !problems.is_empty() {
            return Err(OpsError::WeightMismatch(problems));
        }
        self.set_weights(&weights)
    }
}
