//! # kallista-jobs
//!
//! Brief overview: the CLI subcommands' work, one module each —
//! [`data_cmd`] (`kallista data make-video-qa | ingest-frames`), [`sql_cmd`]
//! (`kallista sql`), [`demo`] (`kallista demo`); [`progress`] reports long
//! work. The job spec (YAML) and the distributed runner come with the
//! distributed-training issue; ready-made jobs live as data in
//! `jobs/<name>/` (`jobs/video_qa/prepare.sql`).

pub mod cluster_cmd;
pub mod data_cmd;
pub mod demo;
pub mod error;
pub mod progress;
pub mod sql_cmd;

pub use error::JobError;
