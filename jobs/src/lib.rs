//! # kallista-jobs
//!
//! The job spec (YAML) and its validation, the runner that turns a spec into
//! engine calls, and the CLI subcommands. Ready-made jobs live as data in
//! `jobs/<name>/`.
//!
//! Until the job spec lands, this crate holds the in-process demo behind
//! `kallista demo`: the video-QA model trained on a small learnable task.

pub mod demo;
pub mod error;

pub use error::JobError;
