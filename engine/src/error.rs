//! The typed error of engine calls.

use thiserror::Error;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What can go wrong in the engine. DataFusion errors keep their structure:
/// a Kallista error raised inside a function travels as
/// `DataFusionError::External` and is downcast again by [`EngineError::from`].
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    DataFusion(datafusion::error::DataFusionError),
    #[error(transparent)]
    Data(#[from] kallista_data::DataError),
    #[error("{file}: statement {index}: {source}")]
    Statement { file: String, index: usize, source: Box<EngineError> },
    #[error(transparent)]
    Ops(#[from] kallista_ops::OpsError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("training: {0}")]
    Training(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<datafusion::error::DataFusionError> for EngineError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match e {
            datafusion::error::DataFusionError::External(inner) => match inner.downcast::<EngineError>() {
                Ok(e) => *e,
                Err(inner) => match inner.downcast::<kallista_data::DataError>() {
                    Ok(d) => EngineError::Data(*d),
                    Err(other) => EngineError::DataFusion(datafusion::error::DataFusionError::External(other)),
                },
            },
            other => EngineError::DataFusion(other),
        }
    }
}
