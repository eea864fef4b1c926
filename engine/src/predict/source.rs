//! The model a prediction function names, loaded once per process.
//!
//! A model URI is either a job dir (its `model.json`, and the final weights
//! that `results.json` names, or else the checkpoint `checkpoints/last.json`
//! names), or a weights file: `.safetensors` (a Kallista checkpoint or
//! weights version) or a Keras `.weights.h5`, with the `model.json` beside
//! it or in the job dir above it. A job dir's `labels.json` (the class
//! labels, in class-id order) is read when present.
//!
//! Every process keeps the models it loaded, keyed by the SHA-256 of the
//! config, weights and labels bytes; before each use (each batch DataFusion
//! hands a function) it resolves the URI again (a job dir's `results.json`
//! is read: training may have moved on) and checks the three objects'
//! stamps (size, entity tag, time), so a rewritten checkpoint is loaded
//! again and an unchanged one costs a few small requests per batch.

use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use kallista_ops::model::Model;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// A model ready to predict, with its class labels when its job dir has them.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub labels: Option<Vec<String>>,
    /// SHA-256 of the config, weights and labels bytes.
    pub hash: String,
    /// Models cut at a layer (`kallista_embed`), made once.
    cuts: Mutex<HashMap<String, Arc<Model>>>,
}

impl Loaded {
    /// The model cut at `layer` ([`Model::truncated_at`]), made on first use.
    pub fn cut_at(&self, layer: &str) -> Result<Arc<Model>> {
        let mut cuts = self.cuts.lock().map_err(|_| EngineError::Invalid("model cache poisoned".into()))?;
        if let Some(m) = cuts.get(layer) {
            return Ok(m.clone());
        }
        let cut = Arc::new(self.model.truncated_at(layer)?);
        cuts.insert(layer.to_string(), cut.clone());
        Ok(cut)
    }
}

/// Where the parts of a model URI are.
#[derive(Clone, Debug, PartialEq)]
struct Parts {
    config: Location,
    weights: Location,
    labels: Location,
}

/// What a job dir's `results.json` or `checkpoints/last.json` says of its weights.
#[derive(Deserialize)]
struct NamedWeights {
    #[serde(alias = "file")]
    weights: Option<Location>,
}

fn not_a_model(uri: &str, why: &str) -> EngineError {
    EngineError::Invalid(format!("model '{uri}': {why}"))
}

fn is_weights_file(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".h5")
}

fn resolve(uri: &str) -> Result<Parts> {
    let at = Location::parse(uri)?;
    if is_weights_file(at.file_name()) {
        let here = at.parent();
        let job = match blocking::exists(&here.join("model.json"))? {
            true => here,
            false => here.parent(),
        };
        if !blocking::exists(&job.join("model.json"))? {
            return Err(not_a_model(uri, "no model.json beside the weights file or in the job dir above it"));
        }
        return Ok(Parts { config: job.join("model.json"), weights: at, labels: job.join("labels.json") });
    }
    if !blocking::exists(&at.join("model.json"))? {
        return Err(not_a_model(
            uri,
            "neither a job dir (no model.json in it) nor a weights file (.safetensors, .weights.h5)",
        ));
    }
    let named = |name: &str| -> Result<Option<Location>> {
        let file = at.join(name);
        if !blocking::exists(&file)? {
            return Ok(None);
        }
        let text = blocking::read_string(&file)?;
        let named: NamedWeights = serde_json::from_str(&text)
            .map_err(|e| EngineError::Corrupt { path: file.to_string(), detail: e.to_string() })?;
        Ok(named.weights)
    };
    let weights = match named("results.json")? {
        Some(w) => w,
        None => named("checkpoints/last.json")?.ok_or_else(|| {
            not_a_model(uri, "the job has no trained weights yet (no results.json, no checkpoints/last.json)")
        })?,
    };
    Ok(Parts { config: at.join("model.json"), weights, labels: at.join("labels.json") })
}

/// The job dir of a model URI: where its `model.json` (and `binding.json`,
/// `labels.json`) are.
pub fn model_dir(uri: &str) -> Result<Location> {
    Ok(resolve(uri)?.config.parent())
}

fn load(parts: &Parts) -> Result<Loaded> {
    let config = blocking::read_string(&parts.config)?;
    let weights = blocking::read(&parts.weights)?;
    let labels_text = match blocking::exists(&parts.labels)? {
        true => Some(blocking::read_string(&parts.labels)?),
        false => None,
    };
    let hash =
        crate::digest::content_hash(&[config.as_bytes(), &weights, labels_text.as_deref().unwrap_or("").as_bytes()]);
    let mut model = Model::from_json(&config)?;
    match parts.weights.file_name().ends_with(".h5") {
        true => load_h5(&mut model, &parts.weights, &weights)?,
        false => model.load_weights_bytes(&weights, parts.weights.as_str())?,
    }
    let labels = match labels_text {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| EngineError::Corrupt {
            path: parts.labels.to_string(),
            detail: format!("not a list of labels: {e}"),
        })?),
        None => None,
    };
    Ok(Loaded { model, labels, hash, cuts: Mutex::new(HashMap::new()) })
}

/// Keras HDF5 is read from a file: a remote one goes through a temporary copy.
fn load_h5(model: &mut Model, at: &Location, bytes: &[u8]) -> Result<()> {
    if let Some(path) = at.local_path() {
        return Ok(model.load_keras_weights_h5(path)?);
    }
    let dir = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-h5"));
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::Io { path: dir.display().to_string(), source: e })?;
    let path = dir.join(at.file_name());
    std::fs::write(&path, bytes).map_err(|e| EngineError::Io { path: path.display().to_string(), source: e })?;
    let loaded = model.load_keras_weights_h5(&path);
    let _ = std::fs::remove_file(&path);
    Ok(loaded?)
}

/// A URI's parts and their stamps when they were last loaded, and the content hash.
struct Known {
    parts: Parts,
    stamps: (Option<String>, Option<String>, Option<String>),
    hash: String,
}

#[derive(Default)]
struct Cache {
    by_uri: HashMap<String, Known>,
    by_hash: HashMap<String, Arc<Loaded>>,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

fn stamps(p: &Parts) -> Result<(Option<String>, Option<String>, Option<String>)> {
    Ok((blocking::stamp(&p.config)?, blocking::stamp(&p.weights)?, blocking::stamp(&p.labels)?))
}

/// The model `uri` names (see the module docs), loaded at most once per
/// content in this process.
pub fn model_at(uri: &str) -> Result<Arc<Loaded>> {
    let parts = resolve(uri)?;
    let now = stamps(&parts)?;
    let lock = || CACHE.lock().map_err(|_| EngineError::Invalid("model cache poisoned".into()));
    {
        let cache = lock()?;
        if let Some(k) = cache.by_uri.get(uri).filter(|k| k.parts == parts && k.stamps == now) {
            if let Some(m) = cache.by_hash.get(&k.hash) {
                return Ok(m.clone());
            }
        }
    }
    // Loaded outside the lock: other queries' models stay usable meanwhile.
    let loaded = load(&parts)?;
    log::info!("loaded model {uri} ({}, weights {})", &loaded.hash[..12], parts.weights);
    let mut cache = lock()?;
    let hash = loaded.hash.clone();
    let model = cache.by_hash.entry(hash.clone()).or_insert_with(|| Arc::new(loaded)).clone();
    cache.by_uri.insert(uri.to_string(), Known { parts, stamps: now, hash });
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kallista-source-{}-{}", std::process::id(), files.len()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn job_dirs_and_weights_files_resolve_to_config_and_weights() {
        let dir = job_with(&[
            ("model.json", "{}"),
            ("checkpoints/last.json", r#"{"step": 5, "file": "s3://b/j/checkpoints/step-5.safetensors"}"#),
            ("checkpoints/step-5.safetensors", ""),
        ]);
        let p = resolve(dir.to_str().unwrap()).unwrap();
        assert_eq!(p.config.file_name(), "model.json");
        assert_eq!(p.weights.as_str(), "s3://b/j/checkpoints/step-5.safetensors");
        let ckpt = dir.join("checkpoints/step-5.safetensors");
        let p = resolve(ckpt.to_str().unwrap()).unwrap();
        assert_eq!(p.config, Location::from_path(&dir.join("model.json")).unwrap());
        assert_eq!(p.labels, Location::from_path(&dir.join("labels.json")).unwrap());
        let e = resolve(dir.join("checkpoints").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("neither a job dir (no model.json in it) nor a weights file"), "{e}");
    }

    #[test]
    fn a_job_without_weights_is_an_error_naming_it() {
        let dir = job_with(&[("model.json", "{}")]);
        let e = resolve(dir.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains(dir.to_str().unwrap()) && e.contains("no trained weights yet"), "{e}");
    }
}
