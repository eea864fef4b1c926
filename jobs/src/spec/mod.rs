//! The job spec: a YAML file with `model`, `data`, `training`, `scaling` and
//! `job_dir` (plus `dataset`, how `kallista run` makes the data). Every key is
//! checked before any work starts; errors name the key.
//!
//! ```yaml
//! job_dir: target/jobs/video_qa
//! model: { name: video_qa, inputs: [...], layers: [...], outputs: [fc_out] }
//! data: { train: ${job_dir}/dataset/prepared/train/, eval: ..., test: ... }  # or {sql: ...} over data.script's views
//! training: { optimizer: {name: adam, learning_rate: 0.001}, batch_size: 64, epochs: 10 }
//! scaling: { workers: 2, mode: sync }     # default: a worker per core, average every 200 steps
//! ```

mod application;
pub mod data_check;
pub mod model;
pub mod numbers;

use crate::error::JobError;
use kallista_engine::store::Location;
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::DataSource;
use kallista_engine::train::round::Mode;
use kallista_engine::train::servers::AsyncSettings;
use kallista_ops::optim::OptimizerConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The whole job file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Where the job writes everything (`--job-dir` overrides): a path
    /// (relative ones are made absolute where the job is submitted) or a
    /// `file://`, `s3://`, `gs://` or `az://` URL.
    #[serde(default)]
    pub job_dir: Option<String>,
    pub model: model::ModelSpec,
    pub data: DataSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// How `kallista run` makes and prepares the data when absent.
    #[serde(default)]
    pub dataset: Option<DatasetSpec>,
}

/// A split: a Parquet file or directory, or `{sql: "SELECT ..."}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum SourceSpec {
    Path(String),
    Sql { sql: String },
}

/// SQL that the training session runs before it stages the splits
/// ([`crate::data_script`]): `{sql: ...}` splits may read its views.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataScriptSpec {
    /// The script, relative to the job file. It may not `SET` options of the
    /// training session.
    pub file: String,
    /// Its `${name}` variables (over its `--! set` defaults; `${job_dir}` is
    /// always set); `${job_dir}` allowed in the values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Run first, in the training session: what the splits' queries read.
    #[serde(default)]
    pub script: Option<DataScriptSpec>,
    pub train: SourceSpec,
    #[serde(default)]
    pub eval: Option<SourceSpec>,
    #[serde(default)]
    pub test: Option<SourceSpec>,
    /// The target column: class ids.
    pub label: String,
    /// The column per-group metrics group by (evaluation, `results.json`).
    #[serde(default)]
    pub group_by: Option<String>,
    /// The columns that identify a row (staging shards and orders by them;
    /// default: every column that is not a list or binary).
    #[serde(default)]
    pub key: Vec<String>,
    /// The column holding each class's readable name (the answer word):
    /// training writes the job dir's `labels.json` from it, which predictions
    /// and the confusion matrix show.
    #[serde(default)]
    pub label_names: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub optimizer: serde_json::Value,
    #[serde(default = "default_loss")]
    pub loss: String,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<String>,
    pub batch_size: usize,
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default)]
    pub eval_every_steps: Option<u64>,
    #[serde(default)]
    pub eval_steps: Option<u64>,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every_steps: u64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Runs the frozen TimeDistributed sub-model at the model's front once per
    /// split and trains the rest from its stored features (`crate::features`).
    #[serde(default)]
    pub cache_frozen: bool,
}

fn default_loss() -> String {
    "sparse_categorical_crossentropy".into()
}
fn default_metrics() -> Vec<String> {
    vec!["accuracy".into()]
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_seed() -> u64 {
    1234
}

/// How a job spreads over the cluster. The defaults: a worker per core,
/// `average` rounds of 200 local steps. `sync` runs segments of up to
/// `sync_every_steps` optimizer steps per Ballista job, its ranks exchanging
/// exact gradient sums directly: bit-exact whatever the number of workers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    /// Default: one per core, at most `shards` ([`ScalingSpec::workers`]).
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub mode: Mode,
    /// Local steps per `average` round; optimizer steps per `sync` segment
    /// (one Ballista job). Rounds and segments also end at evaluations and checkpoints.
    #[serde(default = "default_sync_every_steps")]
    pub sync_every_steps: u64,
    /// Rows per block (default: batch_size / shards).
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    /// Files the training data is staged into; at least `workers`.
    #[serde(default = "four")]
    pub shards: usize,
    /// A round still running after this many seconds is resubmitted (up to 3 times).
    #[serde(default = "round_timeout")]
    pub round_timeout_seconds: u64,
    /// `sync`: a segment whose ranks have not all started after this many
    /// seconds is restarted with the ranks that did (a lost executor).
    #[serde(default = "rank_start_timeout")]
    pub rank_start_timeout_seconds: u64,
    /// `sync`: the address the driver's rendezvous listens on, which the
    /// executors must reach (loopback by default).
    #[serde(default = "driver_host")]
    pub driver_host: String,
    /// The address executors reach the driver's services at, when not
    /// `driver_host` (a driver behind NAT or in a container).
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// `sync`: ranks of one host pass their sums and weights through shared
    /// memory, ranks of different hosts through TCP (default true; false:
    /// TCP between all processes).
    #[serde(default = "yes")]
    pub shared_memory: bool,
    /// `async`: shards of the weights, each a parameter server in the
    /// driver's process (default 1).
    #[serde(default)]
    pub parameter_servers: Option<usize>,
    /// `async`: steps a worker takes on the same weights between pushes (default 1).
    #[serde(default)]
    pub push_every_steps: Option<u64>,
    /// `async`: a gradient computed on weights more than this many versions
    /// old is dropped (default: none is).
    #[serde(default)]
    pub max_staleness: Option<u64>,
    /// `async`: shards apply pushes without their lock (default false: Downpour).
    #[serde(default)]
    pub hogwild: Option<bool>,
    /// `async`: a gradient `τ > 1` versions old is applied with the learning
    /// rate divided by `τ` (default false: `compensate_momentum` does better).
    #[serde(default)]
    pub divide_lr_by_staleness: Option<bool>,
    /// `async`: the shards' Adam runs with `beta_1` lowered for the momentum
    /// that asynchrony itself adds, by the staleness of the pushes they
    /// applied (default true; see the engine's `ps::momentum`).
    #[serde(default)]
    pub compensate_momentum: Option<bool>,
    /// `async`: `kallista ps` processes (`host:port`) that host the shards,
    /// one each (default: the driver hosts them).
    #[serde(default)]
    pub parameter_server_hosts: Option<Vec<String>>,
    /// `async`: the cluster's token, as the `kallista ps` processes were given it.
    #[serde(default)]
    pub parameter_server_token_file: Option<String>,
    /// Where workers run forward and backward: `cpu` (default), `cuda` or
    /// `cuda:N`. It places the embedded cluster's workers (`kallista train`,
    /// `kallista run`); on a cluster each executor's `--device` does.
    #[serde(default)]
    pub device: Option<String>,
}

fn yes() -> bool {
    true
}

fn rank_start_timeout() -> u64 {
    30
}

fn driver_host() -> String {
    "127.0.0.1".into()
}

fn round_timeout() -> u64 {
    600
}

impl Default for ScalingSpec {
    fn default() -> Self {
        ScalingSpec {
            workers: None,
            mode: Mode::default(),
            sync_every_steps: default_sync_every_steps(),
            micro_batch_size: None,
            shards: 4,
            round_timeout_seconds: round_timeout(),
            rank_start_timeout_seconds: rank_start_timeout(),
            driver_host: driver_host(),
            advertised_host: None,
            shared_memory: true,
            parameter_servers: None,
            push_every_steps: None,
            max_staleness: None,
            hogwild: None,
            divide_lr_by_staleness: None,
            compensate_momentum: None,
            parameter_server_hosts: None,
            parameter_server_token_file: None,
            device: None,
        }
    }
}

impl ScalingSpec {
    /// The device the job asks for (the CPU when unset), or why the value is not one.
    pub fn device(&self) -> Result<kallista_ops::backend::Device, String> {
        use kallista_ops::{backend::Device, OpsError};
        self.device.as_deref().map_or(Ok(Device::Cpu), Device::parse).map_err(|e| match e {
            OpsError::Config(detail) => detail,
            other => other.to_string(),
        })
    }

    /// The parameter-server settings of an `async` job.
    pub fn async_settings(&self) -> AsyncSettings {
        let d = AsyncSettings::default();
        let hosts = self.parameter_server_hosts.clone().unwrap_or_default();
        AsyncSettings {
            parameter_servers: self.parameter_servers.unwrap_or(if hosts.is_empty() {
                d.parameter_servers
            } else {
                hosts.len()
            }),
            push_every_steps: self.push_every_steps.unwrap_or(d.push_every_steps),
            max_staleness: self.max_staleness,
            hogwild: self.hogwild.unwrap_or(d.hogwild),
            divide_lr_by_staleness: self.divide_lr_by_staleness.unwrap_or(d.divide_lr_by_staleness),
            compensate_momentum: self.compensate_momentum.unwrap_or(d.compensate_momentum),
            hosts,
            token_file: self.parameter_server_token_file.as_ref().map(std::path::PathBuf::from),
        }
    }

    /// The workers of the job: as set, or one per core of this machine, at
    /// most `shards` and dividing it (each worker scans whole shard files).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let most = kallista_engine::train::round::default_workers().min(self.shards.max(1));
            (1..=most).rev().find(|w| self.shards.max(1).is_multiple_of(*w)).unwrap_or(1)
        })
    }
}

fn default_sync_every_steps() -> u64 {
    kallista_engine::train::round::DEFAULT_SYNC_EVERY_STEPS
}
fn four() -> usize {
    4
}

/// The synthetic video-QA set `kallista run` makes when the data is absent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Where the clips go (`<dir>/clips/`); `${job_dir}` allowed.
    pub dir: String,
    pub videos: usize,
    #[serde(default = "eight")]
    pub frames: usize,
    #[serde(default = "sixty_four")]
    pub size: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// A SQL script that writes prepared splits, relative to the job file;
    /// run with `--set data=<dir> --set out=<prepared>` when `prepared` has
    /// no `train/`. A job whose `data.script` prepares the splits as views
    /// needs neither.
    #[serde(default)]
    pub prepare: Option<String>,
    /// Where the prepared splits go; `${job_dir}` allowed.
    #[serde(default)]
    pub prepared: Option<String>,
}

fn eight() -> usize {
    8
}
fn sixty_four() -> usize {
    64
}

/// Command-line overrides of a job file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub job_dir: Option<String>,
    pub train_files: Option<String>,
    pub eval_files: Option<String>,
    pub workers: Option<usize>,
    pub max_steps: Option<u64>,
}

/// A spec error naming the file and key.
pub fn spec_error(file: &Path, key: &str, detail: impl std::fmt::Display) -> JobError {
    JobError::Spec { file: file.display().to_string(), key: key.into(), detail: detail.to_string() }
}

/// Reads and parses a job file (types and unknown keys; the rest is [`JobSpec::validate`]'s).
pub fn load(path: &Path) -> Result<JobSpec, JobError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| JobError::Io { path: path.display().to_string(), source: e })?;
    parse(&text, path)
}

/// [`load`] of a job file's text; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<JobSpec, JobError> {
    if let Some(key) = numbers::non_finite_key(text) {
        return Err(spec_error(path, &key, "not a finite number (.nan and .inf are refused)"));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        spec_error(path, if key == "." { "(top level)" } else { &key }, e.into_inner())
    })
}

impl JobSpec {
    /// Applies overrides; resolves `${job_dir}`.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.job_dir {
            self.job_dir = Some(d.clone());
        }
        if let Some(t) = &o.train_files {
            self.data.train = SourceSpec::Path(t.clone());
        }
        if let Some(e) = &o.eval_files {
            self.data.eval = Some(SourceSpec::Path(e.clone()));
        }
        if let Some(w) = o.workers {
            self.scaling.workers = Some(w);
        }
        if let Some(m) = o.max_steps {
            self.training.max_steps = Some(m);
            self.training.epochs = None;
        }
    }

    /// The job directory, made absolute here (so that every process of the
    /// cluster reads the same place), or an error naming `job_dir`.
    pub fn job_dir(&self, file: &Path) -> Result<JobDir, JobError> {
        let dir = self
            .job_dir
            .as_ref()
            .ok_or_else(|| spec_error(file, "job_dir", "missing: set it in the file or pass --job-dir"))?;
        let at = Location::parse(dir).map_err(|e| spec_error(file, "job_dir", e))?;
        if matches!(at.url().scheme(), "http" | "https") {
            return Err(spec_error(file, "job_dir", format!("{at}: HTTP stores are read-only")));
        }
        Ok(JobDir::new(at))
    }

    /// `s` with `${job_dir}` replaced.
    pub fn expand(&self, s: &str) -> String {
        match &self.job_dir {
            Some(d) => s.replace("${job_dir}", d.trim_end_matches('/')),
            None => s.to_string(),
        }
    }

    /// A split as the engine takes it; `key` names it in errors.
    pub fn source(&self, file: &Path, key: &str, s: &SourceSpec) -> Result<DataSource, JobError> {
        Ok(match s {
            SourceSpec::Path(p) => {
                DataSource::Parquet(Location::parse(&self.expand(p)).map_err(|e| spec_error(file, key, e))?)
            }
            SourceSpec::Sql { sql } => DataSource::Sql(self.expand(sql)),
        })
    }

    /// The optimizer. Unknown keys are rejected by the optimizer kind's
    /// `deny_unknown_fields`, which sees every key the config itself does not take.
    pub fn optimizer(&self, file: &Path) -> Result<OptimizerConfig, JobError> {
        serde_json::from_value(self.training.optimizer.clone()).map_err(|e| spec_error(file, "training.optimizer", e))
    }

    /// Checks the values the types cannot: ranges and how keys combine.
    pub fn validate(&self, file: &Path) -> Result<(), JobError> {
        let t = &self.training;
        let s = &self.scaling;
        let err = |key: &str, detail: String| Err(spec_error(file, key, detail));
        if t.batch_size == 0 {
            return err("training.batch_size", "must be positive".into());
        }
        match (t.epochs, t.max_steps) {
            (None, None) => return err("training.epochs", "set training.epochs or training.max_steps".into()),
            (Some(_), Some(_)) => {
                return err("training.max_steps", "set training.epochs or training.max_steps, not both".into())
            }
            (Some(0), _) | (_, Some(0)) => return err("training.epochs", "must be positive".into()),
            _ => {}
        }
        for (key, v) in [("training.eval_every_steps", t.eval_every_steps), ("training.eval_steps", t.eval_steps)] {
            if v == Some(0) {
                return err(key, "must be positive".into());
            }
        }
        if t.checkpoint_every_steps == 0 {
            return err("training.checkpoint_every_steps", "must be positive".into());
        }
        kallista_ops::losses::Loss::from_name(&t.loss).map_err(|e| spec_error(file, "training.loss", e))?;
        if t.metrics.first().map(String::as_str) != Some("accuracy") {
            return err("training.metrics", format!("expected [accuracy] (got {:?})", t.metrics));
        }
        numbers::check_optimizer(&self.optimizer(file)?)
            .map_err(|(key, detail)| spec_error(file, &format!("training.optimizer.{key}"), detail))?;
        if s.shards == 0 {
            return err("scaling.shards", "must be positive".into());
        }
        s.device().map_err(|e| spec_error(file, "scaling.device", e))?;
        if s.workers() == 0 || s.workers() > s.shards {
            return err(
                "scaling.workers",
                format!("{} workers with {} shards: expected 1 to scaling.shards", s.workers(), s.shards),
            );
        }
        // Each worker scans whole shard files: otherwise some get none.
        if !s.shards.is_multiple_of(s.workers()) {
            return err(
                "scaling.workers",
                format!(
                    "{} workers with {} shards: scaling.shards must be a multiple of the workers",
                    s.workers(),
                    s.shards
                ),
            );
        }
        if s.round_timeout_seconds == 0 {
            return err("scaling.round_timeout_seconds", "must be positive".into());
        }
        if s.rank_start_timeout_seconds == 0 {
            return err("scaling.rank_start_timeout_seconds", "must be positive".into());
        }
        if s.sync_every_steps == 0 {
            return err("scaling.sync_every_steps", "must be positive".into());
        }
        let async_keys = [
            ("parameter_servers", s.parameter_servers.is_some()),
            ("push_every_steps", s.push_every_steps.is_some()),
            ("max_staleness", s.max_staleness.is_some()),
            ("hogwild", s.hogwild.is_some()),
            ("divide_lr_by_staleness", s.divide_lr_by_staleness.is_some()),
            ("compensate_momentum", s.compensate_momentum.is_some()),
            ("parameter_server_hosts", s.parameter_server_hosts.is_some()),
            ("parameter_server_token_file", s.parameter_server_token_file.is_some()),
        ];
        if let Some((key, _)) = async_keys.iter().find(|(_, set)| *set).filter(|_| s.mode != Mode::Async) {
            return err(&format!("scaling.{key}"), "is a setting of mode: async".into());
        }
        if s.parameter_servers == Some(0) {
            return err("scaling.parameter_servers", "must be positive".into());
        }
        if s.push_every_steps == Some(0) {
            return err("scaling.push_every_steps", "must be positive".into());
        }
        if let Some(hosts) = &s.parameter_server_hosts {
            if hosts.is_empty()
                || hosts.iter().any(|h| h.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()))
            {
                return err("scaling.parameter_server_hosts", format!("expected host:port entries (got {hosts:?})"));
            }
            if s.parameter_servers.is_some_and(|n| n != hosts.len()) {
                return err(
                    "scaling.parameter_servers",
                    format!(
                        "{} shards but {} parameter_server_hosts: one host per shard",
                        s.parameter_servers.unwrap_or(0),
                        hosts.len()
                    ),
                );
            }
            let Some(token) = &s.parameter_server_token_file else {
                return err("scaling.parameter_server_token_file", "is needed with parameter_server_hosts".into());
            };
            kallista_engine::ps::host::read_token(std::path::Path::new(token))
                .map_err(|e| spec_error(file, "scaling.parameter_server_token_file", e.to_string()))?;
        }
        let micro = self.micro_batch();
        if micro == 0 || !t.batch_size.is_multiple_of(micro * s.shards) {
            return err(
                "scaling.micro_batch_size",
                format!(
                    "training.batch_size {} must be a multiple of micro_batch_size ({micro}) x shards ({})",
                    t.batch_size, s.shards
                ),
            );
        }
        Ok(())
    }

    /// Rows per block.
    pub fn micro_batch(&self) -> usize {
        self.scaling.micro_batch_size.unwrap_or(self.training.batch_size / self.scaling.shards.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::ScalingSpec;
    use kallista_engine::train::round::{default_workers, Mode};

    #[test]
    fn scaling_defaults_to_a_worker_per_core_and_long_average_rounds() {
        let s: ScalingSpec = serde_yaml::from_str("shards: 2").unwrap();
        assert_eq!(s.workers(), default_workers().min(2));
        let s: ScalingSpec = serde_yaml::from_str("shards: 9").unwrap();
        assert_eq!(9 % s.workers(), 0, "{} workers", s.workers());
        assert_eq!((s.mode, s.sync_every_steps), (Mode::Average, 200));
        let s: ScalingSpec = serde_yaml::from_str("{workers: 3, mode: sync}").unwrap();
        assert_eq!((s.workers(), s.mode), (3, Mode::Sync));
    }
}
