//! Distributed training on Ballista (`DESIGN.md`, "The data path").
//!
//! A job runs as Ballista queries on the job's cluster:
//! 1. staging ([`layout`]): one SQL job rewrites each split into `shards`
//!    Parquet files of fixed-size blocks, one row group each;
//! 2. rounds: one query per round,
//!    `SELECT kallista_train(<clip columns>, block, '<round spec>') FROM train WHERE block IN (...)`.
//!    Ballista scans the round's blocks in `workers` partitions; the partial
//!    aggregate on each partition decodes its rows and runs forward/backward
//!    ([`worker`]); the final aggregate, on one partition, reduces the
//!    partial results in block order ([`reduce`]). The driver ([`driver`])
//!    applies the optimizer and publishes the next weights version;
//! 3. evaluations: `SELECT kallista_evaluate(...) FROM eval`, per partition, summed.
//!
//! The job dir ([`job_dir`]) is a URL on any store ([`crate::store`]): a
//! local directory, or a prefix in a bucket that driver and executors reach
//! from different hosts. How weights reach executors, and what a round costs
//! besides compute: the driver writes each version to
//! `<job_dir>/weights/step-N.safetensors` (weights only in `sync`; with
//! optimizer slots in `average`) and names it in the round's spec; each
//! executor loads it once into its cached model ([`model_cache`]). Workers
//! write their partial results (exact i64 gradient sums, or f32 weights and
//! slots, [`vectors`]) to `<job_dir>/rounds/`, and only their URLs cross
//! Ballista's shuffle; the
//! final stage writes their mean (one `average` worker's file is its own
//! mean and is passed on as is). Per round that is one Ballista job (~50 ms
//! on a push-scheduled cluster here), the round's Parquet scan, one weights
//! file written by the driver and read by each executor, one partial file
//! per worker and one reduced file. `metrics.jsonl` ([`metrics`]) records
//! each part of every round (`round_ms`, `query_ms`, and for the slowest
//! partition `scan_ms`, `load_ms`, `compute_ms`, `write_ms`, then
//! `reduce_ms`; and for every partition the executor that ran it), and
//! `cargo bench --bench engine_w1` reports their means for the W1 model.
//!
//! The defaults (a worker per core, `average` rounds of 200 local steps, see
//! [`round`]) amortize those costs; a `sync` round is one optimizer step and
//! pays them every step.

pub mod args;
pub mod driver;
pub mod eval_udaf;
pub mod exact;
pub mod job_dir;
pub mod layout;
pub mod metrics;
pub mod model_cache;
pub mod reduce;
pub mod round;
pub mod schedule;
#[cfg(test)]
mod test_model;
pub mod train_udaf;
pub mod vectors;
pub mod worker;
