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
    #[error("{url}: {detail}")]
    Store { url: String, detail: String },
    /// A worker's failure in a round, with the executor it ran on. A
    /// `deterministic` one (bad data, NaN loss, a shape mismatch) would fail
    /// the same way again; its `detail` ends in [`DETERMINISTIC`], which the
    /// driver still finds after Ballista turned the error into text on
    /// another host ([`EngineError::from_remote`]), and then fails the job at
    /// once instead of resubmitting the round.
    #[error("worker of round {round} on executor {executor}: {detail}")]
    Worker { round: u64, executor: String, detail: String, deterministic: bool },
    /// A collective of `sync` ranks failed: a lost peer, a refused message, a deadline.
    #[error("collective: {0}")]
    Collective(String),
    #[error("{0}")]
    Invalid(String),
}

/// Ends the text of a deterministic worker failure.
pub const DETERMINISTIC: &str = " [deterministic: not retried]";

impl EngineError {
    /// `e`, raised by a worker of `round` on `executor`.
    pub fn worker(e: EngineError, round: u64, executor: &str) -> EngineError {
        let deterministic = e.is_deterministic();
        let detail = if deterministic { format!("{e}{DETERMINISTIC}") } else { e.to_string() };
        EngineError::Worker { round, executor: executor.to_string(), detail, deterministic }
    }

    /// The worker failure inside the text of an error that came back from a
    /// remote executor: Ballista reports a failed task with the `Debug` form
    /// of its error, `Worker { round: R, executor: "E", detail: "D", .. }`.
    pub fn from_remote(text: &str) -> Option<EngineError> {
        let start = text.find("Worker { round: ")?;
        let rest = &text[start + "Worker { round: ".len()..];
        let (round, rest) = rest.split_once(", executor: \"")?;
        let (executor, rest) = rest.split_once("\", detail: \"")?;
        // The detail is a Debug string: up to the first unescaped quote.
        let mut detail = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => detail.extend(chars.next().map(|n| if n == 'n' { '\n' } else { n })),
                '"' => break,
                c => detail.push(c),
            }
        }
        let deterministic = detail.ends_with(DETERMINISTIC);
        Some(EngineError::Worker { round: round.parse().ok()?, executor: executor.into(), detail, deterministic })
    }

    /// Whether a rerun would fail the same way: errors of the data, the
    /// model or the job itself, also when they come back as text from a
    /// remote executor. Lost executors, timeouts and storage errors are not.
    pub fn is_deterministic(&self) -> bool {
        match self {
            EngineError::Training(_) | EngineError::Data(_) | EngineError::Ops(_) | EngineError::Corrupt { .. } => true,
            EngineError::Worker { deterministic, .. } => *deterministic,
            other => EngineError::from_remote(&other.to_string()).is_some_and(|w| w.is_deterministic()),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_failures_are_recognized_after_travelling_as_text() {
        let bad_row = EngineError::Corrupt { path: "s3://b/x.parquet".into(), detail: "row 3".into() };
        let worker = EngineError::worker(bad_row, 7, "10.0.0.2:50051");
        assert!(worker.is_deterministic());
        // What the driver gets from a remote executor: Ballista's text around our error's Debug form.
        let remote = EngineError::Invalid(format!("Job failed: Task failed: DataFusionError(External({worker:?}))"));
        assert!(remote.is_deterministic(), "{remote}");
        let found = EngineError::from_remote(&remote.to_string()).unwrap();
        assert_eq!(found.to_string(), worker.to_string());
        let lost = EngineError::worker(EngineError::Store { url: "s3://b/k".into(), detail: "timeout".into() }, 7, "e");
        assert!(!lost.is_deterministic());
        assert!(!EngineError::Invalid("executor lost".into()).is_deterministic());
    }
}
