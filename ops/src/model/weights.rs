//! Weights and optimizer state as safetensors: keys `<layer>/<weight>`, and
//! `optimizer/<layer>/<weight>/<slot>` for the slots; the metadata holds the
//! model's JSON config and the optimizer's iteration count. Files are written
//! to a temporary name and renamed, so a crash never leaves a torn file.

use super::Model;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const CONFIG_KEY: &str = "kallista.model_config";
const ITER_KEY: &str = "kallista.optimizer_iterations";
const OPT_PREFIX: &str = "optimizer/";

fn io_err(path: &Path, source: std::io::Error) -> OpsError {
    OpsError::Io { path: path.display().to_string(), source }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("weights"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Reads every f32 tensor of a safetensors file, with its metadata.
pub fn read_safetensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let bad = |detail: String| OpsError::Safetensors { path: path.display().to_string(), detail };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' is {:?}, expected F32", view.dtype())));
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, Tensor::new(view.shape(), data)?);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Writes f32 tensors and metadata as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &safetensors_bytes(path, tensors, metadata)?)
}

/// f32 tensors and metadata in the safetensors format (`path` names errors).
pub fn safetensors_bytes(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: BTreeMap<&String, Vec<u8>> =
        tensors.iter().map(|(k, t)| (k, t.data().iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            TensorView::new(Dtype::F32, t.shape().to_vec(), &bytes[k])
                .map(|v| (k.clone(), v))
                .map_err(|e| OpsError::Safetensors { path: path.display().to_string(), detail: e.to_string() })
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| OpsError::Safetensors { path: path.display().to_string(), detail: e.to_string() })
}

impl Model {
    /// All weights by `<layer>/<weight>` key.
    pub fn named_weights(&self) -> BTreeMap<String, Tensor> {
        self.weight_entries().into_iter().map(|(k, w, _)| (k, w.value.clone())).collect()
    }

    /// Saves weights, optimizer state (when compiled) and the model config.
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.weights_bytes(path.as_ref())?)
    }

    /// What [`Model::save_weights`] writes, as bytes (`path` names errors).
    pub fn weights_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let mut tensors = self.named_weights();
        let mut meta = HashMap::from([(CONFIG_KEY.to_string(), self.to_json())]);
        if let Some(opt) = &self.optimizer {
            meta.insert(ITER_KEY.into(), opt.iterations.to_string());
            let names = opt.config.kind.slot_names();
            for (key, slots) in &opt.slots {
                let shape = self
                    .weight(key)
                    .map(|t| t.shape().to_vec())
                    .unwrap_or_else(|| vec![slots.first().map_or(0, |s| s.len())]);
                for (name, s) in names.iter().zip(slots) {
                    tensors.insert(format!("{OPT_PREFIX}{key}/{name}"), Tensor::new(&shape, s.clone())?);
                }
            }
        }
        safetensors_bytes(path, &tensors, meta)
    }

    /// Sets weights by key; every key and shape must match the model. On any
    /// mismatch nothing is changed and the error lists every mismatch.
    pub fn set_weights(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut problems = vec![];
        let keys = self.weight_keys();
        for (key, w, _) in self.weight_entries() {
            match weights.get(&key) {
                None => problems.push(format!("missing '{key}' (model expects {:?})", w.value.shape())),
                Some(t) if t.shape() != w.value.shape() => {
                    problems.push(format!("'{key}': file has {:?}, model expects {:?}", t.shape(), w.value.shape()))
                }
                _ => {}
            }
        }
        let known: std::collections::HashSet<&String> = keys.iter().collect();
        for k in weights.keys() {
            if !known.contains(k) {
                problems.push(format!("unexpected '{k}' (no such weight in the model)"));
            }
        }
        if !problems.is_empty() {
            return Err(OpsError::WeightMismatch(problems));
        }
        for (w, key) in self.weights_flat_mut().into_iter().zip(&keys) {
            w.value = weights[key].clone();
        }
        Ok(())
    }

    /// Loads weights (and optimizer state, when the file has it and the model is compiled).
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let (tensors, meta) = read_safetensors(path.as_ref())?;
        let (opt_tensors, weights): (BTreeMap<_, _>, BTreeMap<_, _>) =
            tensors.into_iter().partition(|(k, _)| k.starts_with(OPT_PREFIX));
        self.set_weights(&weights)?;
        let keys = self.weight_keys();
        if let Some(opt) = self.optimizer.as_mut() {
            opt.iterations = meta.get(ITER_KEY).and_then(|s| s.parse().ok()).unwrap_or(0);
            opt.slots.clear();
            let names = opt.config.kind.slot_names();
            for key in keys {
                let slots: Option<Vec<Vec<f32>>> = names
                    .iter()
                    .map(|n| opt_tensors.get(&format!("{OPT_PREFIX}{key}/{n}")).map(|t| t.data().to_vec()))
                    .collect();
                if let Some(s) = slots {
                    opt.slots.insert(key, s);
                }
            }
        }
        Ok(())
    }
}
