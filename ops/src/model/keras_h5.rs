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
//!
//! The *legacy* HDF5 format (Keras 2 `save_weights("x.h5")`, Keras 3's
//! legacy `model.save("x.h5")`, whose weights sit under `model_weights`) is
//! read too, because pretrained Keras 2 checkpoints only exist in it. There a
//! group (root or `model_weights`) lists its top-level layers in the
//! `layer_names` attribute; each layer group lists its weights in
//! `weight_names` (`conv1/kernel:0`, `lstm/lstm_cell/kernel:0`), and the
//! datasets sit at those relative paths. A weight name names its owner but not
//! a nested model (`td_cnn`'s `conv1/kernel` is Kallista's
//! `td_cnn/frame_cnn/conv1/kernel`), so owners are resolved against the
//! model's own layer paths below that top-level layer. Keras writes a nested
//! model's trainable weights before its non-trainable ones, but within one
//! owner the order is the layer's, so position matching per owner holds.

use super::Model;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use hdf5_pure::{AttrValue, File, Group};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The weights of one Keras object: its HDF5 path and its `vars` datasets in
/// order, with each dataset's own HDF5 path so that a mismatch can name it
/// (in the legacy format a layer's weights need not share one group).
#[derive(Clone, Debug)]
pub struct KerasVars {
    pub h5_path: String,
    pub weights: Vec<Tensor>,
    pub weight_paths: Vec<String>,
}

/// Reads every `vars` group of a Keras `.weights.h5` file, keyed by the
/// layer path Kallista uses (`td_cnn/frame_cnn/conv1`, `video_lstm`); the
/// top model's own name is not part of it, as in Kallista's weight keys.
/// Groups without datasets (inputs, poolings) are left out.
pub fn read_keras_weights_h5(path: &Path) -> Result<BTreeMap<String, KerasVars>> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|e| h5_err(&p, "/", e))?;
    let mut out = BTreeMap::new();
    walk(&p, &file.root(), "", "", true, &mut out, 0, &mut 0)?;
    Ok(out)
}

/// [`read_keras_weights_h5`] of a file's bytes; `source` names it in errors.
pub fn read_keras_weights_h5_bytes(bytes: Vec<u8>, source: &str) -> Result<BTreeMap<String, KerasVars>> {
    let file = File::from_bytes(bytes).map_err(|e| h5_err(source, "/", e))?;
    let mut out = BTreeMap::new();
    walk(source, &file.root(), "", "", true, &mut out, 0, &mut 0)?;
    Ok(out)
}

fn h5_err(path: &str, object: &str, e: impl std::fmt::Display) -> OpsError {
    OpsError::Hdf5 { path: path.into(), object: object.into(), detail: e.to_string() }
}

/// How deep `walk` follows groups, and how many it visits in all: HDF5 links
/// may form a cycle, or link one group many times, and Keras nests a few
/// levels deep.
const MAX_GROUP_DEPTH: usize = 64;
const MAX_GROUPS: usize = 100_000;

/// Visits `group` (at HDF5 path `at`) whose owner has Kallista path `prefix`;
/// `visits` counts the groups visited so far.
#[allow(clippy::too_many_arguments)]
fn walk(
    file: &str,
    group: &Group,
    at: &str,
    prefix: &str,
    inherit: bool,
    out: &mut BTreeMap<String, KerasVars>,
    depth: usize,
    visits: &mut usize,
) -> Result<()> {
    *visits += 1;
    if depth > MAX_GROUP_DEPTH || *visits > MAX_GROUPS {
        return Err(h5_err(
            file,
            at,
            format!("more than {MAX_GROUP_DEPTH} levels or {MAX_GROUPS} groups (links that loop or repeat?)"),
        ));
    }
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
        let mut paths = vec![];
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
            paths.push(ds_at);
        }
        if !weights.is_empty() {
            let entry = out.entry(own.clone()).or_insert_with(|| KerasVars {
                h5_path: vars_at.clone(),
                weights: vec![],
                weight_paths: vec![],
            });
            entry.weights.extend(weights);
            entry.weight_paths.extend(paths);
        }
    }
    for c in children.iter().filter(|c| c.as_str() != "vars") {
        let c_at = format!("{at}/{c}");
        let child = group.group(c).map_err(|e| h5_err(file, &c_at, e))?;
        // `layers/` only groups a model's layers and has no vars of its own.
        walk(file, &child, &c_at, &own, c == "cell", out, depth + 1, visits)?;
    }
    Ok(())
}

/// Reads a string-list attribute of the legacy format. Keras splits one that
/// outgrows HDF5's 64 KiB attribute limit into `name0`, `name1`, ..., so
/// those are joined; `None` when neither form is present. An empty list is
/// stored as an empty float array (numpy's default dtype), hence `F64Array`.
fn string_list_attr(file: &str, group: &Group, at: &str, name: &str) -> Result<Option<Vec<String>>> {
    let attrs = group.attrs().map_err(|e| h5_err(file, at, e))?;
    let as_list = |v: &AttrValue| -> Result<Vec<String>> {
        match v {
            AttrValue::StringArray(a)
            | AttrValue::AsciiStringArray(a)
            | AttrValue::VarLenStringArray(a)
            | AttrValue::VarLenAsciiStringArray(a)
            | AttrValue::VarLenAsciiCharArray(a) => Ok(a.clone()),
            AttrValue::StringArraySized { values, .. } | AttrValue::AsciiStringArraySized { values, .. } => {
                Ok(values.clone())
            }
            AttrValue::String(s)
            | AttrValue::AsciiString(s)
            | AttrValue::VarLenString(s)
            | AttrValue::VarLenAsciiString(s) => Ok(vec![s.clone()]),
            AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => Ok(vec![value.clone()]),
            AttrValue::F64Array(a) if a.is_empty() => Ok(vec![]),
            other => Err(h5_err(file, at, format!("attribute '{name}' is not a list of strings: {other:?}"))),
        }
    };
    if let Some(v) = attrs.get(name) {
        return Ok(Some(as_list(v)?));
    }
    let mut out = vec![];
    let mut k = 0;
    while let Some(v) = attrs.get(&format!("{name}{k}")) {
        out.extend(as_list(v)?);
        k += 1;
    }
    Ok(if k == 0 { None } else { Some(out) })
}

/// Finds the legacy-format weight group: the root (Keras 2 `save_weights`)
/// or `model_weights` (a full-model `model.save("x.h5")`), whichever carries
/// `layer_names`; `None` means the file is not in the legacy format.
fn legacy_root(file: &str, h5: &File) -> Result<Option<(Group, String, Vec<String>)>> {
    let root = h5.root();
    if let Some(names) = string_list_attr(file, &root, "/", "layer_names")? {
        return Ok(Some((root, String::new(), names)));
    }
    let children = root.groups().map_err(|e| h5_err(file, "/", e))?;
    if children.iter().any(|c| c == "model_weights") {
        let g = root.group("model_weights").map_err(|e| h5_err(file, "/model_weights", e))?;
        if let Some(names) = string_list_attr(file, &g, "/model_weights", "layer_names")? {
            return Ok(Some((g, "/model_weights".into(), names)));
        }
    }
    Ok(None)
}

/// Maps a legacy weight name inside top-level layer `layer` to the Kallista
/// layer path that owns it. The `:0` suffix (Keras 2), a leading repeat of
/// the layer's own name and RNN cell components (`lstm_cell`, which Kallista
/// folds into the RNN layer) are dropped; what remains names a sublayer,
/// looked up among the model's layer paths below `layer` by path suffix
/// (so the nested model's name may be absent). Unresolved owners keep the
/// literal path, which the loader then reports as unexpected.
fn legacy_owner(layer: &str, weight_name: &str, model_layers: &BTreeSet<String>) -> (String, String) {
    let name = match weight_name.rsplit_once(':') {
        Some((n, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => weight_name,
    };
    let mut parts: Vec<&str> = name.split('/').collect();
    let var = parts.pop().unwrap_or_default().to_string();
    if parts.first() == Some(&layer) {
        parts.remove(0);
    }
    parts.retain(|p| !p.ends_with("_cell"));
    if parts.is_empty() {
        return (layer.to_string(), var);
    }
    let rest = parts.join("/");
    let literal = format!("{layer}/{rest}");
    if model_layers.contains(&literal) {
        return (literal, var);
    }
    let below = format!("{layer}/");
    let tail = format!("/{rest}");
    let found: Vec<&String> = model_layers.iter().filter(|p| p.starts_with(&below) && p.ends_with(&tail)).collect();
    match found.as_slice() {
        [one] => ((*one).clone(), var),
        _ => (literal, var),
    }
}

/// Reads a legacy-format file into the same per-layer form as
/// [`read_keras_weights_h5`], owners resolved against `model_layers`.
fn read_legacy(
    file: &str,
    group: &Group,
    at: &str,
    layer_names: &[String],
    model_layers: &BTreeSet<String>,
) -> Result<BTreeMap<String, KerasVars>> {
    let mut out: BTreeMap<String, KerasVars> = BTreeMap::new();
    for layer in layer_names {
        let l_at = format!("{at}/{layer}");
        let lg = group.group(layer).map_err(|e| h5_err(file, &l_at, e))?;
        let Some(wnames) = string_list_attr(file, &lg, &l_at, "weight_names")? else {
            return Err(h5_err(file, &l_at, "layer group has no 'weight_names' attribute (legacy Keras HDF5)"));
        };
        for wn in &wnames {
            let ds_at = format!("{l_at}/{wn}");
            let mut parts: Vec<&str> = wn.split('/').collect();
            let leaf = parts.pop().unwrap_or_default();
            let mut g = lg.clone();
            for p in parts {
                g = g.group(p).map_err(|e| h5_err(file, &ds_at, e))?;
            }
            let ds = g.dataset(leaf).map_err(|e| h5_err(file, &ds_at, e))?;
            let shape: Vec<usize> =
                ds.shape().map_err(|e| h5_err(file, &ds_at, e))?.into_iter().map(|d| d as usize).collect();
            let data = ds.read_f32().map_err(|e| h5_err(file, &ds_at, e))?;
            let t = Tensor::new(&shape, data).map_err(|e| h5_err(file, &ds_at, e))?;
            let (owner, _) = legacy_owner(layer, wn, model_layers);
            let entry = out.entry(owner).or_insert_with(|| KerasVars {
                h5_path: l_at.clone(),
                weights: vec![],
                weight_paths: vec![],
            });
            entry.weights.push(t);
            entry.weight_paths.push(ds_at);
        }
    }
    Ok(out)
}

impl Model {
    /// Loads a Keras 3 `.weights.h5` file or a legacy Keras HDF5 file (Keras 2
    /// `save_weights`, or a `model.save("x.h5")` file's `model_weights`),
    /// told apart by the legacy `layer_names` attribute so that callers need
    /// one entry point. Layer names must match the
    /// model's; weights match by position within each layer. Nothing changes
    /// on error; the [`OpsError::WeightMismatch`] lists every layer the file
    /// lacks, every layer of the file the model lacks, and every count or
    /// shape that differs, with the HDF5 path.
    pub fn load_keras_weights_h5(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.load_keras_weights_h5_at("", path)
    }

    /// [`Model::load_keras_weights_h5`] for a file saved from one part of this
    /// model: the sub-model at layer path `at` (`td_cnn/inception_v3`, a
    /// pre-trained CNN inside a TimeDistributed), whose layer names the file
    /// uses without that prefix. The other weights stay as they are.
    pub fn load_keras_weights_h5_at(&mut self, at: &str, path: impl AsRef<Path>) -> Result<()> {
        let prefix = if at.is_empty() { String::new() } else { format!("{at}/") };
        let mut by_layer: BTreeMap<String, Vec<(String, Vec<usize>)>> = BTreeMap::new();
        for (key, w, _) in self.weight_entries() {
            let Some(local) = key.strip_prefix(&prefix) else { continue };
            let layer = local.rsplit_once('/').map_or("", |(l, _)| l).to_string();
            by_layer.entry(layer).or_default().push((key.clone(), w.value.shape().to_vec()));
        }
        if by_layer.is_empty() && !at.is_empty() {
            return Err(OpsError::Config(format!("model '{}' has no weights below '{at}'", self.name)));
        }
        let path = path.as_ref();
        let p = path.display().to_string();
        let h5 = File::open(path).map_err(|e| h5_err(&p, "/", e))?;
        let file = match legacy_root(&p, &h5)? {
            Some((group, at, names)) => {
                let model_layers: BTreeSet<String> = by_layer.keys().cloned().collect();
                read_legacy(&p, &group, &at, &names, &model_layers)?
            }
            None => {
                let mut out = BTreeMap::new();
                walk(&p, &h5.root(), "", "", true, &mut out, 0, &mut 0)?;
                out
            }
        };
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
            for ((key, shape), (t, at)) in want.iter().zip(have.weights.iter().zip(&have.weight_paths)) {
                if t.shape() != shape.as_slice() {
                    problems.push(format!("'{key}' ({}): file has {:?}, model expects {shape:?}", at, t.shape()));
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
        let mut all = self.named_weights();
        all.extend(weights);
        self.set_weights(&all)
    }
}
