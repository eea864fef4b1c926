//! The typed error of job runs.

use thiserror::Error;

/// What can go wrong running a job.
#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Ops(#[from] kallista_ops::OpsError),
    #[error("{0}")]
    Invalid(String),
}
