//! What the driver tells the training operators each round (a JSON string
//! literal in the round's query: it reaches every executor intact and costs
//! nothing to plan, unlike binary literals), and what they answer.

use super::job_dir::JobDir;
use crate::store::Location;
use kallista_data::binding::Binding;
use kallista_ops::optim::OptimizerConfig;
use serde::{Deserialize, Serialize};

/// How workers combine their work into one update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each round: every worker computes gradients on its share of one
    /// global batch; they are summed; the driver takes one optimizer step.
    Sync,
    /// Each round: every worker takes `sync_every_steps` local optimizer
    /// steps from the published weights; the driver averages the results.
    /// The default: a round costs a Ballista job and a weights exchange
    /// (`engine_w1` bench), which only many steps per round amortize.
    #[default]
    Average,
    /// Workers run independently for a segment, pulling weights from and
    /// pushing gradients to sharded parameter servers, which apply each
    /// gradient as it arrives (Downpour, or Hogwild: [`crate::ps`]).
    Async,
}

/// Workers by default: one per core of the machine that runs the job (on
/// `kallista train`, the embedded cluster's executor). Each worker is one
/// model replica on one thread, as the in-process loop runs one batch shard
/// per core; with one worker per core the Parquet scan is parallel too, which
/// measured fastest (`engine_w1` bench). A remote cluster's size is set in the
/// job instead.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Local steps per `average` round by default: enough that a round's fixed
/// costs (a Ballista job, the weights and slots written and read) stay a few
/// percent of its compute for the W1 model (`engine_w1` bench).
pub const DEFAULT_SYNC_EVERY_STEPS: u64 = 200;

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
    pub config: Location,
    /// The weights version to use (safetensors, with optimizer state).
    pub weights: Location,
    pub compile: CompileSpec,
    /// The columns the model reads: each input's, the label, the group.
    pub binding: Binding,
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
    /// Partitions of the round (workers): an executor running several
    /// shares its cores among them.
    pub workers: usize,
    /// The job dir: workers write their partial results to its `rounds/`.
    pub job: JobDir,
    /// The staged split the round reads (named in errors about its rows).
    pub data: Location,
    /// `average`: where the final stage writes the next weights version
    /// (weights, optimizer slots and iteration count), which that executor
    /// also keeps in its model cache.
    pub next_weights: Location,
}

/// One evaluation pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub model: ModelRef,
    /// The staged split evaluated (named in errors about its rows).
    pub data: Location,
}

/// What one partition of a round produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialResult {
    /// The vectors (exact i64 gradient sums in `sync`, f32 weights and
    /// optimizer slots in `average`); `None` when the partition had no rows.
    pub file: Option<Location>,
    /// The executor that ran the partition ([`crate::cluster::this_executor`]).
    pub executor: String,
    /// The partition's smallest block id: partial results are combined in this order.
    pub first_block: u64,
    /// Micro-batches (`sync`) or local steps (`average`) in `file`.
    pub parts: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub times: PartTimes,
}

/// The name of optimizer slot `n` of weight `key` in an `average` partial
/// result (the weights themselves go by their keys).
pub fn slot_vector(n: usize, key: &str) -> String {
    format!("slot/{n}/{key}")
}

/// Where a partition's time went, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartTimes {
    /// From the operator's start to its last row: the Parquet scan and decode.
    pub scan_ms: f64,
    /// Loading the weights version (when new) and copying it for local steps.
    pub load_ms: f64,
    /// Forward, backward and local optimizer steps.
    pub compute_ms: f64,
    /// Writing the partial result.
    pub write_ms: f64,
}

/// The reduced result of a round, read by the driver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    /// `sync`: the mean gradients, f32 vectors; `average`: the next weights
    /// version, already published (the spec's `next_weights`).
    pub file: Option<Location>,
    /// The partial results' objects, which the driver deletes once the round is done.
    pub partial_files: Vec<Location>,
    /// Every partition: where it ran and where its time went, in block order.
    pub parts: Vec<super::metrics::PartLine>,
    pub partitions: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// The times of the partition with the longest compute.
    pub slowest: PartTimes,
    /// Reading, combining and writing the partial results; in a `sync`
    /// segment, the slowest rank's time in all-reduces and optimizer steps.
    pub reduce_ms: f64,
    /// `sync`: the segment's generation (each attempt is a new one).
    #[serde(default)]
    pub generation: Option<u64>,
    /// `sync`: processes the ranks ran in (one ring member each).
    #[serde(default)]
    pub processes: u64,
    /// Links through shared memory: `sync`, ring members whose chunks
    /// reached the next one that way; `async`, worker-shard connections.
    #[serde(default)]
    pub shared_memory_links: u64,
    /// `sync`: the most bytes a rank sent to other processes per step.
    #[serde(default)]
    pub sent_bytes_per_step: f64,
    /// `async`: every worker's traffic with the parameter servers.
    #[serde(default)]
    pub workers: Vec<super::metrics::WorkerLine>,
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
