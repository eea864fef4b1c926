//! The typed error of dataset making, ingest and reading: every variant names
//! the file, and the column and row when there is one.

use std::path::PathBuf;
use thiserror::Error;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What can go wrong with Kallista's data.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A Parquet file could not be read or written.
    #[error("{path}: parquet: {detail}")]
    Parquet { path: PathBuf, detail: String },

    /// A table does not have the documented schema (see data/SCHEMA.md).
    #[error("{path}: column '{column}': {detail}")]
    Schema { path: PathBuf, column: String, detail: String },

    /// A value is invalid.
    #[error("{path}: row {row}, column '{column}': {detail}")]
    BadValue { path: PathBuf, row: usize, column: String, detail: String },

    /// A value is invalid where the source is not a file (a SQL function's argument, say).
    #[error("{origin}: row {row}, column '{column}': {detail}")]
    Value { origin: String, row: usize, column: String, detail: String },

    /// An image could not be decoded (or has the wrong size).
    #[error("{path}: {detail}")]
    BadImage { path: PathBuf, detail: String },

    /// An argument is out of range.
    #[error("invalid argument {name}: {detail}")]
    Argument { name: &'static str, detail: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        DataError::Parquet { path: path.into(), detail: e.to_string() }
    }
}
