//! The driver loop of `train_and_evaluate`: stage the data, then `sync`
//! segments or `average` rounds of one Ballista query each, and on schedule
//! checkpoints and distributed evaluations. Everything it keeps goes to the
//! job dir ([`JobDir`]), on whatever store its URL names. For `sync` it also
//! hosts the rendezvous of the ranks and restarts a failed segment as a new
//! generation.

use super::args::{sql_ident, sql_idents, staging_select};
use super::job_dir::JobDir;
use super::layout::{sql_str, stage, DataSource, Layout, Staged};
use super::metrics::{EvalLine, MetricsLine, MetricsLog, TrainLine};
use super::round::{CompileSpec, EvalCounts, EvalSpec, Mode, ModelRef, RoundResult, RoundSpec};
use super::schedule::BlockSchedule;
use super::segment::SegmentSpec;
use super::servers::{AsyncSettings, ParameterServers};
use crate::cancel::{collect_unless, collect_within, Deadline, Tracking};
use crate::collective::frame::Secret;
use crate::collective::rendezvous::{Rendezvous, Status};
use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use kallista_data::binding::Binding;
use kallista_data::columns::is_plain;
use kallista_ops::model::Model;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Everything a training job needs, as the engine sees it.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub job_dir: JobDir,
    /// The built model (its weights are the initial ones unless resuming).
    pub model: Model,
    pub compile: CompileSpec,
    /// The columns the model reads: each input's, the label, the group, the row key.
    pub binding: Binding,
    pub train: DataSource,
    pub eval: Option<DataSource>,
    pub test: Option<DataSource>,
    pub batch_size: usize,
    pub micro_batch: usize,
    pub shards: usize,
    pub workers: usize,
    pub mode: Mode,
    pub sync_every_steps: u64,
    pub epochs: Option<u64>,
    pub max_steps: Option<u64>,
    pub eval_every_steps: Option<u64>,
    /// Evaluate on the first `eval_steps * batch_size` staged rows only.
    pub eval_steps: Option<u64>,
    pub checkpoint_every_steps: u64,
    pub seed: u64,
    pub resume: bool,
    /// A round (or `sync` segment) still running after this long is resubmitted.
    pub round_timeout: std::time::Duration,
    /// `sync`: where the driver's rendezvous listens (and ranks reach it).
    pub driver_host: String,
    /// `sync`: a segment whose ranks have not all started after this long
    /// is restarted with the ranks that did.
    pub rank_start_timeout: std::time::Duration,
    /// Where executors reach the driver's services (rendezvous, parameter
    /// servers) when not at `driver_host` (NAT, containers).
    pub advertised_host: Option<String>,
    /// `sync`: ranks of one host pass chunks through shared memory.
    pub shared_memory: bool,
    /// `async`: the parameter servers.
    pub asynchronous: AsyncSettings,
}

/// Loss and accuracy of one evaluation, overall and per question family.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub split: String,
    pub step: u64,
    pub overall: EvalCounts,
    pub families: BTreeMap<String, EvalCounts>,
}

/// What the driver reports while it runs.
#[derive(Clone, Debug)]
pub enum Event {
    Log(String),
    Round {
        step: u64,
        max_steps: u64,
        loss: f64,
        accuracy: f64,
        samples_per_s: f64,
        /// `async`: the pushes' mean staleness and the pushes dropped, in the current segment.
        staleness: Option<(f64, u64)>,
    },
    Eval(EvalSummary),
}

/// The outcome of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: u64,
    pub rounds: u64,
    pub train_rows: u64,
    /// Final weights (with optimizer state).
    pub weights: Option<Location>,
    pub eval: Option<EvalSummary>,
    pub best_eval_accuracy: Option<f64>,
    pub test: Option<EvalSummary>,
    pub samples_per_s: f64,
    pub mean_round_ms: f64,
    pub mean_compute_ms: f64,
}

/// `checkpoints/last.json`: what `--resume` continues from.
#[derive(Serialize, Deserialize)]
struct LastCheckpoint {
    step: u64,
    file: Location,
    best_eval_accuracy: Option<f64>,
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| EngineError::Invalid(e.to_string()))
}

/// Runs a query returning one string (the functions' JSON answers).
async fn query_string(ctx: &SessionContext, sql: &str) -> Result<String> {
    first_string(&ctx.sql(sql).await?.collect().await?, sql)
}

/// The string in the first row of a query's answer.
fn first_string(batches: &[RecordBatch], sql: &str) -> Result<String> {
    let col = batches.iter().find(|b| b.num_rows() > 0).map(|b| b.column(0).clone());
    let s = col
        .as_ref()
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .filter(|a| !a.is_null(0))
        .map(|a| a.value(0).to_string());
    s.ok_or_else(|| EngineError::Training(format!("no result from: {sql}")))
}

/// How often a round is submitted before the job fails.
const ROUND_ATTEMPTS: usize = 3;

/// Runs a round's query; resubmits it when it has not finished within
/// `timeout` (after cancelling its Ballista job, for rounds of several
/// steps: [`Tracking`]) or the cluster failed it (lost executors, failed stages), at
/// most [`ROUND_ATTEMPTS`] times. A deterministic failure (a bad row, a NaN
/// loss: [`EngineError::is_deterministic`]) fails at once. Rounds are
/// idempotent: a rerun recomputes the same partial results under the same
/// names. Ballista re-runs the tasks of a lost executor by itself; this is
/// the backstop for the rare job that never completes after an executor loss
/// (upstream apache/datafusion-ballista#1986).
async fn run_round(
    ctx: &SessionContext,
    sql: &str,
    timeout: std::time::Duration,
    step: u64,
    steps: u64,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<String> {
    // Rounds of many steps are worth a job id to cancel; one-step rounds
    // (`sync`) keep the scheduler's pushed status, without polling delay.
    let tracking = if steps > 1 { Tracking::Poll } else { Tracking::Push };
    let mut last = String::new();
    for attempt in 1..=ROUND_ATTEMPTS {
        last = match collect_within(ctx, sql, timeout, tracking).await {
            Ok(Deadline::Finished(batches)) => return first_string(&batches, sql),
            Err(e) if e.is_deterministic() => {
                let cause = EngineError::from_remote(&e.to_string()).unwrap_or(e);
                return Err(EngineError::Training(format!("round at step {step} failed: {cause}")));
            }
            Err(e) => format!("failed: {e}"),
            Ok(Deadline::Aborted { .. }) => "was aborted".to_string(),
            Ok(Deadline::TimedOut { job }) => format!(
                "did not finish within {}s{}",
                timeout.as_secs(),
                job.map_or(String::new(), |j| format!(" (its job {j} cancelled)"))
            ),
        };
        log::warn!("round at step {step} {last} (attempt {attempt}/{ROUND_ATTEMPTS})");
        if attempt < ROUND_ATTEMPTS {
            on_event(&Event::Log(format!(
                "round at step {step} {last} (attempt {attempt}/{ROUND_ATTEMPTS}); resubmitting"
            )));
        }
    }
    Err(EngineError::Training(format!("round at step {step} {last}, {ROUND_ATTEMPTS} times")))
}

/// Steps of the `average` round starting at `step`: `every`, cut short so
/// that a round ends on each evaluation, each checkpoint and the last step.
fn round_steps(step: u64, every: u64, max_steps: u64, checkpoint_every: u64, eval_every: Option<u64>) -> u64 {
    let next_multiple = |n: u64| step.checked_div(n).map_or(u64::MAX, |q| (q + 1) * n);
    let mut end = (step + every).min(max_steps).min(next_multiple(checkpoint_every));
    if let Some(n) = eval_every {
        end = end.min(next_multiple(n));
    }
    end - step
}

/// Attempts at a `sync` segment (generations) before the job fails: a lost
/// rank, then too few slots for the old number of ranks, then the rest.
const SEGMENT_ATTEMPTS: usize = 4;

/// A finished round, as the driver takes it.
struct RoundOutcome {
    result: RoundResult,
    /// Optimizer steps the round took.
    steps: u64,
    query_ms: f64,
    started: Instant,
}

/// The staged splits of a job.
struct Splits {
    train: Staged,
    eval: Option<Staged>,
    test: Option<Staged>,
}

/// The driver's side of `sync` collectives: the rendezvous, the job's
/// secret (in the job dir's store, named in specs by its URL only), the
/// generation counter and the current number of ranks.
struct Collective {
    rendezvous: Rendezvous,
    job_id: String,
    secret: Location,
    generation: u64,
    world: usize,
}

/// A fresh job id and secret (its bytes); the secret stored in the job dir (named in specs by its URL only).
fn job_secret(cfg: &TrainConfig) -> Result<(String, Vec<u8>, Location)> {
    if cfg.workers > cfg.shards {
        return Err(EngineError::Invalid(format!(
            "scaling: {} workers need at least as many shards (shards: {}): each worker reads whole shards",
            cfg.workers, cfg.shards
        )));
    }
    let (_, bytes) = Secret::generate().map_err(|e| EngineError::Invalid(e.to_string()))?;
    let at = cfg.job_dir.root().join("collective.secret");
    blocking::write(&at, bytes.clone())?;
    let (_, random) = Secret::generate().map_err(|e| EngineError::Invalid(e.to_string()))?;
    let job_id = random[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok((job_id, bytes, at))
}

impl Collective {
    fn start(cfg: &TrainConfig) -> Result<Collective> {
        let (job_id, secret, at) = job_secret(cfg)?;
        let rendezvous = Rendezvous::start(&cfg.driver_host, job_id.clone(), Secret::from_bytes(&secret))?;
        Ok(Collective { rendezvous, job_id, secret: at, generation: 0, world: cfg.workers.max(1) })
    }
}

/// The driver's side of `async` training: the parameter servers and the job's secret.
struct AsyncJob {
    servers: ParameterServers,
    job_id: String,
    secret: Location,
}

impl AsyncJob {
    fn start(cfg: &TrainConfig, model: &Model) -> Result<AsyncJob> {
        let (job_id, secret, at) = job_secret(cfg)?;
        let advertised = cfg.advertised_host.as_deref().unwrap_or(&cfg.driver_host);
        let servers = ParameterServers::start(
            model,
            &cfg.asynchronous,
            cfg.workers,
            &job_id,
            &secret,
            &cfg.driver_host,
            advertised,
        )?;
        // Where the job's servers listen (not secret: every worker's spec names them).
        let record = serde_json::json!({ "job": job_id, "servers": servers.addresses(), "pid": std::process::id() });
        blocking::write(&cfg.job_dir.root().join("servers.json"), record.to_string().into_bytes())?;
        Ok(AsyncJob { servers, job_id, secret: at })
    }
}

/// Parquet bytes of a one-row table holding `rank`.
fn rank_file(rank: usize) -> Result<Vec<u8>> {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("rank", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![std::sync::Arc::new(Int64Array::from(vec![rank as i64]))])
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    let mut out = vec![];
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    w.write(&batch).map_err(|e| EngineError::Invalid(e.to_string()))?;
    w.close().map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok(out)
}

/// Waits until `generation` fails; meanwhile, once its ranks have all
/// registered, writes where they run to `placement` (`ranks.json`).
async fn watch_generation(
    rendezvous: &Rendezvous,
    generation: u64,
    start_timeout: Duration,
    placement: &Location,
    step: u64,
) {
    let failed = rendezvous.failure(generation, start_timeout);
    let record = async {
        loop {
            if let Status::Started(ranks) = rendezvous.status(generation) {
                // Where the segment's service listens and for which job: not secret (both are in its plan).
                let line = serde_json::json!({
                    "step": step,
                    "generation": generation,
                    "job": rendezvous.job(),
                    "rendezvous": rendezvous.address(),
                    "ranks": ranks,
                });
                if let Err(e) = blocking::write(placement, line.to_string().into_bytes()) {
                    log::warn!("could not record the placement of generation {generation}: {e}");
                }
                return std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = failed => {}
        () = record => {}
    }
}

/// A running job: the driver's state between named steps.
struct Job<'a> {
    cfg: TrainConfig,
    ctx: &'a SessionContext,
    splits: Splits,
    schedule: BlockSchedule,
    max_steps: u64,
    step: u64,
    metrics: MetricsLog,
    model_ref: ModelRef,
    best: Option<f64>,
    last_eval: Option<EvalSummary>,
    report: TrainReport,
    started: Instant,
    round_ms: f64,
    compute_ms: f64,
    samples: u64,
    /// `sync` only.
    collective: Option<Collective>,
    /// `async` only.
    asynchronous: Option<AsyncJob>,
    /// Rank tables registered in the session (`sync`, `async`), by number of ranks.
    rank_tables: BTreeSet<usize>,
}

/// Runs the job on the cluster behind `ctx` (see [`crate::session::training_session`]).
pub async fn train(
    cfg: TrainConfig,
    ctx: &SessionContext,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<TrainReport> {
    let mut job = Job::start(cfg, ctx, on_event).await?;
    while job.step < job.max_steps {
        let round = job.run_round(on_event).await?;
        job.apply_round(&round)?;
        job.record_round(&round, on_event)?;
        if job.eval_due() {
            job.evaluate_and_keep_best(on_event).await?;
        }
        // After the evaluation, so that the checkpoint records the best accuracy so far.
        if job.checkpoint_due() {
            job.checkpoint()?;
        }
    }
    job.finish(on_event).await
}

impl<'a> Job<'a> {
    /// Writes the model config, stages the splits, resumes or starts the
    /// metrics, and publishes the first weights version.
    async fn start(
        cfg: TrainConfig,
        ctx: &'a SessionContext,
        on_event: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Job<'a>> {
        let dir = cfg.job_dir.clone();
        blocking::write(&dir.model_json(), cfg.model.to_json().into_bytes())?;
        let splits = stage_splits(&cfg, ctx, on_event).await?;
        let schedule = splits.train.schedule(cfg.batch_size / cfg.micro_batch / cfg.shards);
        let per_epoch = schedule.steps_per_epoch();
        if per_epoch == 0 {
            return Err(EngineError::Invalid(format!(
                "training data: {} rows make no step of batch {} (need {} per shard)",
                splits.train.rows,
                cfg.batch_size,
                cfg.batch_size / cfg.shards
            )));
        }
        let max_steps = cfg.max_steps.unwrap_or_else(|| cfg.epochs.unwrap_or(1) * per_epoch);
        let mut model = cfg.model.clone();
        super::model_cache::compile(&mut model, &cfg.compile)?;
        let (mut step, mut best) = (0, None);
        if cfg.resume {
            let last: LastCheckpoint = serde_json::from_str(&blocking::read_string(&dir.last())?)
                .map_err(|e| EngineError::Corrupt { path: dir.last().to_string(), detail: e.to_string() })?;
            model.load_weights_bytes(&blocking::read(&last.file)?, &last.file.to_string())?;
            model.set_steps_run(last.step);
            (step, best) = (last.step, last.best_eval_accuracy);
            on_event(&Event::Log(format!("resumed from {} (step {step})", last.file)));
        } else {
            // A fresh start: nothing of an earlier run may be taken for this one's.
            dir.clear_earlier_run()?;
        }
        let metrics = MetricsLog::open(&dir, cfg.resume)?;
        let collective = match cfg.mode {
            Mode::Sync => Some(Collective::start(&cfg)?),
            Mode::Average | Mode::Async => None,
        };
        let asynchronous = match cfg.mode {
            Mode::Async => Some(AsyncJob::start(&cfg, &model)?),
            Mode::Average | Mode::Sync => None,
        };
        let model_ref = ModelRef {
            config: dir.model_json(),
            weights: dir.weights(step),
            compile: cfg.compile.clone(),
            binding: cfg.binding.clone(),
        };
        let report = TrainReport { train_rows: splits.train.rows, ..Default::default() };
        let mut job = Job {
            cfg: TrainConfig { model, ..cfg },
            ctx,
            splits,
            schedule,
            max_steps,
            step,
            metrics,
            model_ref,
            best,
            last_eval: None,
            report,
            started: Instant::now(),
            round_ms: 0.0,
            compute_ms: 0.0,
            samples: 0,
            collective,
            asynchronous,
            rank_tables: BTreeSet::new(),
        };
        job.publish()?;
        Ok(job)
    }

    fn dir(&self) -> &JobDir {
        &self.cfg.job_dir
    }

    /// Writes the first weights version (with the optimizer state: workers
    /// and ranks step from it).
    fn publish(&mut self) -> Result<()> {
        let at = self.dir().weights(self.step);
        blocking::write_scratch(&at, self.cfg.model.weights_bytes()?)?;
        self.adopt(at)
    }

    /// Makes `at` the weights version the next round reads, and deletes the previous one.
    fn adopt(&mut self, at: Location) -> Result<()> {
        let old = std::mem::replace(&mut self.model_ref.weights, at);
        if old != self.model_ref.weights && old.is_under(&self.dir().weights_dir()) {
            blocking::delete(&old)?;
        }
        Ok(())
    }

    /// Runs the next round's query (`average`) or segment (`sync`).
    async fn run_round(&mut self, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<RoundOutcome> {
        let step = self.step;
        let k = round_steps(
            step,
            self.cfg.sync_every_steps,
            self.max_steps,
            self.cfg.checkpoint_every_steps,
            self.cfg.eval_every_steps,
        );
        match self.cfg.mode {
            Mode::Sync => return self.run_segment(k, on_event).await,
            Mode::Async => return self.run_async_segment(k, on_event).await,
            Mode::Average => {}
        }
        let steps: Vec<Vec<u64>> = (step..step + k).map(|s| self.schedule.blocks_of_step(s)).collect();
        let mut blocks: Vec<u64> = steps.concat();
        blocks.sort_unstable();
        let spec = RoundSpec {
            model: self.model_ref.clone(),
            mode: self.cfg.mode,
            round: step,
            first_step: step,
            steps,
            seed: self.cfg.seed,
            workers: self.cfg.workers,
            job: self.dir().clone(),
            data: self.splits.train.dir.clone(),
            next_weights: self.dir().weights(step + k),
        };
        let spec_json = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let list = blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
        let columns = sql_idents(&super::args::data_columns(&self.cfg.binding));
        let sql = format!(
            "SELECT kallista_train({columns}, block, {}) FROM kallista_train WHERE block IN ({list})",
            sql_str(&spec_json)
        );
        let t0 = Instant::now();
        let json = run_round(self.ctx, &sql, self.cfg.round_timeout, step, k, on_event).await?;
        let query_ms = t0.elapsed().as_secs_f64() * 1e3;
        let result: RoundResult =
            serde_json::from_str(&json).map_err(|e| EngineError::Training(format!("round result: {e}")))?;
        Ok(RoundOutcome { result, steps: k, query_ms, started: t0 })
    }

    /// Runs a `sync` segment of `k` steps: one Ballista job of `world` ranks
    /// ([`super::segment`]). A failed generation (a lost or failed rank, ranks
    /// that did not all start, a refused message) has its job cancelled and
    /// the segment restarted from its first step as the next generation,
    /// with as many ranks as started when too few could.
    async fn run_segment(&mut self, k: u64, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<RoundOutcome> {
        let step = self.step;
        let steps: Vec<Vec<u64>> = (step..step + k).map(|s| self.schedule.blocks_of_step(s)).collect();
        let t0 = Instant::now();
        let mut last = String::new();
        for attempt in 1..=SEGMENT_ATTEMPTS {
            let world = self.collective.as_ref().map_or(1, |c| c.world);
            let table = self.ranks_table(world).await?;
            let c = self.collective.as_mut().ok_or_else(|| EngineError::Invalid("sync without a rendezvous".into()))?;
            c.generation += 1;
            let generation = c.generation;
            c.rendezvous.open(generation, world);
            let spec = SegmentSpec {
                model: self.model_ref.clone(),
                job: self.cfg.job_dir.clone(),
                job_id: c.job_id.clone(),
                generation,
                world,
                first_step: step,
                steps: steps.clone(),
                shards: self.splits.train.shards,
                data: self.splits.train.dir.clone(),
                seed: self.cfg.seed,
                rendezvous: c.rendezvous.address().to_string(),
                secret: c.secret.clone(),
                next_weights: self.cfg.job_dir.weights(step + k),
                timeout_s: self.cfg.round_timeout.as_secs().max(1),
                shared_memory: self.cfg.shared_memory,
            };
            let spec_json = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
            let sql = format!("SELECT kallista_segment(rank, {}) FROM {table}", sql_str(&spec_json));
            let placement = self.cfg.job_dir.root().join("ranks.json");
            let c = self.collective.as_ref().ok_or_else(|| EngineError::Invalid("sync without a rendezvous".into()))?;
            let watch = watch_generation(&c.rendezvous, generation, self.cfg.rank_start_timeout, &placement, step);
            let outcome = collect_unless(self.ctx, &sql, self.cfg.round_timeout, Tracking::Poll, watch).await;
            let failure = |c: &Collective| match c.rendezvous.status(generation) {
                Status::Failed(f) => Some(f),
                _ => None,
            };
            last = match outcome {
                Ok(Deadline::Finished(batches)) => {
                    let json = first_string(&batches, &sql)?;
                    let result: RoundResult = serde_json::from_str(&json)
                        .map_err(|e| EngineError::Training(format!("segment result: {e}")))?;
                    let query_ms = t0.elapsed().as_secs_f64() * 1e3;
                    return Ok(RoundOutcome { result, steps: k, query_ms, started: t0 });
                }
                Ok(Deadline::Aborted { job }) => {
                    let f = failure(c).unwrap_or_else(|| crate::collective::rendezvous::Failure {
                        reason: "aborted".into(),
                        deterministic: false,
                        started: 0,
                        short_of_ranks: false,
                    });
                    if f.deterministic {
                        return Err(EngineError::Training(format!("segment at step {step} failed: {}", f.reason)));
                    }
                    let cancelled = job.map_or(String::new(), |j| format!("; its job {j} cancelled"));
                    format!("generation {generation} ({world} ranks) failed: {}{cancelled}", f.reason)
                }
                Ok(Deadline::TimedOut { job }) => {
                    c.rendezvous.fail(generation, "the segment ran past its timeout".into());
                    let cancelled = job.map_or(String::new(), |j| format!(" (its job {j} cancelled)"));
                    format!(
                        "generation {generation} did not finish within {}s{cancelled}",
                        self.cfg.round_timeout.as_secs()
                    )
                }
                Err(e) if e.is_deterministic() => {
                    c.rendezvous.fail(generation, e.to_string());
                    let cause = EngineError::from_remote(&e.to_string()).unwrap_or(e);
                    return Err(EngineError::Training(format!("segment at step {step} failed: {cause}")));
                }
                Err(e) => {
                    c.rendezvous.fail(generation, e.to_string());
                    format!("generation {generation} failed: {e}")
                }
            };
            // Too few ranks started (a slot lost for good): rerun with those that did.
            // The job may end in an error rather than an abort when a refused rank fails it first.
            let next_world = failure(c).map_or(world, |f| f.world_that_fits(world));
            if let Some(c) = self.collective.as_mut() {
                c.world = next_world;
            }
            log::warn!("segment at step {step}: {last} (attempt {attempt}/{SEGMENT_ATTEMPTS})");
            if attempt < SEGMENT_ATTEMPTS {
                on_event(&Event::Log(format!(
                    "segment at step {step}: {last}; restarting it from step {step} with {next_world} ranks \
                     (attempt {}/{SEGMENT_ATTEMPTS})",
                    attempt + 1
                )));
            }
        }
        Err(EngineError::Training(format!("segment at step {step}: {last}, {SEGMENT_ATTEMPTS} times")))
    }

    /// Runs an `async` segment of `k` steps: one Ballista job of `workers`
    /// long tasks against the parameter servers ([`super::async_worker`]),
    /// resubmitted as a round is when it fails (its re-run workers skip the
    /// steps they already pushed). Meanwhile the progress line follows the
    /// shards' counters. Afterwards the shards' state becomes the next
    /// weights version.
    async fn run_async_segment(&mut self, k: u64, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<RoundOutcome> {
        let step = self.step;
        let world = self.cfg.workers.max(1);
        let table = self.ranks_table(world).await?;
        let a = self.asynchronous.as_ref().ok_or_else(|| EngineError::Invalid("async without servers".into()))?;
        let spec = super::async_worker::AsyncSpec {
            model: self.model_ref.clone(),
            job_id: a.job_id.clone(),
            world,
            first_step: step,
            steps: (step..step + k).map(|s| self.schedule.blocks_of_step(s)).collect(),
            shards: self.splits.train.shards,
            data: self.splits.train.dir.clone(),
            seed: self.cfg.seed,
            servers: a.servers.addresses(),
            secret: a.secret.clone(),
            push_every_steps: self.cfg.asynchronous.push_every_steps,
            timeout_s: self.cfg.round_timeout.as_secs().max(1),
            shared_memory: self.cfg.shared_memory,
        };
        let spec_json = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let sql = format!("SELECT kallista_async(rank, {}) FROM {table}", sql_str(&spec_json));
        let t0 = Instant::now();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
        let json = {
            let kept = logs.clone();
            let mut keep = move |e: &Event| kept.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
            let query = run_round(self.ctx, &sql, self.cfg.round_timeout, step, k, &mut keep);
            tokio::pin!(query);
            loop {
                tokio::select! {
                    done = &mut query => break done?,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        for e in std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner())) {
                            on_event(&e);
                        }
                        on_event(&self.async_progress(step, k));
                    }
                }
            }
        };
        for e in std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner())) {
            on_event(&e);
        }
        let query_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut result: RoundResult =
            serde_json::from_str(&json).map_err(|e| EngineError::Training(format!("async segment result: {e}")))?;
        let a = self.asynchronous.as_mut().ok_or_else(|| EngineError::Invalid("async without servers".into()))?;
        let end = a.servers.end_segment()?;
        let (workers, totals, refused) = (end.workers, end.totals, end.refused);
        (result.rows, result.loss_sum, result.correct) = (totals.rows, totals.loss_sum, totals.correct);
        if refused > 0 {
            log::warn!("the parameter servers refused {refused} messages so far (see the warnings above)");
        }
        // A part's `first_block` holds its worker's rank.
        for part in &mut result.parts {
            part.rows = workers.iter().find(|w| w.worker as u64 == part.first_block).map_or(0, |w| w.rows);
        }
        result.workers = workers;
        // The shards are quiet between segments: one consistent state of them all.
        let model = &mut self.cfg.model;
        a.servers.read_into(model)?;
        model.set_steps_run(step + k);
        let at = self.cfg.job_dir.weights(step + k);
        blocking::write_scratch(&at, model.weights_bytes()?)?;
        result.file = Some(at);
        Ok(RoundOutcome { result, steps: k, query_ms, started: t0 })
    }

    /// The progress of a running `async` segment, from the shards' counters.
    fn async_progress(&self, step: u64, k: u64) -> Event {
        let Some(a) = self.asynchronous.as_ref() else { return Event::Log(String::new()) };
        // Best effort: a shard that does not answer fails the segment itself.
        let t = a.servers.segment_totals().unwrap_or_default();
        let (rows, loss_sum, correct) = (t.rows, t.loss_sum, t.correct);
        let per_step = (self.cfg.batch_size as u64).max(1);
        let done = (rows / per_step).min(k);
        let seconds = (self.started.elapsed().as_secs_f64()).max(1e-3);
        Event::Round {
            step: step + done,
            max_steps: self.max_steps,
            loss: loss_sum / rows.max(1) as f64,
            accuracy: correct as f64 / rows.max(1) as f64,
            samples_per_s: (self.samples + rows) as f64 / seconds,
            staleness: Some((t.staleness_sum as f64 / t.pushes.max(1) as f64, t.dropped)),
        }
    }

    /// The table of `world` ranks, one Parquet file (one partition) per rank,
    /// written and registered on first use.
    async fn ranks_table(&mut self, world: usize) -> Result<String> {
        let name = format!("kallista_ranks_{world}");
        if self.rank_tables.insert(world) {
            let dir = self.cfg.job_dir.root().join(&format!("ranks/w{world}"));
            for rank in 0..world {
                blocking::write(&dir.join(&format!("rank-{rank}.parquet")), rank_file(rank)?)?;
            }
            self.ctx.sql(&format!("DROP TABLE IF EXISTS {name}")).await?.collect().await?;
            let sql = format!("CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION {}", sql_str(&dir.dir_url()));
            self.ctx.sql(&sql).await?.collect().await?;
        }
        Ok(name)
    }

    /// Takes the version the round or segment published, then deletes the
    /// round's scratch objects.
    fn apply_round(&mut self, round: &RoundOutcome) -> Result<()> {
        let result = &round.result;
        self.step += round.steps;
        let file = result
            .file
            .clone()
            .ok_or_else(|| EngineError::Training("a round produced no weights (no rows reached the workers)".into()))?;
        self.adopt(file)?;
        for f in &result.partial_files {
            blocking::delete(f)?;
        }
        Ok(())
    }

    /// Adds the round to `metrics.jsonl` and the progress report.
    fn record_round(&mut self, round: &RoundOutcome, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<()> {
        let result = &round.result;
        let ms = round.started.elapsed().as_secs_f64() * 1e3;
        self.report.rounds += 1;
        self.round_ms += ms;
        self.compute_ms += result.slowest.compute_ms;
        self.samples += result.rows;
        let loss = result.loss_sum / result.rows.max(1) as f64;
        let accuracy = result.correct as f64 / result.rows.max(1) as f64;
        let rate = self.samples as f64 / self.started.elapsed().as_secs_f64();
        let step = self.step;
        log::info!(
            "step {step}/{}: loss {loss:.4} accuracy {accuracy:.3}, round {ms:.0} ms over {} partitions",
            self.max_steps,
            result.partitions
        );
        self.metrics.push(&MetricsLine::Train(TrainLine {
            step,
            epoch: step as f64 / self.schedule.steps_per_epoch() as f64,
            loss,
            accuracy,
            rows: result.rows,
            samples_per_s: rate,
            round_ms: ms,
            query_ms: round.query_ms,
            compute_ms: result.slowest.compute_ms,
            scan_ms: result.slowest.scan_ms,
            load_ms: result.slowest.load_ms,
            write_ms: result.slowest.write_ms,
            reduce_ms: result.reduce_ms,
            partitions: result.partitions,
            steps_in_round: round.steps,
            parts: result.parts.clone(),
            generation: result.generation,
            processes: result.processes,
            shared_memory_links: result.shared_memory_links,
            allreduce_ms_per_step: result.reduce_ms / round.steps.max(1) as f64,
            sent_bytes_per_step: result.sent_bytes_per_step,
            workers: result.workers.clone(),
        }))?;
        let pushes: u64 = result.workers.iter().map(|w| w.pushes).sum();
        let staleness = (!result.workers.is_empty()).then(|| {
            let stale: f64 = result.workers.iter().map(|w| w.mean_staleness * w.pushes as f64).sum();
            (stale / pushes.max(1) as f64, result.workers.iter().map(|w| w.dropped).sum())
        });
        on_event(&Event::Round { step, max_steps: self.max_steps, loss, accuracy, samples_per_s: rate, staleness });
        Ok(())
    }

    fn eval_due(&self) -> bool {
        self.splits.eval.is_some()
            && (self.cfg.eval_every_steps.is_some_and(|n| self.step.is_multiple_of(n)) || self.step == self.max_steps)
    }

    fn checkpoint_due(&self) -> bool {
        self.step.is_multiple_of(self.cfg.checkpoint_every_steps) || self.step == self.max_steps
    }

    /// Evaluates on the eval split; keeps the best weights so far.
    async fn evaluate_and_keep_best(&mut self, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<()> {
        let summary = self.evaluate("eval").await?;
        if self.best.is_none_or(|b| summary.overall.accuracy() > b) {
            self.best = Some(summary.overall.accuracy());
            self.save_state(&self.dir().best())?;
            blocking::write(&self.dir().best_json(), to_json(&summary)?)?;
        }
        self.metrics.flush()?;
        on_event(&Event::Eval(summary.clone()));
        self.last_eval = Some(summary);
        Ok(())
    }

    /// Runs `kallista_evaluate` over a staged split.
    async fn evaluate(&mut self, split: &str) -> Result<EvalSummary> {
        let staged = match split {
            "eval" => self.splits.eval.as_ref(),
            _ => self.splits.test.as_ref(),
        }
        .ok_or_else(|| EngineError::Invalid(format!("no {split} split")))?;
        let spec = EvalSpec { model: self.model_ref.clone(), data: staged.dir.clone() };
        let spec = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let filter = match (split, self.cfg.eval_steps) {
            ("eval", Some(n)) => {
                let blocks = (n * self.cfg.batch_size as u64).div_ceil(staged.micro_batch as u64);
                format!("WHERE block < {blocks}")
            }
            _ => String::new(),
        };
        let columns = sql_idents(&super::args::data_columns(&self.model_ref.binding));
        let sql =
            format!("SELECT kallista_evaluate({columns}, {GROUP}, {}) FROM kallista_{split} {filter}", sql_str(&spec));
        let json = query_string(self.ctx, &sql).await?;
        let families: BTreeMap<String, EvalCounts> =
            serde_json::from_str(&json).map_err(|e| EngineError::Training(format!("evaluation result: {e}")))?;
        let mut overall = EvalCounts::default();
        families.values().for_each(|c| overall.add(c));
        let summary = EvalSummary { split: split.into(), step: self.step, overall, families };
        self.metrics.push(&MetricsLine::Eval(EvalLine {
            split: split.into(),
            step: self.step,
            loss: summary.overall.loss(),
            accuracy: summary.overall.accuracy(),
            families: summary.families.iter().map(|(k, c)| (k.clone(), c.accuracy())).collect(),
        }))?;
        Ok(summary)
    }

    /// Keeps the job's weights and optimizer state at `at`: a copy of the
    /// published version, made by the store (a hard link between local files).
    fn save_state(&self, at: &Location) -> Result<()> {
        blocking::copy(&self.model_ref.weights, at)
    }

    /// Writes the step's checkpoint, then `last.json` naming it; keeps the two newest.
    fn checkpoint(&mut self) -> Result<()> {
        let at = self.dir().checkpoint(self.step);
        self.save_state(&at)?;
        let last = LastCheckpoint { step: self.step, file: at, best_eval_accuracy: self.best };
        blocking::write(&self.dir().last(), to_json(&last)?)?;
        self.metrics.flush()?;
        let mut steps: Vec<(u64, Location)> = blocking::list(&self.dir().checkpoints())?
            .into_iter()
            .filter_map(|(l, _)| Some((JobDir::checkpoint_step(l.file_name())?, l)))
            .collect();
        steps.sort_by_key(|(n, _)| *n);
        for (_, old) in steps.iter().rev().skip(2) {
            blocking::delete(old)?;
        }
        Ok(())
    }

    /// The test evaluation, `results.json`, and the report.
    async fn finish(mut self, on_event: &mut (dyn FnMut(&Event) + Send)) -> Result<TrainReport> {
        let mut report = std::mem::take(&mut self.report);
        report.steps = self.step;
        report.weights = Some(self.model_ref.weights.clone());
        report.eval = self.last_eval.take();
        report.best_eval_accuracy = self.best;
        if self.splits.test.is_some() {
            let summary = self.evaluate("test").await?;
            on_event(&Event::Eval(summary.clone()));
            report.test = Some(summary);
        }
        if report.rounds > 0 {
            report.samples_per_s = self.samples as f64 / self.started.elapsed().as_secs_f64();
            report.mean_round_ms = self.round_ms / report.rounds as f64;
            report.mean_compute_ms = self.compute_ms / report.rounds as f64;
        }
        self.metrics.flush()?;
        blocking::write(&self.dir().results(), to_json(&report)?)?;
        if let Some(c) = &self.collective {
            blocking::delete(&c.secret)?;
        }
        if let Some(a) = &self.asynchronous {
            blocking::delete(&a.secret)?;
        }
        Ok(report)
    }
}

/// The column a staged split keeps the binding's group in (`''` without one).
pub const GROUP: &str = "kallista_group";

/// The row key staging shards by (the binding's, else every column of the
/// training data that is not a list or binary), and the float-list inputs
/// that staging packs.
async fn key_and_packed(cfg: &TrainConfig, ctx: &SessionContext) -> Result<(Vec<String>, Vec<String>)> {
    use datafusion::arrow::datatypes::DataType;
    let sql = format!("SELECT * FROM {} LIMIT 0", cfg.train.relation());
    let schema = ctx.sql(&sql).await?.schema().as_arrow().clone();
    let is_list = |t: &DataType| {
        matches!(t, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) | DataType::ListView(_))
    };
    let key = match cfg.binding.key.is_empty() {
        false => cfg.binding.key.clone(),
        true => schema.fields().iter().filter(|f| is_plain(f.data_type())).map(|f| f.name().clone()).collect(),
    };
    if key.is_empty() {
        return Err(EngineError::Invalid(format!(
            "{}: no column to key rows by (every column is a list or binary): name data.key",
            cfg.train.relation()
        )));
    }
    let specs = cfg.model.input_specs();
    let packed = cfg
        .binding
        .inputs
        .iter()
        .zip(&specs)
        .filter(|(c, spec)| {
            spec.spec.dtype == kallista_ops::DType::F32
                && schema.field_with_name(c).is_ok_and(|f| is_list(f.data_type()))
        })
        .map(|(c, _)| c.clone())
        .collect();
    Ok((key, packed))
}

/// Stages every split of the job and names them as tables for the rounds.
async fn stage_splits(
    cfg: &TrainConfig,
    ctx: &SessionContext,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<Splits> {
    let (key, packed) = key_and_packed(cfg, ctx).await?;
    let group = match &cfg.binding.group_by {
        Some(g) => format!("CAST({} AS VARCHAR)", sql_ident(g)),
        None => "''".to_string(),
    };
    let layout = |split: &str, full_blocks_only| Layout {
        job: cfg.job_dir.clone(),
        split: split.into(),
        columns: format!("{}, {group} AS {GROUP}", staging_select(&cfg.binding, &packed)),
        plain_columns: packed.clone(),
        key: key.clone(),
        micro_batch: cfg.micro_batch,
        shards: cfg.shards,
        seed: cfg.seed,
        full_blocks_only,
    };
    on_event(&Event::Log(format!("staging training data from {}", cfg.train.relation())));
    let train = stage(ctx, &cfg.train, &layout("train", true)).await?;
    let eval = match &cfg.eval {
        Some(s) => Some(stage(ctx, s, &layout("eval", false)).await?),
        None => None,
    };
    let test = match &cfg.test {
        Some(s) => Some(stage(ctx, s, &layout("test", false)).await?),
        None => None,
    };
    for (name, s) in [("train", Some(&train)), ("eval", eval.as_ref()), ("test", test.as_ref())] {
        if let Some(s) = s {
            ctx.sql(&format!("DROP TABLE IF EXISTS kallista_{name}")).await?.collect().await?;
            let sql = format!(
                "CREATE EXTERNAL TABLE kallista_{name} STORED AS PARQUET LOCATION {}",
                sql_str(&s.dir.dir_url())
            );
            ctx.sql(&sql).await?.collect().await?;
            on_event(&Event::Log(format!("{name}: {} rows in {} blocks over {} shards", s.rows, s.blocks(), s.shards)));
        }
    }
    Ok(Splits { train, eval, test })
}

#[cfg(test)]
mod tests {
    use super::round_steps;

    #[test]
    fn average_rounds_end_on_evaluations_checkpoints_and_the_last_step() {
        assert_eq!(round_steps(0, 100, 1000, 500, Some(1000)), 100);
        assert_eq!(round_steps(450, 100, 1000, 500, None), 50, "checkpoint at 500");
        assert_eq!(round_steps(500, 100, 1000, 500, Some(250)), 100);
        assert_eq!(round_steps(700, 100, 1000, 500, Some(250)), 50, "evaluation at 750");
        assert_eq!(round_steps(950, 100, 980, 500, None), 30, "last step");
        assert_eq!(round_steps(3, 100, 1000, 0, Some(0)), 100, "zero means never");
    }
}
