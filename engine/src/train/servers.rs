//! The driver's side of `async` training: the job's parameter-server
//! shards ([`crate::ps::shard`]), hosted in the driver's process, made from
//! the model's weights and optimizer state, and read back into it between
//! segments, when no worker runs: the weights version, evaluations and
//! checkpoints see one consistent state of every shard.

use super::metrics::WorkerLine;
use crate::collective::frame::Secret;
use crate::error::{EngineError, Result};
use crate::ps::shard::{Shard, ShardRules, SliceState};
use crate::ps::slices::plan;
use crate::ps::wire::{ShardStats, WorkerStats};
use kallista_ops::model::Model;
use kallista_ops::optim::Optimizer;
use std::collections::BTreeMap;

/// How an `async` job uses its parameter servers.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncSettings {
    /// Shards the weights are split into (balanced by bytes).
    pub parameter_servers: usize,
    /// Steps a worker takes (on the same weights) between pushes.
    pub push_every_steps: u64,
    /// A gradient computed on weights older than this many versions is dropped.
    pub max_staleness: Option<u64>,
    /// Apply pushes without the shard's lock.
    pub hogwild: bool,
}

impl Default for AsyncSettings {
    fn default() -> Self {
        AsyncSettings { parameter_servers: 1, push_every_steps: 1, max_staleness: None, hogwild: false }
    }
}

/// The shards of one job.
pub struct ParameterServers {
    shards: Vec<Shard>,
    /// Shard 0's counters at the end of the previous segment.
    before: BTreeMap<usize, WorkerStats>,
}

impl ParameterServers {
    /// Starts the shards on `bind_host`, reached at `advertised_host`, holding
    /// `model`'s trainable weights and optimizer state (a resumed job's included).
    pub fn start(
        model: &Model,
        settings: &AsyncSettings,
        job_id: &str,
        secret: &Secret,
        bind_host: &str,
        advertised_host: &str,
    ) -> Result<ParameterServers> {
        let opt = model.optimizer().ok_or_else(|| EngineError::Invalid("async: the model is not compiled".into()))?;
        // Workers clip whole gradients; a shard sees only its slices.
        let mut config = opt.config.clone();
        (config.clipnorm, config.global_clipnorm) = (None, None);
        let rules =
            ShardRules { optimizer: config.clone(), hogwild: settings.hogwild, max_staleness: settings.max_staleness };
        let keys = model.weight_keys();
        let mut shards = vec![];
        for (index, slices) in plan(model, settings.parameter_servers).into_iter().enumerate() {
            let states = slices
                .into_iter()
                .map(|slice| {
                    let weight = model.weight(&keys[slice.weight]).expect("a planned weight exists");
                    let mut optimizer = Optimizer::new(config.clone());
                    optimizer.iterations = opt.iterations;
                    if let Some(slots) = opt.slots.get(&slice.key) {
                        let mine = slots.iter().map(|s| s[slice.range.clone()].to_vec()).collect();
                        optimizer.slots.insert(slice.key.clone(), mine);
                    }
                    let values = weight.data()[slice.range.clone()].to_vec();
                    SliceState { slice, values, optimizer }
                })
                .collect();
            shards.push(Shard::start(
                bind_host,
                advertised_host,
                index,
                job_id.to_string(),
                secret.clone(),
                rules.clone(),
                states,
            )?);
        }
        Ok(ParameterServers { shards, before: BTreeMap::new() })
    }

    /// Where workers reach the shards, in shard order.
    pub fn addresses(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.address().to_string()).collect()
    }

    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(Shard::stats).collect()
    }

    /// Every shard's values, optimizer slots and iteration count, into `model`.
    pub fn read_into(&self, model: &mut Model) -> Result<()> {
        let mut slots: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        let mut iterations = 0;
        let sizes: Vec<usize> = model.weight_values_mut().iter().map(|w| w.len()).collect();
        let names = model.optimizer().map_or(0, |o| o.config.kind.slot_names().len());
        {
            let mut values = model.weight_values_mut();
            for shard in &self.shards {
                shard.with_slices(|states| {
                    for s in states {
                        let range = s.slice.range.clone();
                        values[s.slice.weight][range.clone()].copy_from_slice(&s.values);
                        iterations = iterations.max(s.optimizer.iterations);
                        if let Some(mine) = s.optimizer.slots.get(&s.slice.key) {
                            let full = slots
                                .entry(s.slice.key.clone())
                                .or_insert_with(|| vec![vec![0f32; sizes[s.slice.weight]]; names]);
                            for (f, m) in full.iter_mut().zip(mine) {
                                f[range.clone()].copy_from_slice(m);
                            }
                        }
                    }
                });
            }
        }
        let opt =
            model.optimizer_mut().ok_or_else(|| EngineError::Invalid("async: the model is not compiled".into()))?;
        opt.iterations = iterations;
        opt.slots.extend(slots);
        Ok(())
    }

    /// Each worker's traffic since the previous call (shard 0's counts),
    /// and the messages the shards refused so far.
    pub fn segment_lines(&mut self) -> (Vec<WorkerLine>, u64) {
        let stats = self.stats();
        let refused = stats.iter().map(|s| s.refused).sum();
        let now = stats.into_iter().next().map(|s| s.workers).unwrap_or_default();
        let lines = now
            .iter()
            .map(|(&worker, n)| {
                let b = self.before.get(&worker).cloned().unwrap_or_default();
                let pushes = n.pushes - b.pushes;
                WorkerLine {
                    worker,
                    pulls: n.pulls - b.pulls,
                    pushes,
                    dropped: n.dropped - b.dropped,
                    mean_staleness: (n.staleness_sum - b.staleness_sum) as f64 / pushes.max(1) as f64,
                    max_staleness: n.max_staleness,
                    rows: n.rows - b.rows,
                }
            })
            .collect();
        self.before = now;
        (lines, refused)
    }

    /// Rows, loss sum and correct answers pushed since the previous segment's end (shard 0's counts).
    pub fn pushed_since(&self) -> (u64, f64, u64) {
        let now = self.shards.first().map(|s| s.stats().workers).unwrap_or_default();
        let mut out = (0, 0.0, 0);
        for (worker, n) in &now {
            let b = self.before.get(worker).cloned().unwrap_or_default();
            out.0 += n.rows - b.rows;
            out.1 += n.loss_sum - b.loss_sum;
            out.2 += n.correct - b.correct;
        }
        out
    }
}
