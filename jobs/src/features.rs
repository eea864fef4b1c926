//! Frozen-feature caching (`training.cache_frozen: true`, `kallista
//! features`): when a model starts with a frozen TimeDistributed sub-model
//! (a pre-trained CNN over video frames), recomputing its features every epoch
//! is nearly all of the training time and changes nothing. So the model is
//! split there ([`Model::split_at`]): the head runs once over each split as a
//! distributed query (`kallista_embed` on the executors) whose result, the
//! split's rows with the frames replaced by their features, is stored as
//! Parquet in the job dir; the rest of the model trains from it.
//!
//! A cache is named by the head's content hash (config and weights) and the
//! data's identity (its files' names, sizes and stamps, or a query's text),
//! so a changed frozen model or changed data builds a new one; a cache is
//! complete once its marker (`<name>.json`) is written, after the data.
//!
//! Layout below the job dir:
//! - `features/head-<H>/model.json`, `weights.safetensors`: the head;
//! - `features/<H>-<D>/*.parquet` and `features/<H>-<D>.json`: one split.

use crate::error::JobError;
use kallista_data::binding::Binding;
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::digest::content_hash;
use kallista_engine::store::{blocking, Location};
use kallista_engine::train::args::sql_ident;
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::{sql_str, DataSource};
use kallista_engine::EngineError;
use kallista_ops::model::Model;
use serde::{Deserialize, Serialize};

/// A model split for training from cached features, and where its caches live.
pub struct FrozenFeatures {
    /// The frozen head, the trainable rest, and the cut tensor's name.
    pub split: kallista_ops::model::Split,
    /// The column the features are stored in (`<cut>_features`).
    pub column: String,
    /// The data column the head reads (the binding's for the head's input).
    pub source_column: String,
    head_hash: String,
    root: Location,
}

/// What a finished cache records (its marker file).
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    split: String,
    source: String,
    head: String,
    column: String,
}

fn short(hash: &str) -> &str {
    &hash[..16]
}

impl FrozenFeatures {
    /// Splits `model` at its frozen TimeDistributed layer; `binding` names the columns of its inputs.
    pub fn plan(model: &Model, binding: &Binding, job_dir: &JobDir) -> Result<FrozenFeatures, JobError> {
        let layer = model.frozen_feature_layer().ok_or_else(|| {
            JobError::Invalid(
                "training.cache_frozen: the model has no frozen TimeDistributed layer at its front \
                 (set `trainable: false` on it)"
                    .into(),
            )
        })?;
        let split = model.split_at(&layer)?;
        let head_input = split.head.input_specs().remove(0).name;
        let at =
            model.input_specs().iter().position(|i| i.name == head_input).expect("the head's input is the model's");
        let source_column = binding.inputs[at].clone();
        let column = format!("{}_features", split.cut);
        let config = split.head.to_json();
        let head_hash = content_hash(&[config.as_bytes(), &split.head.weights_bytes()?]);
        Ok(FrozenFeatures { split, column, source_column, head_hash, root: job_dir.root().join("features") })
    }

    /// The head's weights file (its `model.json` beside it): the model URI of `kallista_embed`.
    fn head_weights(&self) -> Location {
        self.root.join(&format!("head-{}/weights.safetensors", short(&self.head_hash)))
    }

    /// Writes the head once (executors load it through the object store).
    fn store_head(&self) -> Result<(), JobError> {
        let weights = self.head_weights();
        if !blocking::exists(&weights)? {
            let dir = weights.parent();
            blocking::write(&dir.join("model.json"), self.split.head.to_json())?;
            blocking::write(&weights, self.split.head.weights_bytes()?)?;
        }
        Ok(())
    }

    /// The identity of a split's data: its files' names, sizes and stamps, or the query.
    fn data_identity(source: &DataSource) -> Result<String, JobError> {
        let mut parts = vec![];
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
        Ok(content_hash(&bytes))
    }

    /// The features of `split` (named for logs) from `source`, computed on the
    /// cluster unless a complete cache of the same head and data exists.
    /// Returns the cache and whether it was built now.
    pub async fn features_of(
        &self,
        ctx: &SessionContext,
        split: &str,
        source: &DataSource,
    ) -> Result<(DataSource, bool), JobError> {
        let name = format!("{}-{}", short(&self.head_hash), short(&Self::data_identity(source)?));
        let data = self.root.join(&name);
        let marker = self.root.join(&format!("{name}.json"));
        let cache = DataSource::Parquet(data.clone());
        if blocking::exists(&marker)? {
            return Ok((cache, false));
        }
        self.store_head()?;
        // A build cut short left files without a marker: start again from nothing.
        blocking::delete_all(&data)?;
        let sql = format!(
            "COPY (SELECT * EXCLUDE ({source}), kallista_embed({model}, {cut}, {source}) AS {column} FROM {relation}) \
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
            split: split.into(),
            source: match source {
                DataSource::Parquet(at) => at.to_string(),
                DataSource::Sql(q) => q.clone(),
            },
            head: self.head_hash.clone(),
            column: self.column.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| JobError::Invalid(e.to_string()))?;
        blocking::write(&marker, json)?;
        Ok((cache, true))
    }

    /// The binding of the rest of the model: the head's column replaced by the features.
    pub fn tail_binding(&self, binding: &Binding, model: &Model) -> Binding {
        let column_of = |input: &str| -> String {
            match input == self.split.cut {
                true => self.column.clone(),
                false => {
                    let at = model.input_specs().iter().position(|i| i.name == input).expect("a model input");
                    binding.inputs[at].clone()
                }
            }
        };
        Binding {
            inputs: self.split.tail.input_specs().iter().map(|i| column_of(&i.name)).collect(),
            ..binding.clone()
        }
    }
}
