//! Frozen-feature caching (`training.cache_frozen: true`, `kallista
//! features`): when a model starts with a frozen TimeDistributed sub-model
//! (a pre-trained CNN over video frames), recomputing its features every epoch
//! is nearly all of the training time and changes nothing. So the model is
//! split there ([`Model::split_at`]): the head runs once over each split as a
//! distributed query (`kallista_embed` on the executors) whose result, the
//! split's rows with the frames replaced by their features, is stored as
//! Parquet in the job dir; the rest of the model trains from it in a job dir
//! of its own, and the whole model goes back to the job dir.
//!
//! A cache is named by the head's content (config without its seed, and
//! weights), the column it reads, the feature column, and the data's
//! identity: its files' names, sizes and stamps, or, for a `{sql: ...}`
//! split, the query's text (tables changed under the same query are not
//! noticed). Each build writes a new version folder and is complete once its
//! marker (`<name>.json`, naming that folder) is written, so a build cut
//! short or running beside another never passes for a finished one.
//!
//! Layout below the job dir ([`JobDir::features`]):
//! - `features/head-<H>/model.json`, `weights.safetensors`: the head;
//! - `features/<H>-<K>/<version>/*.parquet` and `features/<H>-<K>.json`: one split.

use crate::error::JobError;
use kallista_data::binding::Binding;
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::digest::content_hash;
use kallista_engine::store::{blocking, Location};
use kallista_engine::train::args::sql_ident;
use kallista_engine::train::driver::{TrainConfig, TrainReport};
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::{sql_str, DataSource};
use kallista_engine::EngineError;
use kallista_ops::model::{Model, Split};
use serde::{Deserialize, Serialize};

/// Bumped when what a cache holds changes, so that old caches are not read.
const FORMAT: &str = "kallista-features-1";

/// A model split for training from cached features, and where its caches live.
pub struct FrozenFeatures {
    /// The frozen head, the trainable rest, and the cut (the frozen layer's name).
    pub split: Split,
    /// The column the features are stored in (`<cut>_features`).
    pub column: String,
    /// The data column the head reads.
    pub source_column: String,
    /// Whether the rest of the model reads the head's column too (then it is kept).
    keep_source: bool,
    head_hash: String,
    root: Location,
}

/// What a finished cache records (its marker file).
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    format: String,
    split: String,
    source: String,
    head: String,
    column: String,
    data: Location,
}

fn short(hash: &str) -> &str {
    &hash[..16]
}

fn invalid(detail: impl std::fmt::Display) -> JobError {
    JobError::Invalid(format!("training.cache_frozen: {detail}"))
}

/// The binding's column of the model input called `input`.
fn column_of(model: &Model, binding: &Binding, input: &str) -> Option<String> {
    let at = model.input_specs().iter().position(|i| i.name == input)?;
    binding.inputs.get(at).cloned()
}

/// Where caching cuts a model, found without hashing anything.
struct Cut {
    split: Split,
    source_column: String,
    keep_source: bool,
}

/// Splits `model` at its frozen TimeDistributed layer; the error says why it
/// cannot be (no such layer, called more than once, trainable weights before
/// it, several inputs).
fn cut_of(model: &Model, binding: &Binding) -> Result<Cut, String> {
    let layer = model
        .frozen_feature_layer()
        .ok_or("the model has no frozen TimeDistributed layer at its front (set `trainable: false` on it)")?;
    let split = model.split_at(&layer).map_err(|e| e.to_string())?;
    if split.cut != layer {
        return Err(format!("layer '{layer}' is called more than once; its features are not one column"));
    }
    if split.head.count_trainable_params() > 0 {
        return Err(format!("the layers before '{layer}' have trainable weights"));
    }
    let head_inputs = split.head.input_specs();
    let [head_input] = head_inputs.as_slice() else {
        return Err(format!("'{layer}' reads {} model inputs; caching needs one", head_inputs.len()));
    };
    let source_column = column_of(model, binding, &head_input.name)
        .ok_or_else(|| format!("no column is bound to input '{}'", head_input.name))?;
    let keep_source = split.tail.input_specs().iter().any(|i| i.name == head_input.name);
    Ok(Cut { split, source_column, keep_source })
}

impl FrozenFeatures {
    /// Whether `model` can train from cached features (the job file's check,
    /// which names the key itself); says why not.
    pub fn check(model: &Model, binding: &Binding) -> Result<(), String> {
        cut_of(model, binding).map(|_| ())
    }

    /// Splits `model` for caching (see [`FrozenFeatures::check`]) and names
    /// its head by content; `binding` names the columns of its inputs.
    pub fn plan(model: &Model, binding: &Binding, job_dir: &JobDir) -> Result<FrozenFeatures, JobError> {
        let Cut { split, source_column, keep_source } = cut_of(model, binding).map_err(invalid)?;
        let column = format!("{}_features", split.cut);
        // The seed only draws initial weights, which the weights themselves stand for.
        let mut config: serde_json::Value = serde_json::from_str(&split.head.to_json()).map_err(invalid)?;
        config["config"]["seed"] = 0.into();
        let head_hash = content_hash(&[config.to_string().as_bytes(), &split.head.weights_bytes()?]);
        Ok(FrozenFeatures { split, column, source_column, keep_source, head_hash, root: job_dir.features() })
    }

    /// The head's weights file (its `model.json` beside it): the model URI of `kallista_embed`.
    fn head_weights(&self) -> Location {
        self.root.join(&format!("head-{}/weights.safetensors", short(&self.head_hash)))
    }

    /// Writes the head once (executors load it through the object store).
    fn store_head(&self) -> Result<(), JobError> {
        let weights = self.head_weights();
        if !blocking::exists(&weights)? {
            blocking::write(&weights.parent().join("model.json"), self.split.head.to_json())?;
            blocking::write(&weights, self.split.head.weights_bytes()?)?;
        }
        Ok(())
    }

    /// The cache's name for `source`: the head, the columns and the data's identity.
    fn cache_name(&self, source: &DataSource) -> Result<String, JobError> {
        let mut parts = vec![FORMAT.to_string(), self.source_column.clone(), self.column.clone()];
        match source {
            DataSource::Parquet(at) => {
                let files = match at.file_name().ends_with(".parquet") {
                    true => vec![(at.clone(), blocking::size(at)?.unwrap_or(0))],
                    false => blocking::list(at)?,
                };
                for (file, size) in files {
                    let stamp = blocking::stamp(&file)?.unwrap_or_default();
                    parts.push(format!("{file}\t{size}\t{stamp}"));
                }
            }
            DataSource::Sql(q) => parts.push(q.clone()),
        }
        let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        Ok(format!("{}-{}", short(&self.head_hash), short(&content_hash(&bytes))))
    }

    /// A finished cache's record, when it is one of this head and column.
    fn finished(&self, marker: &Location) -> Result<Option<CacheRecord>, JobError> {
        if !blocking::exists(marker)? {
            return Ok(None);
        }
        let record: CacheRecord = serde_json::from_str(&blocking::read_string(marker)?)
            .map_err(|e| JobError::Invalid(format!("{marker}: {e}")))?;
        let ours = record.format == FORMAT && record.head == self.head_hash && record.column == self.column;
        Ok(ours.then_some(record))
    }

    /// The features of `split` (named for logs) from `source`, computed on the
    /// cluster unless a finished cache of the same head and data exists.
    /// Returns the cache and whether it was built now.
    pub async fn features_of(
        &self,
        ctx: &SessionContext,
        split: &str,
        source: &DataSource,
    ) -> Result<(DataSource, bool), JobError> {
        let name = self.cache_name(source)?;
        let marker = self.root.join(&format!("{name}.json"));
        if let Some(record) = self.finished(&marker)? {
            return Ok((DataSource::Parquet(record.data), false));
        }
        self.store_head()?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let data = self.root.join(&format!("{name}/v{}-{}", stamp.as_millis(), std::process::id()));
        let kept = match self.keep_source {
            true => "*".to_string(),
            false => format!("* EXCLUDE ({})", sql_ident(&self.source_column)),
        };
        let sql = format!(
            "COPY (SELECT {kept}, kallista_embed({model}, {cut}, {source}) AS {column} FROM {relation}) \
             TO {out} STORED AS PARQUET",
            source = sql_ident(&self.source_column),
            model = sql_str(self.head_weights().as_str()),
            cut = sql_str(&self.split.cut),
            column = sql_ident(&self.column),
            relation = source.relation(),
            out = sql_str(&data.dir_url()),
        );
        let df = ctx.sql(&sql).await.map_err(EngineError::from)?;
        df.collect().await.map_err(EngineError::from)?;
        let record = CacheRecord {
            format: FORMAT.into(),
            split: split.into(),
            source: match source {
                DataSource::Parquet(at) => at.to_string(),
                DataSource::Sql(q) => q.clone(),
            },
            head: self.head_hash.clone(),
            column: self.column.clone(),
            data: data.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| JobError::Invalid(e.to_string()))?;
        blocking::write(&marker, json)?;
        Ok((DataSource::Parquet(data), true))
    }

    /// The binding of the rest of the model: the head's column replaced by the features.
    pub fn tail_binding(&self, binding: &Binding, model: &Model) -> Binding {
        let specs = self.split.tail.input_specs();
        let inputs = specs.iter().map(|i| match i.name == self.split.cut {
            true => self.column.clone(),
            false => column_of(model, binding, &i.name).unwrap_or_default(),
        });
        Binding { inputs: inputs.collect(), ..binding.clone() }
    }
}

/// The features of one split, logged with how they were had.
async fn cached(
    plan: &FrozenFeatures,
    ctx: &SessionContext,
    split: &str,
    source: &DataSource,
    log: &mut (impl FnMut(&str) + Send),
) -> Result<DataSource, JobError> {
    let started = std::time::Instant::now();
    let (cache, built) = plan.features_of(ctx, split, source).await?;
    let how = match built {
        true => format!("computed in {:.1} s", started.elapsed().as_secs_f64()),
        false => "cached".to_string(),
    };
    log(&format!("{split} features of '{}' ({how}): {}", plan.split.cut, cache.relation()));
    Ok(cache)
}

/// The features of every split, computed once, and the config that trains
/// the rest of the model from them in [`JobDir::from_features`].
pub async fn train_from_features(
    config: TrainConfig,
    ctx: &SessionContext,
    log: &mut (impl FnMut(&str) + Send),
) -> Result<(TrainConfig, FrozenFeatures), JobError> {
    let plan = FrozenFeatures::plan(&config.model, &config.binding, &config.job_dir)?;
    let train = cached(&plan, ctx, "train", &config.train, log).await?;
    let eval = match &config.eval {
        Some(source) => Some(cached(&plan, ctx, "eval", source, log).await?),
        None => None,
    };
    let test = match &config.test {
        Some(source) => Some(cached(&plan, ctx, "test", source, log).await?),
        None => None,
    };
    let tail = TrainConfig {
        job_dir: config.job_dir.from_features(),
        model: plan.split.tail.clone(),
        binding: plan.tail_binding(&config.binding, &config.model),
        train,
        eval,
        test,
        ..config
    };
    Ok((tail, plan))
}

/// After training from features: the whole model (frozen head and trained
/// rest) as the job dir's `model.json`, `weights/final.safetensors` and
/// `results.json`, and the metrics, so that evaluation and prediction read
/// the raw columns as for any job.
pub fn write_whole_model(
    whole: &Model,
    plan: &FrozenFeatures,
    job_dir: &JobDir,
    mut report: TrainReport,
) -> Result<TrainReport, JobError> {
    let weights = report.weights.clone().ok_or_else(|| JobError::Invalid("training wrote no final weights".into()))?;
    let mut tail = plan.split.tail.clone();
    tail.load_weights_bytes(&blocking::read(&weights)?, weights.as_str())?;
    let joined = whole.with_weights_of(&[&plan.split.head, &tail])?;
    blocking::write(&job_dir.final_weights(), joined.weights_bytes()?)?;
    blocking::write(&job_dir.model_json(), joined.to_json())?;
    blocking::write(&job_dir.metrics(), blocking::read(&job_dir.from_features().metrics())?)?;
    report.weights = Some(job_dir.final_weights());
    let json = serde_json::to_vec_pretty(&report).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&job_dir.results(), json)?;
    Ok(report)
}
