//! `kallista train JOB.yaml` (embedded cluster), `kallista submit JOB.yaml
//! --scheduler df://HOST:PORT` (a running cluster) and `kallista run DIR`
//! (make the data when absent, then train and test): a job file turned into
//! engine calls.

use crate::data_script::DataScript;
use crate::error::JobError;
use crate::features::{train_from_features, write_whole_model, FrozenFeatures};
use crate::labels::write_labels;
use crate::plot::plot_training_curve;
use crate::progress::Progress;
use crate::spec::{self, data_check::check_split, load, JobSpec, Overrides};
use kallista_data::binding::Binding;
use kallista_engine::session::{training_session, Cluster};
use kallista_engine::store::blocking;
use kallista_engine::train::driver::{train, Event, TrainConfig, TrainReport};
use kallista_engine::train::layout::DataSource;
use kallista_engine::train::round::CompileSpec;
use kallista_ops::backend::{default_backend, set_default_device, Device};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A job file checked and turned into the engine's config: every error here
/// comes before any work starts. The data script comes along when a split
/// reads its views.
pub fn prepare_job(
    file: &Path,
    overrides: &Overrides,
    resume: bool,
) -> Result<(TrainConfig, JobSpec, Option<DataScript>), JobError> {
    let mut job = load(file)?;
    job.apply(overrides);
    job.validate(file)?;
    let script = crate::data_script::resolve(file, &job)?;
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
        let data = match &script {
            Some(script) => script.name_in(data),
            None => data,
        };
        if let DataSource::Parquet(at) = &data {
            check_split(file, key, at, &binding, &model)?;
        }
        sources.push(Some(data));
    }
    let trained_in = match job.training.cache_frozen {
        true => job_dir.from_features(),
        false => job_dir.clone(),
    };
    if resume && !blocking::exists(&trained_in.last())? {
        return Err(JobError::Invalid(format!(
            "--resume: no checkpoint in {} (checkpoints/last.json)",
            trained_in.root()
        )));
    }
    if job.training.cache_frozen {
        FrozenFeatures::check(&model, &binding).map_err(|why| spec::spec_error(file, "training.cache_frozen", why))?;
    }
    let reads_views = sources.iter().flatten().any(|s| matches!(s, DataSource::Sql(_)));
    let script = script.filter(|_| reads_views);
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
        advertised_host: job.scaling.advertised_host.clone(),
        shared_memory: job.scaling.shared_memory,
        asynchronous: job.scaling.async_settings(),
    };
    Ok((config, job, script))
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

/// Runs a prepared job on `cluster`, reporting progress and writing the
/// training curve; with `cache_frozen`, from the frozen sub-model's features.
pub fn run_training(
    config: TrainConfig,
    job: &JobSpec,
    script: Option<&DataScript>,
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
        if let Some(script) = script {
            script.run(&ctx, &mut log).await?;
        }
        if let Some(names) = &job.data.label_names {
            write_labels(&ctx, &config, names).await?;
        }
        let (config, plan) = match job.training.cache_frozen {
            true => {
                if !config.resume {
                    config.job_dir.clear_earlier_run()?;
                }
                let (tail, plan) = train_from_features(config, &ctx, &mut log).await?;
                (tail, Some(plan))
            }
            false => (config, None),
        };
        let curve_dir = config.job_dir.clone();
        let started = Instant::now();
        let mut on_event = |e: &Event| match e {
            Event::Log(s) => log(s),
            Event::Round { step, max_steps, loss, accuracy, samples_per_s, staleness } => {
                let b = bar.get_or_insert_with(|| Progress::started_at("training", *max_steps as usize, started));
                let stale = staleness
                    .map_or(String::new(), |(mean, dropped)| format!(", staleness {mean:.1}, {dropped} dropped"));
                b.update_with(
                    *step as usize,
                    &format!(
                        "step {step}/{max_steps} loss {loss:.4} acc {accuracy:.3} {samples_per_s:.0} samples/s{stale}"
                    ),
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
    // A picture is for people: a host without fonts still gets its results.
    if let Err(e) = plot_training_curve(&job_dir) {
        log(&format!("warning: no training curve: {e}"));
    }
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
    let (config, job, script) = prepare_job(file, overrides, resume)?;
    use_job_device(file, &job, cluster, &mut log)?;
    write_binding(&config)?;
    log(&format!("job dir {}", config.job_dir.root()));
    run_training(config, &job, script.as_ref(), cluster, log)
}

/// Puts this process's workers on the job's `scaling.device`: the embedded
/// cluster's run here. A cluster's executors chose theirs when they started,
/// so a job that asks a cluster for a GPU is refused rather than run on
/// whatever the executors have.
fn use_job_device(file: &Path, job: &JobSpec, cluster: &Cluster, log: &mut impl FnMut(&str)) -> Result<(), JobError> {
    let device = job.scaling.device().map_err(|e| spec::spec_error(file, "scaling.device", e))?;
    if device == Device::Cpu {
        return Ok(());
    }
    if let Cluster::Remote(scheduler) = cluster {
        return Err(spec::spec_error(
            file,
            "scaling.device",
            format!(
                "{device}: the executors of {scheduler} run on the device each was started with \
                 (`kallista executor --device {device}`): leave scaling.device unset for a cluster"
            ),
        ));
    }
    set_default_device(device).map_err(|e| spec::spec_error(file, "scaling.device", e))?;
    log(&format!("workers run on {}", default_backend().device_name()));
    Ok(())
}

/// `kallista features JOB.yaml`: the job's frozen-feature caches, built
/// when absent; returns each split's cache.
pub fn features_cmd(
    file: &Path,
    overrides: &Overrides,
    cluster: &Cluster,
    mut log: impl FnMut(&str) + Send,
) -> Result<Vec<(String, String)>, JobError> {
    let (config, _, script) = prepare_job(file, overrides, false)?;
    let workers = config.workers;
    let tail = runtime()?.block_on(async {
        let ctx = training_session(cluster, workers).await?;
        if let Some(script) = &script {
            script.run(&ctx, &mut log).await?;
        }
        Ok::<_, JobError>(train_from_features(config, &ctx, &mut log).await?.0)
    })?;
    let named = [("train", Some(tail.train)), ("eval", tail.eval), ("test", tail.test)];
    Ok(named.into_iter().filter_map(|(n, s)| s.map(|s| (n.to_string(), s.relation()))).collect())
}

/// `kallista run DIR`: `DIR/job.yaml`, with its `dataset` made (and prepared, where it says how) when absent.
pub fn run_cmd(dir: &Path, overrides: &Overrides, mut log: impl FnMut(&str) + Send) -> Result<TrainReport, JobError> {
    let file = if dir.is_dir() { dir.join("job.yaml") } else { dir.to_path_buf() };
    let mut job = load(&file)?;
    job.apply(overrides);
    make_dataset(&file, &job, &mut log)?;
    let (config, job, script) = prepare_job(&file, overrides, false)?;
    use_job_device(&file, &job, &Cluster::Embedded, &mut log)?;
    write_binding(&config)?;
    log(&format!("job dir {}", config.job_dir.root()));
    run_training(config, &job, script.as_ref(), &Cluster::Embedded, log)
}

/// The job's `dataset`: the clips made when absent; with `prepare` and
/// `prepared`, the script run when `prepared` has no `train/`.
fn make_dataset(file: &Path, job: &JobSpec, log: &mut impl FnMut(&str)) -> Result<(), JobError> {
    let dataset =
        job.dataset.clone().ok_or_else(|| spec::spec_error(file, "dataset", "missing: `kallista run` needs it"))?;
    let local = |key: &str, value: &str| -> Result<PathBuf, JobError> {
        let at =
            kallista_engine::store::Location::parse(&job.expand(value)).map_err(|e| spec::spec_error(file, key, e))?;
        at.local_path().ok_or_else(|| {
            spec::spec_error(
                file,
                key,
                format!("{at}: `kallista run` makes the data on this machine: use a local path"),
            )
        })
    };
    let clips = local("dataset.dir", &dataset.dir)?;
    let prepare = match (&dataset.prepare, &dataset.prepared) {
        (Some(script), Some(prepared)) => Some((file.parent().unwrap_or(Path::new(".")).join(script), prepared)),
        (None, None) => None,
        (Some(_), None) => return Err(spec::spec_error(file, "dataset.prepared", "missing: where `prepare` writes")),
        (None, Some(_)) => {
            return Err(spec::spec_error(file, "dataset.prepare", "missing: the script that writes `prepared`"))
        }
    };
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
    let Some((script, prepared)) = prepare else { return Ok(()) };
    let prepared = local("dataset.prepared", prepared)?;
    if prepared.join("train").exists() {
        return Ok(());
    }
    log(&format!("preparing with {}", script.display()));
    let vars = [("data".to_string(), clips.display().to_string()), ("out".to_string(), prepared.display().to_string())];
    crate::sql_cmd::run_sql(
        &crate::sql_cmd::SqlSource::Files(vec![script.clone()]),
        &Cluster::Embedded,
        &vars.into_iter().collect(),
        std::time::Duration::from_secs(3600),
        |_| {},
    )?;
    if !prepared.join("train").exists() {
        return Err(spec::spec_error(
            file,
            "dataset.prepare",
            format!(
                "{} wrote no {}/train/ (a script that only defines views belongs in data.script)",
                script.display(),
                prepared.display()
            ),
        ));
    }
    Ok(())
}
