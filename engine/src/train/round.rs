//! What the driver tells the training operators each round (a JSON string
//! literal in the round's query: it reaches every executor intact and costs
//! nothing to plan, unlike binary literals), and what they answer.

use kallista_ops::optim::OptimizerConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How workers combine their work into one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each round: every worker computes gradients on its share of one
    /// global batch; they are summed; the driver takes one optimizer step.
    Sync,
    /// Each round: every worker takes `sync_every_steps` local optimizer
    /// steps from the published weights; the driver averages the results.
    Average,
}

/// How the model is compiled on every worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompileSpec {
    pub optimizer: OptimizerConfig,
    pub loss: String,
    pub metrics: Vec<String>,
}

/// Where a worker finds the model of a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model's JSON config (`<job_dir>/model.json`).
    pub config: PathBuf,
    /// The weights version to use (safetensors, with optimizer state).
    pub weights: PathBuf,
    pub compile: CompileSpec,
    /// The data column feeding each model input, in input order
    /// (`frames` or `question_ids`).
    pub input_columns: Vec<String>,
}

/// One training round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSpec {
    pub model: ModelRef,
    pub mode: Mode,
    pub round: u64,
    /// Global step of the round's first step.
    pub first_step: u64,
    /// The blocks of each step of the round, in step order (one step in `sync`).
    pub steps: Vec<Vec<u64>>,
    pub seed: u64,
    /// Where workers write their partial results.
    pub out_dir: PathBuf,
}

/// One evaluation pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub model: ModelRef,
}

/// What one partition of a round produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialResult {
    /// The vectors (exact i64 gradient sums in `sync`, f32 weight deltas and
    /// optimizer slots in `average`); `None` when the partition had no rows.
    pub file: Option<PathBuf>,
    /// The partition's smallest block id: partial results are combined in this order.
    pub first_block: u64,
    /// Micro-batches (`sync`) or local steps (`average`) in `file`.
    pub parts: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// Milliseconds of forward/backward in this partition.
    pub compute_ms: f64,
}

/// The reduced result of a round, read by the driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    /// f32 vectors: mean gradients (`sync`) or mean deltas and slots (`average`).
    pub file: Option<PathBuf>,
    pub partitions: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// The slowest partition's compute time.
    pub max_compute_ms: f64,
}

/// Loss and accuracy counts of one question family.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
}

impl EvalCounts {
    pub fn add(&mut self, o: &EvalCounts) {
        self.rows += o.rows;
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.rows.max(1) as f64
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.rows.max(1) as f64
    }
}
