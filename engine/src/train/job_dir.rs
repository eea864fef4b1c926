//! [`JobDir`]: the layout of a job directory, in one place. Driver, workers,
//! the reducer and the CLI all name the job's objects through it, on any
//! store (a local directory or a prefix in a bucket).
//!
//! - `model.json`: the model config;
//! - `data/<split>.layout.json` and `data/<split>/<version>/shard=N/*.parquet`:
//!   the staged splits ([`super::layout`]);
//! - `weights/step-N.safetensors`: the version the next round reads;
//! - `rounds/round-R-part-B.vec`: the partial results of the `average`
//!   round in flight ([`super::vectors`]);
//! - `ranks/wW/rank-R.parquet`: the tables of `sync` ranks (one file, one
//!   partition, per rank), `ranks.json` (where the ranks of the running
//!   segment run) and `collective.secret` (the job's secret, deleted at
//!   its end) ([`super::segment`]);
//! - `checkpoints/step-N.safetensors` (weights and optimizer state),
//!   `checkpoints/last.json`, `checkpoints/best.safetensors` and `best.json`;
//! - `metrics.jsonl` ([`super::metrics`]), `training_curve.png`, `results.json`;
//! - with `training.cache_frozen` (the jobs crate's `features`): `features/`
//!   (the caches), `from_features/` (a job dir of its own, where the rest of
//!   the model trains) and `weights/final.safetensors` (the whole model).

use crate::store::Location;
use serde::{Deserialize, Serialize};

/// A job directory (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDir {
    root: Location,
}

impl JobDir {
    pub fn new(root: Location) -> JobDir {
        JobDir { root }
    }

    pub fn root(&self) -> &Location {
        &self.root
    }

    pub fn model_json(&self) -> Location {
        self.root.join("model.json")
    }

    /// Where `split` is staged; each staging writes a new version below it.
    pub fn staged(&self, split: &str) -> Location {
        self.root.join("data").join(split)
    }

    /// The record of the current staging of `split`.
    pub fn staged_record(&self, split: &str) -> Location {
        self.root.join("data").join(&format!("{split}.layout.json"))
    }

    /// The weights version after `step` steps.
    pub fn weights(&self, step: u64) -> Location {
        self.root.join(&format!("weights/step-{step}.safetensors"))
    }

    pub fn weights_dir(&self) -> Location {
        self.root.join("weights")
    }

    /// A worker's partial result of `round`, named by its first block.
    pub fn partial(&self, round: u64, first_block: u64) -> Location {
        self.root.join(&format!("rounds/round-{round}-part-{first_block}.vec"))
    }

    pub fn checkpoints(&self) -> Location {
        self.root.join("checkpoints")
    }

    /// The checkpoint after `step` steps.
    pub fn checkpoint(&self, step: u64) -> Location {
        self.root.join(&format!("checkpoints/step-{step}.safetensors"))
    }

    /// The step of a [`JobDir::checkpoint`] name.
    pub fn checkpoint_step(name: &str) -> Option<u64> {
        name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()
    }

    /// Which checkpoint `--resume` continues from.
    pub fn last(&self) -> Location {
        self.root.join("checkpoints/last.json")
    }

    pub fn best(&self) -> Location {
        self.root.join("checkpoints/best.safetensors")
    }

    pub fn best_json(&self) -> Location {
        self.root.join("checkpoints/best.json")
    }

    pub fn metrics(&self) -> Location {
        self.root.join("metrics.jsonl")
    }

    pub fn curve(&self) -> Location {
        self.root.join("training_curve.png")
    }

    pub fn results(&self) -> Location {
        self.root.join("results.json")
    }

    /// The whole model's weights of a job trained from cached features.
    pub fn final_weights(&self) -> Location {
        self.root.join("weights/final.safetensors")
    }

    /// The frozen-feature caches (`training.cache_frozen`).
    pub fn features(&self) -> Location {
        self.root.join("features")
    }

    /// The job dir in which the rest of a model trains from cached features.
    pub fn from_features(&self) -> JobDir {
        JobDir::new(self.root.join("from_features"))
    }

    /// Deletes what an earlier run left that a fresh start must not take for
    /// its own: the last-checkpoint pointer, checkpoints, weights versions,
    /// round partials and results.
    pub fn clear_earlier_run(&self) -> crate::error::Result<()> {
        crate::store::blocking::delete(&self.last())?;
        crate::store::blocking::delete(&self.results())?;
        for stale in [self.checkpoints(), self.weights_dir(), self.root.join("rounds")] {
            crate::store::blocking::delete_all(&stale)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_root_on_any_store() {
        let d = JobDir::new(Location::parse("s3://b/jobs/one/").unwrap());
        assert_eq!(d.checkpoint(500).as_str(), "s3://b/jobs/one/checkpoints/step-500.safetensors");
        assert_eq!(JobDir::checkpoint_step(d.checkpoint(500).file_name()), Some(500));
        assert_eq!(d.staged_record("train").as_str(), "s3://b/jobs/one/data/train.layout.json");
        assert_eq!(d.partial(3, 8).file_name(), "round-3-part-8.vec");
    }
}
