//! `async` training in segments: one Ballista job runs `world` workers at
//! once (`kallista_async(rank, spec)` over the rank table,
//! [`super::segment_udaf::RanksUdaf`]), each a long task that trains
//! against the job's parameter-server shards ([`crate::ps`]) until the
//! segment's steps are done.
//!
//! The segment's steps are dealt to the workers in turn (worker `r` takes
//! the steps `s` with `s % world == r`), whole: a worker reads every block
//! of its steps (from every shard file, one ranged read per block, read
//! ahead), computes one gradient per step on its current weights (of the
//! step's blocks as one `batch_size` batch, as in `sync` and as a Keras
//! user expects of `batch_size`), and every
//! `push_every_steps` of its steps pushes the mean of those gradients to
//! every shard, taking the shards' new values back in the same round trip.
//! So a job takes as many optimizer steps per epoch in `async` as in
//! `sync`, each on weights up to about `world - 1` versions old. No worker
//! waits for another. Clipping (`clipnorm`, `global_clipnorm`) is applied here, to
//! the whole gradient, before the push.
//!
//! A worker re-run by Ballista (its executor lost), or by the driver (its
//! round past the deadline), pulls the current weights and skips the steps
//! of the segment it already pushed (the shards count them): it repeats
//! only the steps it had computed but not pushed. Its pull starts a new run
//! of the worker at the shards, which refuse the earlier run's pushes from
//! then on (a run the driver gave up on may still be computing), and a
//! step reaches each shard's weights once.

use super::cpu_turns::CpuTurns;
use super::host_workers::HostWorker;
use super::round::{ModelRef, PartTimes, RoundResult};
use super::segment::{prefetch, RankReads, StepBlocks};
use super::segment_udaf::RankJob;
use crate::cluster::this_executor;
use crate::collective::frame::Secret;
use crate::error::{EngineError, Result};
use crate::ps::client::{ParameterClient, Reach};
use crate::ps::wire::Push;
use crate::store::{blocking, Location};
use kallista_ops::model::WeightGrads;
use kallista_ops::optim::OptimizerConfig;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One `async` segment, as the driver tells its workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AsyncSpec {
    pub model: ModelRef,
    /// The driver's id of this training job.
    pub job_id: String,
    pub world: usize,
    pub first_step: u64,
    /// The blocks of each step, in step order (every worker's).
    pub steps: Vec<Vec<u64>>,
    pub shards: usize,
    pub data: Location,
    pub seed: u64,
    /// The parameter servers, in shard order (`host:port`).
    pub servers: Vec<String>,
    /// The object holding the job's secret.
    pub secret: Location,
    pub push_every_steps: u64,
    /// How long a worker waits for a shard or for its blocks.
    pub timeout_s: u64,
    /// Whether a worker passes values through shared memory with the shards
    /// of its host ([`crate::ps::client`]).
    #[serde(default)]
    pub shared_memory: bool,
}

/// What one worker reports at the end of its segment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub rank: usize,
    pub executor: String,
    /// Steps computed in this run (a re-run skips those it already pushed).
    pub steps: u64,
    pub skipped_steps: u64,
    pub pushes: u64,
    /// Shards reached through shared memory.
    #[serde(default)]
    pub shared_memory_shards: u64,
    /// Time in pushes (sending, the shards' update, receiving the values).
    pub push_ms: f64,
    pub times: PartTimes,
}

impl RankJob for AsyncSpec {
    type Report = WorkerReport;
    const FUNCTION: &'static str = "kallista_async";

    fn first_step(&self) -> u64 {
        self.first_step
    }

    fn run_rank(&self, rank: usize) -> Result<WorkerReport> {
        run_worker(self, rank)
    }

    /// Rows, loss and staleness come from the shards' counters (the driver's):
    /// a re-run worker's report does not cover the steps its first run pushed.
    fn combine(&self, mut reports: Vec<WorkerReport>) -> Result<RoundResult> {
        reports.sort_by_key(|r| r.rank);
        let ranks: Vec<usize> = reports.iter().map(|r| r.rank).collect();
        if ranks != (0..self.world).collect::<Vec<_>>() {
            return Err(EngineError::Collective(format!(
                "async segment at step {}: reports of workers {ranks:?} of {}",
                self.first_step, self.world
            )));
        }
        let mut result = RoundResult {
            partitions: self.world as u64,
            shared_memory_links: reports.iter().map(|r| r.shared_memory_shards).sum(),
            ..Default::default()
        };
        for r in &reports {
            if r.times.compute_ms >= result.slowest.compute_ms {
                result.slowest = r.times.clone();
            }
            result.reduce_ms = result.reduce_ms.max(r.push_ms);
            result.parts.push(super::metrics::PartLine {
                executor: r.executor.clone(),
                first_block: r.rank as u64,
                rows: 0,
                scan_ms: r.times.scan_ms,
                load_ms: r.times.load_ms,
                compute_ms: r.times.compute_ms,
                write_ms: 0.0,
            });
        }
        Ok(result)
    }
}

/// Scales `grads` by `1 / parts` and clips them as the optimizer config asks.
fn mean_and_clip(grads: &mut WeightGrads, parts: usize, cfg: &OptimizerConfig) {
    if parts > 1 {
        let scale = 1.0 / parts as f32;
        grads.values.par_iter_mut().flatten().for_each(|g| g.par_iter_mut().for_each(|v| *v *= scale));
    }
    let norm = |g: &[f32]| g.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt() as f32;
    if let Some(c) = cfg.clipnorm {
        for g in grads.values.iter_mut().flatten() {
            let n = norm(g);
            if n > c {
                g.iter_mut().for_each(|v| *v *= c / n);
            }
        }
    }
    if let Some(c) = cfg.global_clipnorm {
        let n = grads.values.iter().flatten().map(|g| norm(g).powi(2)).sum::<f32>().sqrt();
        if n > c {
            grads.values.iter_mut().flatten().for_each(|g| g.iter_mut().for_each(|v| *v *= c / n));
        }
    }
}

/// A worker's model before its first pull: the published weights version.
/// The shards hold the trainable weights (the pull overwrites them); the
/// others, a frozen pre-trained CNN's, reach workers only so: drawn from
/// the config's seed, they would differ from the driver's.
fn starting_model(r: &ModelRef) -> Result<kallista_ops::model::Model> {
    // The shards hold the optimizer state: a worker's copy would only take memory.
    super::model_cache::model_without_slots(r)
}

/// Runs worker `rank` of the segment (see the module docs).
pub fn run_worker(spec: &AsyncSpec, rank: usize) -> Result<WorkerReport> {
    let timeout = Duration::from_secs(spec.timeout_s.max(1));
    let secret = Secret::from_bytes(&blocking::read(&spec.secret)?);
    let loading = Instant::now();
    let mut model = starting_model(&spec.model)?;
    let reach = Reach::from_env(spec.shared_memory);
    let mut client = ParameterClient::connect_via(&spec.servers, &model, &secret, &spec.job_id, rank, timeout, reach)?;
    let done = client.pull(&mut model, spec.first_step)? as usize;
    let mut report = WorkerReport {
        rank,
        executor: this_executor().name.clone(),
        skipped_steps: done as u64,
        shared_memory_shards: client.shared_memory_shards() as u64,
        ..Default::default()
    };
    report.times.load_ms = loading.elapsed().as_secs_f64() * 1e3;
    if done > 0 {
        log::info!(
            "async worker {rank}: re-run; skipping the {done} steps of step {} on it already pushed",
            spec.first_step
        );
    }
    let world = spec.world.max(1) as u64;
    let (numbers, steps): (Vec<u64>, Vec<Vec<u64>>) = (spec.first_step..)
        .zip(&spec.steps)
        .filter(|(s, _)| s % world == rank as u64)
        .skip(done)
        .map(|(s, blocks)| (s, blocks.clone()))
        .unzip();
    // Every shard file: a worker's steps have blocks in all of them.
    let what =
        RankReads { data: &spec.data, shards: spec.shards, world: 1, binding: &spec.model.binding, steps: &steps };
    let reads = prefetch(what, 0)?;
    let every = spec.push_every_steps.max(1) as usize;
    // Steps of each push: this worker's, `every` at a time.
    let push_steps: Vec<usize> = steps.chunks(every).map(<[_]>::len).collect();
    let running = HostWorker::start(&spec.job_id);
    let turns = running.turns(rayon::current_num_threads(), rank).filter(|_| turns_enabled());
    let mut push_in_place: Option<bool> = None;
    let mut pending = WeightGrads::default();
    let (mut parts, mut in_push) = (0usize, 0u64);
    let (mut rows, mut loss_sum, mut correct) = (0u64, 0f64, 0u64);
    for (i, &step) in numbers.iter().enumerate() {
        let waited = Instant::now();
        let blocks = reads.recv_timeout(timeout).map_err(|_| {
            EngineError::Collective(format!("async worker {rank}: the blocks of step {step} did not arrive"))
        })??;
        report.times.scan_ms += waited.elapsed().as_secs_f64() * 1e3;
        // With as many of the job's workers running on this host (in any
        // process) as this process has threads, a worker computes each step's
        // blocks as one batch on one thread, in one of the host's turns
        // ([`super::cpu_turns`]), into gradient buffers already scaled to the
        // push's mean; with fewer, its blocks in parallel, then added up and
        // scaled. Decided once per push.
        let in_place = *push_in_place.get_or_insert_with(|| running.count() >= rayon::current_num_threads());
        let turn = turns.as_ref().filter(|_| in_place).map(CpuTurns::take);
        if turn.is_some() && in_push == 0 {
            // Others pushed while this worker waited for its turn: a push's
            // steps start from the newest weights (and all of them from the same).
            let pulling = Instant::now();
            client.pull_again(&mut model, spec.first_step)?;
            report.push_ms += pulling.elapsed().as_secs_f64() * 1e3;
        }
        let computing = Instant::now();
        let step_blocks =
            StepBlocks { rows: &blocks, binding: &spec.model.binding, data: &spec.data, seed: spec.seed, step };
        let results = match in_place {
            true => vec![step_blocks.gradient_into(&model, 1.0 / push_steps[i / every].max(1) as f32, &mut pending)?],
            false => {
                let mut results = vec![];
                for (result, g) in step_blocks.gradients(&model)? {
                    pending.add_owned(g);
                    results.push(result);
                }
                results
            }
        };
        if pending.state.iter().any(Option::is_some) {
            return Err(EngineError::Training(
                "scaling.mode async: the model updates state in training (BatchNormalization moving \
                 statistics), which the parameter servers do not share; use mode sync or average"
                    .into(),
            ));
        }
        for result in results {
            rows += result.samples as u64;
            loss_sum += result.loss as f64 * result.samples as f64;
            correct += result.metrics.first().map_or(0, |m| m.1 as u64);
            parts += 1;
        }
        report.times.compute_ms += computing.elapsed().as_secs_f64() * 1e3;
        report.steps += 1;
        in_push += 1;
        if in_push as usize == every || i + 1 == numbers.len() {
            let pushing = Instant::now();
            let mut grads = std::mem::take(&mut pending);
            // Micro-batches summed in place were scaled as they went.
            let scaled = push_in_place.take() == Some(true);
            mean_and_clip(&mut grads, if scaled { 1 } else { parts }, &spec.model.compile.optimizer);
            let push = Push {
                job: spec.job_id.clone(),
                worker: rank,
                segment: spec.first_step,
                step,
                steps: in_push,
                base_version: 0,
                run: 0,
                rows,
                loss_sum,
                correct,
                sparse: vec![],
            };
            client.push(&mut model, &grads, &push)?;
            if scaled {
                pending = zeroed_for_reuse(grads);
            }
            model.set_steps_run(step + 1);
            report.pushes += 1;
            report.push_ms += pushing.elapsed().as_secs_f64() * 1e3;
            (parts, in_push, rows, loss_sum, correct) = (0, 0, 0, 0.0, 0);
        }
        // Given back after the push ([`super::cpu_turns`]): the worker that
        // takes it next pulls weights with this push in them, and a shard in
        // this process applies the push on this turn's core.
        drop(turn);
    }
    Ok(report)
}

/// A push's gradient buffers, zeroed to sum the next push's steps into:
/// an Embedding's only in the rows its tokens touched (the rest are zero
/// already; they stay known as untouched), every other whole. Fresh buffers
/// would cost the same zeroing of the whole Embedding, and new pages.
fn zeroed_for_reuse(mut grads: WeightGrads) -> WeightGrads {
    for (i, values) in grads.values.iter_mut().enumerate() {
        let Some(values) = values.as_mut() else { continue };
        match grads.rows.get_mut(i).and_then(Option::as_mut) {
            Some(touched) => {
                for &row in &touched.rows {
                    let at = row as usize * touched.width;
                    if let Some(r) = values.get_mut(at..at + touched.width) {
                        r.fill(0.0);
                    }
                }
                touched.rows.clear();
            }
            None => values.fill(0.0),
        }
    }
    grads
}

/// Turns on the cores unless `KALLISTA_CPU_TURNS=0` (to compare).
fn turns_enabled() -> bool {
    std::env::var("KALLISTA_CPU_TURNS").as_deref() != Ok("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_model::{adam, tiny_model};

    #[test]
    fn a_worker_starts_from_the_published_weights_and_not_from_its_configs_draws() {
        let compile = adam(&[]);
        let mut model = tiny_model(&compile);
        // A frozen layer whose weights were loaded (pre-trained), not drawn.
        model.set_trainable("q_embed", false).unwrap();
        let mut weights = model.named_weights();
        let key = weights.keys().find(|k| k.starts_with("q_embed/")).unwrap().clone();
        let pretrained = weights[&key].data().iter().map(|v| v * 0.5 + 0.25).collect();
        weights.insert(key.clone(), kallista_ops::tensor::Tensor::new(weights[&key].shape(), pretrained).unwrap());
        model.set_weights(&weights).unwrap();
        let local = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-async-start"));
        let dir = Location::from_path(&local).unwrap();
        let (config, published) = (dir.join("model.json"), dir.join("step-0.safetensors"));
        blocking::write(&config, model.to_json().into_bytes()).unwrap();
        blocking::write(&published, model.weights_bytes().unwrap()).unwrap();
        let r = ModelRef { config, weights: published, compile, binding: Default::default() };
        let started = starting_model(&r).unwrap();
        assert_eq!(started.named_weights()[&key], weights[&key], "the frozen layer's loaded weights");
        assert_eq!(started.named_weights(), model.named_weights());
        assert!(started.optimizer().is_some_and(|o| o.slots.is_empty()), "the shards hold the optimizer state");
        std::fs::remove_dir_all(local).unwrap();
    }

    #[test]
    fn reused_gradient_buffers_are_all_zero_and_an_embeddings_rows_untouched_again() {
        use kallista_ops::autodiff::TouchedRows;
        let grads = WeightGrads {
            values: vec![Some(vec![1.0, 2.0, 3.0].into()), None, Some(vec![0.0, 0.0, 5.0, 6.0, 0.0, 0.0].into())],
            rows: vec![None, None, Some(TouchedRows::new(2, vec![1]))],
            ..Default::default()
        };
        let zeroed = zeroed_for_reuse(grads);
        assert!(zeroed.values.iter().flatten().all(|v| v.iter().all(|x| *x == 0.0)), "{:?}", zeroed.values);
        assert!(zeroed.values[1].is_none());
        assert_eq!(zeroed.rows[2], Some(TouchedRows { width: 2, rows: vec![] }));
    }

    #[test]
    fn the_mean_is_clipped_per_weight_and_globally() {
        let mut g = WeightGrads {
            values: vec![Some(vec![6.0, 8.0].into()), None, Some(vec![0.0, 2.0].into())],
            ..Default::default()
        };
        // Two parts: the mean is (3, 4) and (0, 1); clipnorm 2.5 halves the first.
        mean_and_clip(&mut g, 2, &OptimizerConfig::sgd(0.1).clipnorm(2.5));
        assert_eq!(g.values[0], Some(vec![1.5, 2.0].into()));
        assert_eq!(g.values[2], Some(vec![0.0, 1.0].into()));
        // Global norm sqrt(1.5^2 + 2^2 + 1) = sqrt(7.25); clipped to 1.
        mean_and_clip(&mut g, 1, &OptimizerConfig::sgd(0.1).global_clipnorm(1.0));
        let n: f32 = g.values.iter().flatten().flatten().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-6, "{n}");
    }
}
