//! `metrics.jsonl`: one typed line per round and per evaluation, written by
//! the driver and read by the training curve and the benchmarks alike.
//!
//! A local log gets each line appended as it comes. Object stores cannot
//! append, so there the log is rewritten whole (one atomic put) at most once
//! a second and whenever the driver asks (evaluations, checkpoints, the end):
//! a reader always sees whole lines, and a long job does not rewrite its log
//! every round.

use super::job_dir::JobDir;
use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where one partition of a round ran and where its time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartLine {
    /// The executor that ran it (its advertised host and Flight port).
    pub executor: String,
    pub first_block: u64,
    pub rows: u64,
    pub scan_ms: f64,
    pub load_ms: f64,
    pub compute_ms: f64,
    pub write_ms: f64,
}

/// One training round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    pub accuracy: f64,
    pub rows: u64,
    pub samples_per_s: f64,
    pub round_ms: f64,
    pub query_ms: f64,
    /// The slowest partition's parts, then the reduce.
    pub compute_ms: f64,
    pub scan_ms: f64,
    pub load_ms: f64,
    pub write_ms: f64,
    pub reduce_ms: f64,
    pub partitions: u64,
    pub steps_in_round: u64,
    /// Every partition, in block order (in a `sync` segment: every rank, by
    /// rank, `first_block` holding the rank).
    #[serde(default)]
    pub parts: Vec<PartLine>,
    /// `sync`: the segment's generation (a restarted segment has a later one).
    #[serde(default)]
    pub generation: Option<u64>,
    /// `sync`: processes the ranks ran in.
    #[serde(default)]
    pub processes: u64,
    /// Links through shared memory (same host) rather than TCP: `sync`,
    /// ring members whose chunks reached the next one that way; `async`,
    /// connections of a worker to a parameter server.
    #[serde(default)]
    pub shared_memory_links: u64,
    /// `sync`: the slowest rank's time per step in the all-reduce and the optimizer step.
    #[serde(default)]
    pub allreduce_ms_per_step: f64,
    /// `sync`: the most bytes one rank sent to other processes per step.
    #[serde(default)]
    pub sent_bytes_per_step: f64,
    /// `async`: each worker's pulls, pushes, staleness and drops in the segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerLine>,
}

/// One `async` worker's traffic with the parameter servers in a segment
/// (shard 0's counts: every push goes to every shard).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerLine {
    pub worker: usize,
    pub pulls: u64,
    pub pushes: u64,
    /// Pushes not applied: older than `max_staleness` versions.
    pub dropped: u64,
    /// Versions applied between a push's pull and its arrival, averaged over its pushes.
    pub mean_staleness: f64,
    /// The largest staleness of the job so far.
    pub max_staleness: u64,
    pub rows: u64,
}

/// One evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub split: String,
    pub step: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub families: BTreeMap<String, f64>,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsLine {
    Train(TrainLine),
    Eval(EvalLine),
}

/// Parses `metrics.jsonl` text; lines of other kinds or versions are skipped.
pub fn parse_metrics(text: &str) -> Vec<MetricsLine> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Reads a job's `metrics.jsonl`.
pub fn read_metrics(job: &JobDir) -> Result<Vec<MetricsLine>> {
    Ok(parse_metrics(&blocking::read_string(&job.metrics())?))
}

/// The driver's log (see the module docs).
pub struct MetricsLog {
    at: Location,
    /// A local log, appended to.
    file: Option<std::fs::File>,
    /// An object's whole text, rewritten on [`MetricsLog::flush`].
    text: String,
    flushed: Instant,
    dirty: bool,
}

impl MetricsLog {
    /// A new log, or the existing one continued (`resume`).
    pub fn open(job: &JobDir, resume: bool) -> Result<MetricsLog> {
        let at = job.metrics();
        if let Some(path) = at.local_path() {
            let io = |e| EngineError::Io { path: path.display().to_string(), source: e };
            std::fs::create_dir_all(path.parent().unwrap_or(&path)).map_err(io)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(resume)
                .write(true)
                .truncate(!resume)
                .open(&path)
                .map_err(io)?;
            return Ok(MetricsLog { at, file: Some(file), text: String::new(), flushed: Instant::now(), dirty: false });
        }
        let text = if resume && blocking::exists(&at)? { blocking::read_string(&at)? } else { String::new() };
        let log = MetricsLog { at, file: None, text, flushed: Instant::now(), dirty: true };
        log.write()?;
        Ok(MetricsLog { dirty: false, ..log })
    }

    /// Adds a line: appended to a local log; in an object, written when the
    /// last write is a second old.
    pub fn push(&mut self, line: &MetricsLine) -> Result<()> {
        let mut json = serde_json::to_string(line).map_err(|e| EngineError::Invalid(e.to_string()))?;
        json.push('\n');
        if let Some(file) = &mut self.file {
            use std::io::Write;
            return file
                .write_all(json.as_bytes())
                .map_err(|e| EngineError::Io { path: self.at.to_string(), source: e });
        }
        self.text.push_str(&json);
        self.dirty = true;
        if self.flushed.elapsed() >= Duration::from_secs(1) {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the log if lines were added since the last write.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.write()?;
            self.flushed = Instant::now();
            self.dirty = false;
        }
        Ok(())
    }

    fn write(&self) -> Result<()> {
        blocking::write_scratch(&self.at, self.text.clone().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_their_kind() {
        let lines = vec![
            MetricsLine::Train(TrainLine {
                step: 3,
                parts: vec![PartLine { executor: "127.0.0.1:50051".into(), ..Default::default() }],
                ..Default::default()
            }),
            MetricsLine::Eval(EvalLine { split: "eval".into(), step: 3, accuracy: 0.5, ..Default::default() }),
        ];
        let text: String = lines.iter().map(|l| serde_json::to_string(l).unwrap() + "\n").collect();
        assert!(text.contains("\"kind\":\"train\"") && text.contains("\"kind\":\"eval\""), "{text}");
        assert_eq!(parse_metrics(&format!("{text}not json\n")), lines);
    }
}
