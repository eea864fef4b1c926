//! `kallista train JOB.yaml` (embedded cluster), `kallista submit JOB.yaml
//! --scheduler df://HOST:PORT` (a running cluster) and `kallista run DIR`
//! (make and prepare the data when absent, then train and test): a job file
//! turned into engine calls.

use crate::error::JobError;
use crate::features::FrozenFeatures;
use crate::plot::plot_training_curve;
use crate::progress::Progress;
use crate::spec::{self, data_check::check_split, load, JobSpec, Overrides};
use kallista_data::binding::Binding;
use kallista_engine::datafusion::prelude::SessionContext;
use kallista_engine::session::{training_session, Cluster};
use kallista_engine::store::blocking;
use kallista_engine::train::args::sql_ident;
use kallista_engine::train::driver::{train, Event, TrainConfig, TrainReport};
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::DataSource;
use kallista_engine::train::round::CompileSpec;
use kallista_engine::EngineError;
use kallista_ops::model::Model;
use std::path::{Path, PathBuf};

/// A job file checked and turned into the engine's config: every error here
/// comes before any work starts.
pub fn prepare_job(file: &Path, overrides: &Overrides, resume: bool) -> Result<(TrainConfig, JobSpec), JobError> {
    let mut job = load(file)?;
    job.apply(overrides);
    job.validate(file)?;
    let job_dir = job.job_dir(file)?;
    let optimizer = job.optimizer(file)?;
    let model = job.model.build(file, job.training.seed)?;
    let binding = Binding {
        inputs: job.model.input_columns(file)?,
        label: Some(job.data.label.clone()),
        group_by: job.data.group_by.clone(),
        key: job.data.key.clone(),
    };
    let splits = [
        ("data.train", Some(&job.data.train)),
        ("data.eval", job.data.eval.as_ref()),
        ("data.test", job.data.test.as_ref()),
    ];
    let mut sources = vec![];
    for (key, source) in splits {
        let Some(source) = source else {
            sources.push(None);
            continue;
        };
        let data = job.source(file, key, source)?;
        if let DataSource::Parquet(at) = &data {
            check_split(file, key, at, &binding, &model)?;
        }
        sources.push(Some(data));
    }
    let trained_in = match job.training.cache_frozen {
        true => from_features_dir(&job_dir),
        false => job_dir.clone(),
    };
    if resume && !blocking::exists(&trained_in.last())? {
        return Err(JobError::Invalid(format!(
            "--resume: no checkpoint in {} (checkpoints/last.json)",
            trained_in.root()
        )));
    }
    let mut sources = sources.into_iter();
    let train = sources.next().flatten().ok_or_else(|| JobError::Invalid("data.train: missing".into()))?;
    let (eval, test) = (sources.next().flatten(), sources.next().flatten());
    let t = &job.training;
    let config = TrainConfig {
        job_dir,
        model,
        compile: CompileSpec { optimizer, loss: t.loss.clone(), metrics: t.metrics.clone() },
        binding,
        train,
        eval,
        test,
        batch_size: t.batch_size,
        micro_batch: job.micro_batch(),
        shards: job.scaling.shards,
        workers: job.scaling.workers(),
        mode: job.scaling.mode,
        sync_every_steps: job.scaling.sync_every_steps,
        epochs: t.epochs,
        max_steps: t.max_steps,
        eval_every_steps: t.eval_every_steps,
        eval_steps: t.eval_steps,
        checkpoint_every_steps: t.checkpoint_every_steps,
        seed: t.seed,
        resume,
        round_timeout: std::time::Duration::from_secs(job.scaling.round_timeout_seconds),
        driver_host: job.scaling.driver_host.clone(),
        rank_start_timeout: std::time::Duration::from_secs(job.scaling.rank_start_timeout_seconds),
    };
    Ok((config, job))
}

fn runtime() -> Result<tokio::runtime::Runtime, JobError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JobError::Invalid(format!("tokio runtime: {e}")))
}

/// Writes the job dir's `binding.json`: the columns `kallista evaluate` and
/// `kallista predict` read for this model.
fn write_binding(config: &TrainConfig) -> Result<(), JobError> {
    let json = serde_json::to_vec_pretty(&config.binding).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&config.job_dir.root().join(Binding::FILE), json)?;
    Ok(())
}

/// Writes the job dir's `labels.json`: each class id's name, from the train
/// split's `names` column (`""` for ids the split never names).
async fn write_labels(ctx: &SessionContext, config: &TrainConfig, names: &str) -> Result<(), JobError> {
    use kallista_engine::datafusion::arrow::array::{Array, AsArray};
    use kallista_engine::datafusion::arrow::compute::cast;
    use kallista_engine::datafusion::arrow::datatypes::{DataType, Int64Type};
    let label = config.binding.label.as_deref().unwrap_or_default();
    let sql = format!(
        "SELECT CAST({l} AS BIGINT), CAST(MIN({n}) AS VARCHAR) FROM {r} GROUP BY 1 ORDER BY 1",
        l = sql_ident(label),
        n = sql_ident(names),
        r = config.train.relation()
    );
    let named = |e| JobError::Invalid(format!("data.label_names ({names}): {}", EngineError::from(e)));
    let batches = ctx.sql(&sql).await.map_err(named)?.collect().await.map_err(named)?;
    let classes = config.model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(0);
    let mut labels = vec![String::new(); classes];
    for b in &batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let text = cast(b.column(1), &DataType::Utf8).map_err(|e| JobError::Invalid(e.to_string()))?;
        let text = text.as_string::<i32>();
        for i in 0..b.num_rows() {
            let id = ids.value(i);
            if id < 0 || id as usize >= classes {
                return Err(JobError::Invalid(format!(
                    "data.label: {label} = {id} in the train split, outside the model's {classes} classes"
                )));
            }
            if !text.is_null(i) {
                labels[id as usize] = text.value(i).to_string();
            }
        }
    }
    let json = serde_json::to_vec_pretty(&labels).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&config.job_dir.root().join("labels.json"), json)?;
    Ok(())
}

/// Where a job with `training.cache_frozen` trains the rest of its model
/// (a job dir of its own: its model, checkpoints and staged features).
pub fn from_features_dir(job_dir: &JobDir) -> JobDir {
    JobDir::new(job_dir.root().join("from_features"))
}

/// The features of every split, computed once (see [`crate::features`]),
/// and the config that trains the rest of the model from them.
async fn train_from_features(
    config: TrainConfig,
    ctx: &SessionContext,
    log: &mut (impl FnMut(&str) + Send),
) -> Result<(TrainConfig, FrozenFeatures), JobError> {
    let plan = FrozenFeatures::plan(&config.model, &config.binding, &config.job_dir)?;
    let mut caches = vec![];
    for (name, source) in
        [("train", Some(&config.train)), ("eval", config.eval.as_ref()), ("test", config.test.as_ref())]
    {
        let Some(source) = source else {
            caches.push(None);
            continue;
        };
        let started = std::time::Instant::now();
        let (cache, built) = plan.features_of(ctx, name, source).await?;
        let how = match built {
            true => format!("computed in {:.1} s", started.elapsed().as_secs_f64()),
            false => "cached".to_string(),
        };
        log(&format!("{name} features of '{}' ({how}): {}", plan.split.cut, cache.relation()));
        caches.push(Some(cache));
    }
    let mut caches = caches.into_iter();
    let (train, eval, test) =
        (caches.next().flatten().expect("train"), caches.next().flatten(), caches.next().flatten());
    let tail = TrainConfig {
        job_dir: from_features_dir(&config.job_dir),
        model: plan.split.tail.clone(),
        binding: plan.tail_binding(&config.binding, &config.model),
        train,
        eval,
        test,
        ..config
    };
    write_binding(&tail)?;
    Ok((tail, plan))
}

/// After training from features: the whole model (frozen head and trained
/// rest) as the job dir's `model.json`, `weights/final.safetensors` and
/// `results.json`, and the metrics, so that evaluation and prediction read
/// the raw columns as for any job.
fn write_whole_model(
    whole: &Model,
    plan: &FrozenFeatures,
    job_dir: &JobDir,
    mut report: TrainReport,
) -> Result<TrainReport, JobError> {
    let trained = from_features_dir(job_dir);
    let weights = report.weights.clone().ok_or_else(|| JobError::Invalid("training wrote no final weights".into()))?;
    let mut tail = plan.split.tail.clone();
    tail.load_weights_bytes(&blocking::read(&weights)?, weights.as_str())?;
    let joined = whole.with_weights_of(&[&plan.split.head, &tail])?;
    let at = job_dir.weights_dir().join("final.safetensors");
    blocking::write(&at, joined.weights_bytes()?)?;
    blocking::write(&job_dir.model_json(), joined.to_json())?;
    blocking::write(&job_dir.metrics(), blocking::read(&trained.metrics())?)?;
    report.weights = Some(at);
    let json = serde_json::to_vec_pretty(&report).map_err(|e| JobError::Invalid(e.to_string()))?;
    blocking::write(&job_dir.results(), json)?;
    Ok(report)
}

/// Runs a prepared job on `cluster`, reporting progress and writing the
/// training curve; with `cache_frozen`, from the frozen sub-model's features.
pub fn run_training(
    config: TrainConfig,
    job: &JobSpec,
    cluster: &Cluster,
    mut log: impl FnMut(&str) + Send,
) -> Result<TrainReport, JobError> {
    let job_dir = config.job_dir.clone();
    let whole = config.model.clone();
    let workers = config.workers;
    let mut bar: Option<Progress> = None;
    let rt = runtime()?;
    let (report, plan) = rt.block_on(async {
        let ctx = training_session(cluster, workers).await?;
        if let Some(names) = &job.data.label_names {
            write_labels(&ctx, &config, names).await?;
        }
        let (config, plan) = match job.training.cache_frozen {
            true => {
                let (tail, plan) = train_from_features(config, &ctx, &mut log).await?;
                (tail, Some(plan))
            }
            false => (config, None),
        };
        let curve_dir = config.job_dir.clone();
        let mut on_event = |e: &Event| match e {
            Event::Log(s) => log(s),
            Event::Round { step, max_steps, loss, accuracy, samples_per_s } => {
                let b = bar.get_or_insert_with(|| Progress::new("training", *max_steps as usize));
                b.update_with(
                    *step as usize,
                    &format!("step {step}/{max_steps} loss {loss:.4} acc {accuracy:.3} {samples_per_s:.0} samples/s"),
                );
            }
            Event::Eval(s) => {
                let families: Vec<String> =
                    s.families.iter().map(|(k, c)| format!("{k} {:.3}", c.accuracy())).collect();
                log(&format!(
                    "{} at step {}: loss {:.4} accuracy {:.4} ({} rows; {})",
                    s.split,
                    s.step,
                    s.overall.loss(),
                    s.overall.accuracy(),
                    s.overall.rows,
                    families.join(", ")
                ));
                let _ = plot_training_curve(&curve_dir);
            }
        };
        let report = train(config, &ctx, &mut on_event).await?;
        Ok::<_, JobError>((report, plan))
    })?;
    let report = match plan {
        Some(plan) => write_whole_model(&whole, &plan, &job_dir, report)?,
        None => report,
    };
    plot_training_curve(&job_dir)?;
    Ok(report)
}

/// `kallista train` / `kallista submit`.
pub fn train_cmd(
    file: &Path,
    overrides: &Overrides,
    resume: bool,
    cluster: &Cluster,
    mut log: impl FnMut(&str) + Send,
) -> Result<TrainReport, JobError> {
    let (config, job) = prepare_job(file, overrides, resume)?;
    write_binding(&config)?;
    log(&format!("job dir {}", config.job_dir.root()));
    run_training(config, &job, cluster, log)
}

/// `kallista features JOB.yaml`: the job's frozen-feature caches, built
/// when absent; returns each split's cache.
pub fn features_cmd(
    file: &Path,
    overrides: &Overrides,
    cluster: &Cluster,
    mut log: impl FnMut(&str) + Send,
) -> Result<Vec<(String, String)>, JobError> {
    let (config, _) = prepare_job(file, overrides, false)?;
    let workers = config.workers;
    let tail = runtime()?.block_on(async {
        let ctx = training_session(cluster, workers).await?;
        Ok::<_, JobError>(train_from_features(config, &ctx, &mut log).await?.0)
    })?;
    let named = [("train", Some(tail.train)), ("eval", tail.eval), ("test", tail.test)];
    Ok(named.into_iter().filter_map(|(n, s)| s.map(|s| (n.to_string(), s.relation()))).collect())
}

/// `kallista run DIR`: `DIR/job.yaml`, with its `dataset` made and prepared when absent.
pub fn run_cmd(dir: &Path, overrides: &Overrides, mut log: impl FnMut(&str) + Send) -> Result<TrainReport, JobError> {
    let file = if dir.is_dir() { dir.join("job.yaml") } else { dir.to_path_buf() };
    let mut job = load(&file)?;
    job.apply(overrides);
    let dataset =
        job.dataset.clone().ok_or_else(|| spec::spec_error(&file, "dataset", "missing: `kallista run` needs it"))?;
    let local = |key: &str, value: &str| -> Result<PathBuf, JobError> {
        let at =
            kallista_engine::store::Location::parse(&job.expand(value)).map_err(|e| spec::spec_error(&file, key, e))?;
        at.local_path().ok_or_else(|| {
            spec::spec_error(
                &file,
                key,
                format!("{at}: `kallista run` makes the data on this machine: use a local path"),
            )
        })
    };
    let clips = local("dataset.dir", &dataset.dir)?;
    if !clips.join("clips").exists() {
        log(&format!("making {} video-QA clips in {}", dataset.videos, clips.display()));
        let opts = kallista_data::video_qa::MakeOptions::new(
            clips.clone(),
            dataset.videos,
            dataset.frames,
            dataset.size,
            dataset.seed,
        );
        let (_, summary) = crate::data_cmd::make_video_qa_cmd(&opts)?;
        log(summary.trim_end());
    }
    let prepared = local("dataset.prepared", &dataset.prepared)?;
    if !prepared.join("train").exists() {
        let script = file.parent().unwrap_or(Path::new(".")).join(&dataset.prepare);
        log(&format!("preparing with {}", script.display()));
        let vars =
            [("data".to_string(), clips.display().to_string()), ("out".to_string(), prepared.display().to_string())]
                .into_iter()
                .collect();
        crate::sql_cmd::run_sql(
            &crate::sql_cmd::SqlSource::File(script),
            &Cluster::Embedded,
            &vars,
            std::time::Duration::from_secs(3600),
            |_| {},
        )?;
    }
    let (config, job) = prepare_job(&file, overrides, false)?;
    write_binding(&config)?;
    log(&format!("job dir {}", config.job_dir.root()));
    run_training(config, &job, &Cluster::Embedded, log)
}
