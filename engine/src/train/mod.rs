//! Distributed training on Ballista (`DESIGN.md`, "The data path").
//!
//! A job runs as Ballista queries on the job's cluster:
//! 1. staging ([`layout`]): SQL jobs rank each split's rows (by their keys
//!    alone where keys are unique, `staging_write`) and write them once into
//!    `shards` Parquet files of fixed-size blocks, one row group each;
//! 2. `sync` segments ([`segment`]): one query per segment of up to
//!    `sync_every_steps` optimizer steps,
//!    `SELECT kallista_segment(rank, '<segment spec>') FROM kallista_ranks_W`,
//!    one partition per rank, all running at once. Ranks register with the
//!    driver's rendezvous, read their own blocks step by step ([`blocks`]),
//!    and exchange exact gradient sums directly ([`crate::collective`]);
//!    each applies the optimizer, rank 0 writes the next weights version at
//!    the segment's end. Per step: no Ballista job, no file, no weights
//!    broadcast; per segment: one job, the version read once per process
//!    (kept in the [`model_cache`] after) and written once;
//! 3. `average` rounds: one query per round,
//!    `SELECT kallista_train(<clip columns>, block, '<round spec>') FROM train WHERE block IN (...)`.
//!    Ballista scans the round's blocks in `workers` partitions; the partial
//!    aggregate on each partition takes local optimizer steps on its rows
//!    ([`worker`]) and writes its weights to `<job_dir>/rounds/`; the final
//!    aggregate, on one partition, averages them in block order
//!    ([`reduce`]) and publishes the next weights version;
//! 4. `async` segments ([`async_worker`]): one query per segment,
//!    `SELECT kallista_async(rank, '<spec>') FROM kallista_ranks_W`, one long
//!    task per worker, each taking the segment's steps in turn and pushing
//!    gradients to the job's parameter servers ([`crate::ps`]), hosted by the
//!    driver ([`servers`]), which reads their state back between segments
//!    into the next weights version;
//! 5. evaluations: `SELECT kallista_evaluate(...) FROM eval`, per partition, summed.
//!
//! The job dir ([`job_dir`]) is a URL on any store ([`crate::store`]): a
//! local directory, or a prefix in a bucket that driver and executors reach
//! from different hosts. The driver ([`driver`]) keeps the schedule,
//! restarts failed segments (gang semantics), evaluates and checkpoints.
//! `metrics.jsonl` ([`metrics`]) records each round or segment (`round_ms`,
//! `query_ms`, the slowest partition's `scan_ms`, `load_ms`, `compute_ms`,
//! `write_ms`, then `reduce_ms`; for segments also the generation, the time
//! per step in the all-reduce and the bytes a rank sent per step; and for
//! every partition the executor that ran it), and
//! `cargo bench --bench engine_w1` reports their means for the W1 model.

pub mod args;
pub mod async_worker;
pub mod blocks;
mod chunked_step;
mod cpu_turns;
pub mod driver;
pub mod eval_udaf;
pub mod exact;
mod exact_mean;
mod host_workers;
pub mod job_dir;
pub mod layout;
pub mod metrics;
pub mod model_cache;
pub mod reduce;
pub mod round;
mod row_sums;
pub mod schedule;
pub mod segment;
pub mod segment_udaf;
pub mod servers;
mod sharded_step;
mod staging_write;
#[cfg(test)]
mod test_model;
pub mod train_udaf;
pub mod vectors;
pub mod worker;
