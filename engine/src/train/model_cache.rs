//! Models on the executors, rebuilt once per job and reloaded only when the
//! driver publishes a new weights version.
//!
//! How weights reach executors: the driver writes each version as a
//! safetensors object in the job directory's store and names it in the
//! round's query; an executor that has not loaded that version yet reads it
//! (weights plus optimizer state) into its cached model. Cost per round and
//! executor: one object read and parse, `load_ms` in `metrics.jsonl`.

use super::round::{CompileSpec, ModelRef};
use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use kallista_ops::losses::Loss;
use kallista_ops::metrics::Metric;
use kallista_ops::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// A compiled model with the weights of `weights`.
struct Cached {
    weights: Location,
    model: Arc<Model>,
}

static MODELS: LazyLock<Mutex<HashMap<Location, Cached>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn cache() -> Result<std::sync::MutexGuard<'static, HashMap<Location, Cached>>> {
    MODELS.lock().map_err(|_| EngineError::Training("model cache poisoned".into()))
}

/// Builds a compiled model from its config, its weights left at zero for the caller to load.
fn compiled_model(r: &ModelRef) -> Result<Model> {
    let json = blocking::read_string(&r.config)?;
    let mut model = Model::from_json_to_load(&json)?;
    compile(&mut model, &r.compile)?;
    Ok(model)
}

/// Compiles `model` as `spec` says.
pub fn compile(model: &mut Model, spec: &CompileSpec) -> Result<()> {
    let metrics = spec.metrics.iter().map(|m| Metric::from_name(m)).collect::<kallista_ops::Result<Vec<_>>>()?;
    model.compile(spec.optimizer.clone(), Loss::from_name(&spec.loss)?, &metrics);
    Ok(())
}

/// The model of `r` with the weights version it names.
pub fn model_for(r: &ModelRef) -> Result<Arc<Model>> {
    let mut models = cache()?;
    if let Some(c) = models.get(&r.config) {
        if c.weights == r.weights {
            return Ok(c.model.clone());
        }
    }
    let mut model = match models.remove(&r.config) {
        Some(c) => Arc::try_unwrap(c.model).unwrap_or_else(|shared| (*shared).clone()),
        None => compiled_model(r)?,
    };
    model.load_weights_bytes(&blocking::read(&r.weights)?, &r.weights.to_string())?;
    let model = Arc::new(model);
    models.insert(r.config.clone(), Cached { weights: r.weights.clone(), model: model.clone() });
    Ok(model)
}

/// The model of `r` with the weights version it names but no optimizer
/// slots, loaded afresh (not cached): for an `async` worker, whose
/// parameter servers hold the slots; a third of what [`model_for`]
/// converts, and no copy of a cached model.
pub fn model_without_slots(r: &ModelRef) -> Result<Model> {
    let mut model = compiled_model(r)?;
    model.load_weights_bytes_without_slots(&blocking::read(&r.weights)?, &r.weights.to_string())?;
    Ok(model)
}

/// The model of `r` with the weights version it names, taken out of the
/// cache: no copy when nothing else holds it (the round's final stage, after
/// its workers finished, turns it into the next version).
pub fn take_model(r: &ModelRef) -> Result<Model> {
    let model = model_for(r)?;
    let mut models = cache()?;
    models.remove(&r.config);
    drop(models);
    Ok(Arc::try_unwrap(model).unwrap_or_else(|shared| (*shared).clone()))
}

/// Caches `model` as the version `weights` of the model of `config`: the
/// executor that published it needs no load in the next round.
pub fn keep(config: &Location, weights: &Location, model: Model) -> Result<()> {
    let mut models = cache()?;
    models.insert(config.clone(), Cached { weights: weights.clone(), model: Arc::new(model) });
    Ok(())
}
