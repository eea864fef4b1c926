//! The typed error of job runs and CLI subcommands.

use thiserror::Error;

/// What can go wrong running a job or a subcommand.
#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Ops(#[from] kallista_ops::OpsError),
    #[error(transparent)]
    Data(#[from] kallista_data::DataError),
    /// Boxed: DataFusion's error makes the engine's large.
    #[error(transparent)]
    Engine(Box<kallista_engine::EngineError>),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{file}: {key}: {detail}")]
    Spec { file: String, key: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<kallista_engine::EngineError> for JobError {
    fn from(e: kallista_engine::EngineError) -> Self {
        JobError::Engine(Box::new(e))
    }
}
