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

/// Writes `bytes` to `path` atomically and durably (see [`replace_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, true, |tmp| std::fs::write(tmp, bytes))
}

/// Writes `path` through a temporary file in the same directory (`write`
/// fills it) and a rename, so that readers never see a torn file. `durable`
/// adds an fsync before the rename (checkpoints); without it a crash may lose
/// the file, which suits scratch files a crash makes obsolete anyway.
pub fn replace_file(path: &Path, durable: bool, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let written = write(&tmp).and_then(|()| if durable { std::fs::File::open(&tmp)?.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

// The byte casts below are little-endian layouts, as safetensors requires.
#[cfg(target_endian = "big")]
compile_error!("weights files are little-endian; big-endian targets need a byte-swapping path");

/// `values` as their little-endian bytes, without a copy.
fn f32_as_le_bytes(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

/// Little-endian f32 bytes (any alignment) as values, in one copy.
fn f32_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / 4;
    let mut out = vec![0f32; n];
    bytemuck::cast_slice_mut::<f32, u8>(&mut out).copy_from_slice(&bytes[..n * 4]);
    out
}

/// Reads every f32 tensor of a safetensors file, with its metadata.
pub fn read_safetensors(path: &Path) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    parse_safetensors(&bytes, &path.display().to_string())
}

/// Every f32 tensor of safetensors `bytes` (read from `source`, which errors name), with the metadata.
pub fn parse_safetensors(bytes: &[u8], source: &str) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    parse_safetensors_where(bytes, source, |_| true)
}

/// [`parse_safetensors`] of the tensors whose names `keep` takes; the others
/// are not converted.
pub fn parse_safetensors_where(
    bytes: &[u8],
    source: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bad = |detail: String| OpsError::Safetensors { path: source.to_string(), detail };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors().into_iter().filter(|(name, _)| keep(name)) {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' is {:?}, expected F32", view.dtype())));
        }
        let data: Vec<f32> = f32_from_le_bytes(view.data());
        out.insert(name, Tensor::new(view.shape(), data)?);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// f32 tensors and metadata as the bytes of a safetensors file (for stores
/// that take whole objects, such as S3).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = tensors.iter().map(|(k, t)| (k.clone(), t.shape().to_vec(), t.data()));
    views_bytes(views, metadata)
}

/// Borrowed f32 values as safetensors bytes.
fn views_bytes<'a>(
    tensors: impl Iterator<Item = (String, Vec<usize>, &'a [f32])>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bad =
        |e: safetensors::SafeTensorError| OpsError::Safetensors { path: "(in memory)".into(), detail: e.to_string() };
    let views: Vec<(String, TensorView<'_>)> = tensors
        .map(|(k, shape, values)| {
            TensorView::new(Dtype::F32, shape, f32_as_le_bytes(values)).map(|v| (k, v)).map_err(bad)
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, &Some(metadata)).map_err(bad)
}

/// Writes f32 tensors and metadata as a safetensors file through a temporary
/// file and a rename, streamed from the tensors; `durable` adds an fsync
/// before the rename (checkpoints), without it a crash may lose the file but
/// never leaves a torn one (scratch files a crash makes obsolete anyway).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
    durable: bool,
) -> Result<()> {
    let views = tensors.iter().map(|(k, t)| (k.clone(), t.shape().to_vec(), t.data()));
    write_views(path, views, metadata, durable)
}

/// Streams borrowed f32 values to `path` (see [`write_safetensors`]).
fn write_views<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (String, Vec<usize>, &'a [f32])>,
    metadata: HashMap<String, String>,
    durable: bool,
) -> Result<()> {
    let bad = |e: safetensors::SafeTensorError| OpsError::Safetensors {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let views: Vec<(String, TensorView<'_>)> = tensors
        .map(|(k, shape, values)| {
            TensorView::new(Dtype::F32, shape, f32_as_le_bytes(values)).map(|v| (k, v)).map_err(bad)
        })
        .collect::<Result<_>>()?;
    replace_file(path, durable, |tmp| {
        safetensors::serialize_to_file(views, &Some(metadata), tmp).map_err(std::io::Error::other)
    })
}

impl Model {
    /// All weights by `<layer>/<weight>` key.
    pub fn named_weights(&self) -> BTreeMap<String, Tensor> {
        self.weight_entries().into_iter().map(|(k, w, _)| (k, w.value.clone())).collect()
    }

    /// Saves weights, optimizer state (when compiled) and the model config.
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_weights(path.as_ref(), true)
    }

    /// What [`Model::save_weights`] writes, streamed to `path`; `durable`
    /// as in [`write_safetensors`].
    pub fn write_weights(&self, path: &Path, durable: bool) -> Result<()> {
        let (views, meta) = self.weight_views()?;
        write_views(path, views.into_iter(), meta, durable)
    }

    /// What [`Model::save_weights`] writes, as bytes.
    pub fn weights_bytes(&self) -> Result<Vec<u8>> {
        let (views, meta) = self.weight_views()?;
        views_bytes(views.into_iter(), meta)
    }

    /// Every weight and optimizer slot by its file key, borrowed, and the file's metadata.
    #[allow(clippy::type_complexity)]
    fn weight_views(&self) -> Result<(Vec<(String, Vec<usize>, &[f32])>, HashMap<String, String>)> {
        let entries = self.weight_entries();
        let mut views: Vec<(String, Vec<usize>, &[f32])> =
            entries.iter().map(|(k, w, _)| (k.clone(), w.value.shape().to_vec(), w.value.data())).collect();
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
                    if shape.iter().product::<usize>() != s.len() {
                        return Err(OpsError::shape(
                            format!("optimizer slot '{key}/{name}'"),
                            "slot size differs from the weight",
                            &[&shape, &[s.len()]],
                        ));
                    }
                    views.push((format!("{OPT_PREFIX}{key}/{name}"), shape.clone(), s.as_slice()));
                }
            }
        }
        Ok((views, meta))
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
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        self.load_weights_bytes(&bytes, &path.display().to_string())
    }

    /// [`Model::load_weights`] from the bytes of a file read from `source` (which errors name).
    pub fn load_weights_bytes(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        self.load_weights_bytes_with(bytes, source, true)
    }

    /// [`Model::load_weights_bytes`] without the optimizer's slots, left
    /// empty: for a model whose optimizer runs elsewhere (an `async`
    /// worker's, whose parameter servers hold them). Adam's slots are twice
    /// the weights: they are neither converted nor kept.
    pub fn load_weights_bytes_without_slots(&mut self, bytes: &[u8], source: &str) -> Result<()> {
        self.load_weights_bytes_with(bytes, source, false)
    }

    fn load_weights_bytes_with(&mut self, bytes: &[u8], source: &str, slots: bool) -> Result<()> {
        let (tensors, meta) = parse_safetensors_where(bytes, source, |name| slots || !name.starts_with(OPT_PREFIX))?;
        let (mut opt_tensors, weights): (BTreeMap<_, _>, BTreeMap<_, _>) =
            tensors.into_iter().partition(|(k, _)| k.starts_with(OPT_PREFIX));
        self.set_weights(&weights)?;
        let keys = self.weight_keys();
        if let Some(opt) = self.optimizer.as_mut() {
            opt.iterations = meta.get(ITER_KEY).and_then(|s| s.parse().ok()).unwrap_or(0);
            opt.slots.clear();
            let names = opt.config.kind.slot_names();
            for key in keys {
                let slots: Option<Vec<crate::buf::Buf>> = names
                    .iter()
                    .map(|n| opt_tensors.remove(&format!("{OPT_PREFIX}{key}/{n}")).map(|t| t.into_buf()))
                    .collect();
                if let Some(s) = slots {
                    opt.slots.insert(key, s);
                }
            }
        }
        Ok(())
    }
}
