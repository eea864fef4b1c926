//! # kallista-jobs
//!
//! Brief overview: the CLI subcommands' work, one module each —
//! [`data_cmd`] (`kallista data make-video-qa | ingest-frames`), [`sql_cmd`]
//! (`kallista sql`), [`demo`] (`kallista demo`); [`progress`] reports long
//! work; [`spec`] is the job file (YAML) and its checks; [`train_cmd`] runs
//! jobs (`kallista train | submit | run`) on the engine's driver; [`plot`]
//! draws training curves and confusion matrices; [`predict_cmd`] is
//! `kallista predict | evaluate`; [`features`] caches a frozen sub-model's
//! features (`kallista features`, `training.cache_frozen`); [`labels`] writes
//! the class names; [`data_script`] runs a job's SQL before staging. Ready-made
//! jobs live as data in `jobs/<name>/` (`jobs/video_qa/job.yaml`, `prepare.sql`).

pub mod cluster_cmd;
pub mod data_cmd;
pub mod data_script;
pub mod demo;
pub mod error;
pub mod features;
pub mod labels;
pub mod plot;
pub mod predict_cmd;
pub mod progress;
pub mod spec;
pub mod sql_cmd;
pub mod train_cmd;

pub use error::JobError;
