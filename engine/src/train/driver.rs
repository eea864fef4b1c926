//! The driver loop of `train_and_evaluate`: stage the data, then rounds of
//! one Ballista query each (in `sync` followed by the optimizer step here and
//! a new weights version), and on schedule checkpoints and distributed
//! evaluations.
//!
//! The job directory (visible to every executor: one machine, or a shared
//! file system) holds:
//! - `model.json`: the model config;
//! - `data/{train,eval,test}/`: the staged splits ([`super::layout`]);
//! - `weights/step-N.safetensors`: the version the next round reads (the
//!   driver writes it in `sync`, the round's final stage in `average`);
//! - `rounds/`: partial and reduced results of the round in flight;
//! - `checkpoints/step-N.safetensors` (weights + optimizer state),
//!   `checkpoints/last.json`, `checkpoints/best.safetensors` + `best.json`;
//! - `metrics.jsonl`: one line per round and per evaluation;
//! - `results.json`: the final evaluation and test results.

use super::layout::{stage, DataSource, Staged};
use super::round::{CompileSpec, EvalCounts, EvalSpec, Mode, ModelRef, RoundResult, RoundSpec};
use super::vectors::read_vectors;
use crate::error::{EngineError, Result};
use datafusion::arrow::array::{Array, StringArray};
use datafusion::prelude::SessionContext;
use kallista_ops::model::{Model, WeightGrads};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a training job needs, as the engine sees it.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub job_dir: PathBuf,
    /// The built model (its weights are the initial ones unless resuming).
    pub model: Model,
    pub compile: CompileSpec,
    /// The data column feeding each model input, in input order.
    pub input_columns: Vec<String>,
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
    /// A round still running after this long is resubmitted.
    pub round_timeout: std::time::Duration,
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
    Round { step: u64, max_steps: u64, loss: f64, accuracy: f64, samples_per_s: f64 },
    Eval(EvalSummary),
}

/// The outcome of a job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: u64,
    pub rounds: u64,
    pub train_rows: u64,
    /// Final weights (with optimizer state).
    pub weights: PathBuf,
    pub eval: Option<EvalSummary>,
    pub best_eval_accuracy: Option<f64>,
    pub test: Option<EvalSummary>,
    pub samples_per_s: f64,
    pub mean_round_ms: f64,
    pub mean_compute_ms: f64,
}

#[derive(Serialize, Deserialize)]
struct LastCheckpoint {
    step: u64,
    file: PathBuf,
    best_eval_accuracy: Option<f64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Io { path: path.display().to_string(), source: e }
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs a query returning one string (the functions' JSON answers).
async fn query_string(ctx: &SessionContext, sql: &str) -> Result<String> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let col = batches.iter().find(|b| b.num_rows() > 0).map(|b| b.column(0).clone());
    let s = col
        .as_ref()
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .filter(|a| !a.is_null(0))
        .map(|a| a.value(0).to_string());
    s.ok_or_else(|| EngineError::Training(format!("no result from: {sql}")))
}

/// Runs a round's query; resubmits it when it has not finished within
/// `timeout` or the cluster failed it (at most [`ROUND_ATTEMPTS`] times).
/// Rounds are idempotent: a
/// rerun recomputes the same partial files under the same names. Ballista
/// re-runs the tasks of a lost executor by itself; this is the backstop for
/// the rare job that never completes after an executor loss (seen once in
/// this project's fault tests, as in upstream apache/datafusion-ballista#1986).
async fn run_round(
    ctx: &SessionContext,
    sql: &str,
    timeout: std::time::Duration,
    step: u64,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<String> {
    let mut last = String::new();
    for attempt in 1..=ROUND_ATTEMPTS {
        last = match tokio::time::timeout(timeout, query_string(ctx, sql)).await {
            Ok(Ok(result)) => return Ok(result),
            // Errors of the round itself (bad rows, a model error) fail at once;
            // what the cluster reports (lost executors, failed stages) is retried.
            Ok(Err(e @ (EngineError::Training(_) | EngineError::Data(_) | EngineError::Ops(_)))) => return Err(e),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => format!("did not finish within {}s", timeout.as_secs()),
        };
        on_event(&Event::Log(format!(
            "round at step {step} {last} (attempt {attempt}/{ROUND_ATTEMPTS}); resubmitting"
        )));
    }
    Err(EngineError::Training(format!("round at step {step} {last}, {ROUND_ATTEMPTS} times")))
}

/// How often a round is submitted before the job fails.
const ROUND_ATTEMPTS: usize = 3;

struct Driver<'a> {
    cfg: TrainConfig,
    ctx: &'a SessionContext,
    metrics: std::fs::File,
    model_ref: ModelRef,
    best: Option<f64>,
}

impl Driver<'_> {
    fn dir(&self, sub: &str) -> PathBuf {
        self.cfg.job_dir.join(sub)
    }

    fn log_metrics(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{line}").map_err(io(&self.cfg.job_dir))?;
        self.metrics.flush().map_err(io(&self.cfg.job_dir))
    }

    /// Writes the weights version of `step` that the next round reads.
    fn publish(&mut self, step: u64) -> Result<()> {
        let path = self.dir("weights").join(format!("step-{step}.safetensors"));
        match self.cfg.mode {
            // Workers only need the optimizer state when they step themselves.
            Mode::Average => self.cfg.model.write_weights(&path, false)?,
            Mode::Sync => kallista_ops::model::write_safetensors(
                &path,
                &self.cfg.model.named_weights(),
                HashMap::from([("kallista.step".to_string(), step.to_string())]),
                false,
            )?,
        }
        self.adopt(path);
        Ok(())
    }

    /// Makes `path` the weights version the next round reads, and removes the previous one.
    fn adopt(&mut self, path: PathBuf) {
        let old = std::mem::replace(&mut self.model_ref.weights, path);
        if old.starts_with(self.dir("weights")) && old != self.model_ref.weights {
            let _ = std::fs::remove_file(old);
        }
    }

    /// Writes the job's weights and optimizer state to `file`, durably: in
    /// `sync` the driver's model holds them; in `average` the published
    /// version does.
    fn save_state(&self, file: &Path) -> Result<()> {
        match self.cfg.mode {
            Mode::Sync => Ok(self.cfg.model.save_weights(file)?),
            Mode::Average => Ok(kallista_ops::model::replace_file(file, true, |tmp| {
                std::fs::copy(&self.model_ref.weights, tmp).map(|_| ())
            })?),
        }
    }

    fn checkpoint(&mut self, step: u64) -> Result<()> {
        let dir = self.dir("checkpoints");
        let file = dir.join(format!("step-{step}.safetensors"));
        self.save_state(&file)?;
        let last = LastCheckpoint { step, file: file.clone(), best_eval_accuracy: self.best };
        let json = serde_json::to_vec_pretty(&last).map_err(|e| EngineError::Invalid(e.to_string()))?;
        kallista_ops::model::write_atomic(&dir.join("last.json"), &json)?;
        // Keep the two newest step checkpoints.
        let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        steps.sort();
        for (_, p) in steps.iter().rev().skip(2) {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    async fn evaluate(&mut self, table: &str, staged: &Staged, split: &str, step: u64) -> Result<EvalSummary> {
        let spec = EvalSpec { model: self.model_ref.clone() };
        let spec = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let filter = match (split, self.cfg.eval_steps) {
            ("eval", Some(n)) => {
                let blocks = (n * self.cfg.batch_size as u64).div_ceil(staged.micro_batch as u64);
                format!("WHERE block < {blocks}")
            }
            _ => String::new(),
        };
        let columns = super::args::data_columns(&self.model_ref.input_columns).join(", ");
        let sql = format!("SELECT kallista_evaluate({columns}, family, {}) FROM {table} {filter}", sql_str(&spec));
        let json = query_string(self.ctx, &sql).await?;
        let families: BTreeMap<String, EvalCounts> =
            serde_json::from_str(&json).map_err(|e| EngineError::Training(format!("evaluation result: {e}")))?;
        let mut overall = EvalCounts::default();
        families.values().for_each(|c| overall.add(c));
        let summary = EvalSummary { split: split.into(), step, overall, families };
        let line = serde_json::json!({
            "kind": "eval", "split": split, "step": step,
            "loss": summary.overall.loss(), "accuracy": summary.overall.accuracy(),
            "families": summary.families.iter().map(|(k, c)| (k.clone(), c.accuracy())).collect::<BTreeMap<_, _>>(),
        });
        self.log_metrics(line)?;
        Ok(summary)
    }

    /// Applies a `sync` round's mean gradients to the driver's model.
    fn apply(&mut self, result: &RoundResult) -> Result<()> {
        let Some(file) = &result.file else {
            return Err(EngineError::Training("a round produced no gradients (no rows reached the workers)".into()));
        };
        let mut vectors: HashMap<String, Vec<f32>> = read_vectors::<f32>(file)?.into_iter().collect();
        let model = &mut self.cfg.model;
        let keys = model.weight_keys();
        let grads = WeightGrads {
            state_parts: usize::from(keys.iter().any(|k| vectors.contains_key(&format!("state/{k}")))),
            state: keys.iter().map(|k| vectors.remove(&format!("state/{k}"))).collect(),
            values: keys.iter().map(|k| vectors.remove(k)).collect(),
        };
        model.apply_gradients(grads)?;
        model.set_steps_run(model.steps_run() + 1);
        Ok(())
    }
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

/// Runs the job on the cluster behind `ctx` (see [`crate::session::training_session`]).
pub async fn train(
    cfg: TrainConfig,
    ctx: &SessionContext,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> Result<TrainReport> {
    for sub in ["weights", "rounds", "checkpoints", "data"] {
        let p = cfg.job_dir.join(sub);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let config_path = cfg.job_dir.join("model.json");
    kallista_ops::model::write_atomic(&config_path, cfg.model.to_json().as_bytes())?;
    let bps = cfg.batch_size / cfg.micro_batch / cfg.shards;
    let columns = super::args::data_columns(&cfg.input_columns).join(", ");

    on_event(&Event::Log(format!("staging training data from {}", cfg.train.relation())));
    let data = cfg.job_dir.join("data");
    let layout = |dir: &str, full_blocks_only| super::layout::Layout {
        dir: data.join(dir),
        columns: super::args::staging_select(&cfg.input_columns),
        plain_columns: super::args::packed_columns(&cfg.input_columns),
        micro_batch: cfg.micro_batch,
        shards: cfg.shards,
        seed: cfg.seed,
        full_blocks_only,
    };
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
            let dir = format!("{}/", s.dir.display());
            ctx.sql(&format!("CREATE EXTERNAL TABLE kallista_{name} STORED AS PARQUET LOCATION {}", sql_str(&dir)))
                .await?
                .collect()
                .await?;
            on_event(&Event::Log(format!("{name}: {} rows in {} blocks over {} shards", s.rows, s.blocks(), s.shards)));
        }
    }
    let schedule = train.schedule(bps);
    let per_epoch = schedule.steps_per_epoch();
    if per_epoch == 0 {
        return Err(EngineError::Invalid(format!(
            "training data: {} rows make no step of batch {} (need {} per shard)",
            train.rows,
            cfg.batch_size,
            cfg.batch_size / cfg.shards
        )));
    }
    let max_steps = cfg.max_steps.unwrap_or_else(|| cfg.epochs.unwrap_or(1) * per_epoch);

    let mut model = cfg.model.clone();
    super::model_cache::compile(&mut model, &cfg.compile)?;
    let metrics_path = cfg.job_dir.join("metrics.jsonl");
    let mut step = 0;
    let mut best = None;
    let last_path = cfg.job_dir.join("checkpoints/last.json");
    if cfg.resume {
        let text = std::fs::read_to_string(&last_path).map_err(io(&last_path))?;
        let last: LastCheckpoint = serde_json::from_str(&text)
            .map_err(|e| EngineError::Corrupt { path: last_path.display().to_string(), detail: e.to_string() })?;
        model.load_weights(&last.file)?;
        model.set_steps_run(last.step);
        step = last.step;
        best = last.best_eval_accuracy;
        on_event(&Event::Log(format!("resumed from {} (step {step})", last.file.display())));
    } else {
        let _ = std::fs::remove_file(&last_path);
    }
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(cfg.resume)
        .write(true)
        .truncate(!cfg.resume)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;
    let model_ref = ModelRef {
        config: config_path,
        weights: PathBuf::new(),
        compile: cfg.compile.clone(),
        input_columns: cfg.input_columns.clone(),
    };
    let mut d = Driver { cfg: TrainConfig { model, ..cfg }, ctx, metrics, model_ref, best };
    d.publish(step)?;

    let mut report = TrainReport { train_rows: train.rows, ..Default::default() };
    let (mut round_ms, mut compute_ms, mut samples) = (0.0, 0.0, 0u64);
    let started = Instant::now();
    let mut last_eval = None;
    while step < max_steps {
        let k = match d.cfg.mode {
            Mode::Sync => 1,
            Mode::Average => round_steps(
                step,
                d.cfg.sync_every_steps,
                max_steps,
                d.cfg.checkpoint_every_steps,
                d.cfg.eval_every_steps,
            ),
        };
        let steps: Vec<Vec<u64>> = (step..step + k).map(|s| schedule.blocks_of_step(s)).collect();
        let mut blocks: Vec<u64> = steps.concat();
        blocks.sort_unstable();
        let spec = RoundSpec {
            model: d.model_ref.clone(),
            mode: d.cfg.mode,
            round: step,
            first_step: step,
            steps,
            seed: d.cfg.seed,
            workers: d.cfg.workers,
            out_dir: d.dir("rounds"),
            next_weights: d.dir("weights").join(format!("step-{}.safetensors", step + k)),
        };
        let spec_json = serde_json::to_string(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let list = blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT kallista_train({columns}, block, {}) FROM kallista_train WHERE block IN ({list})",
            sql_str(&spec_json)
        );
        let t0 = Instant::now();
        let json = run_round(ctx, &sql, d.cfg.round_timeout, step, on_event).await?;
        let query_ms = t0.elapsed().as_secs_f64() * 1e3;
        let result: RoundResult =
            serde_json::from_str(&json).map_err(|e| EngineError::Training(format!("round result: {e}")))?;
        step += k;
        match d.cfg.mode {
            Mode::Sync => {
                d.apply(&result)?;
                d.publish(step)?;
            }
            Mode::Average => match &result.file {
                Some(published) => d.adopt(published.clone()),
                None => {
                    return Err(EngineError::Training(
                        "a round produced no weights (no rows reached the workers)".into(),
                    ))
                }
            },
        }
        for f in std::fs::read_dir(d.dir("rounds")).map_err(io(&d.dir("rounds")))?.flatten() {
            let _ = std::fs::remove_file(f.path());
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        report.rounds += 1;
        round_ms += ms;
        compute_ms += result.slowest.compute_ms;
        samples += result.rows;
        let loss = result.loss_sum / result.rows.max(1) as f64;
        let accuracy = result.correct as f64 / result.rows.max(1) as f64;
        let rate = samples as f64 / started.elapsed().as_secs_f64();
        d.log_metrics(serde_json::json!({
            "kind": "train", "step": step, "epoch": step as f64 / per_epoch as f64,
            "loss": loss, "accuracy": accuracy, "rows": result.rows, "samples_per_s": rate,
            "round_ms": ms, "query_ms": query_ms, "compute_ms": result.slowest.compute_ms,
            "scan_ms": result.slowest.scan_ms, "load_ms": result.slowest.load_ms,
            "write_ms": result.slowest.write_ms, "reduce_ms": result.reduce_ms,
            "partitions": result.partitions, "steps_in_round": k,
        }))?;
        on_event(&Event::Round { step, max_steps, loss, accuracy, samples_per_s: rate });
        let eval_due = d.cfg.eval_every_steps.is_some_and(|n| step.is_multiple_of(n)) || step == max_steps;
        if let (true, Some(e)) = (eval_due, &eval) {
            let summary = d.evaluate("kallista_eval", e, "eval", step).await?;
            if d.best.is_none_or(|b| summary.overall.accuracy() > b) {
                d.best = Some(summary.overall.accuracy());
                let best_file = d.dir("checkpoints").join("best.safetensors");
                d.save_state(&best_file)?;
                let json = serde_json::to_vec_pretty(&summary).map_err(|e| EngineError::Invalid(e.to_string()))?;
                kallista_ops::model::write_atomic(&d.dir("checkpoints").join("best.json"), &json)?;
            }
            on_event(&Event::Eval(summary.clone()));
            last_eval = Some(summary);
        }
        // After the evaluation, so that the checkpoint records the best accuracy so far.
        if step.is_multiple_of(d.cfg.checkpoint_every_steps) || step == max_steps {
            d.checkpoint(step)?;
        }
    }
    report.steps = step;
    report.weights = d.model_ref.weights.clone();
    report.eval = last_eval;
    report.best_eval_accuracy = d.best;
    if let Some(t) = &test {
        let summary = d.evaluate("kallista_test", t, "test", step).await?;
        on_event(&Event::Eval(summary.clone()));
        report.test = Some(summary);
    }
    if report.rounds > 0 {
        report.samples_per_s = samples as f64 / started.elapsed().as_secs_f64();
        report.mean_round_ms = round_ms / report.rounds as f64;
        report.mean_compute_ms = compute_ms / report.rounds as f64;
    }
    let json = serde_json::to_vec_pretty(&report).map_err(|e| EngineError::Invalid(e.to_string()))?;
    kallista_ops::model::write_atomic(&d.dir("results.json"), &json)?;
    Ok(report)
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
