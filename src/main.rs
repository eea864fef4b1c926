//! `kallista`: the command line. Argument parsing only; the work is in
//! `kallista-jobs`, and errors become messages and exit codes here.

mod interrupt;

use clap::{Args, Parser, Subcommand};
use kallista_data::frames::FrameEncoding;
use kallista_engine::session::Cluster;
use kallista_jobs::sql_cmd::SqlSource;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc keeps freed pages for reuse: glibc's malloc unmaps large tensors after each step,
/// and the page faults and TLB shootdowns cost several percent of a training step.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kallista",
    version,
    about = "Keras-style deep learning, trained data-parallel on DataFusion Ballista"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the video-QA model in-process on a small synthetic task and report its accuracy.
    Demo {
        /// Training clips.
        #[arg(long, default_value_t = 512)]
        samples: usize,
        #[arg(long, default_value_t = 15)]
        epochs: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
    /// Train a job (YAML) on the embedded cluster (scheduler and executor in this process).
    Train(JobArgs),
    /// Submit a job (YAML) to a running cluster.
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// The scheduler, df://HOST:PORT.
        #[arg(long)]
        scheduler: String,
    },
    /// Run a ready-made job directory (e.g. jobs/video_qa): make and prepare its data when absent, train, test.
    Run {
        /// A directory holding job.yaml (or the job file itself).
        dir: PathBuf,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Compute a job's frozen-feature caches (as `training.cache_frozen` does before training), on the embedded cluster or --scheduler's.
    Features {
        #[command(flatten)]
        job: JobArgs,
        /// A running cluster's scheduler, df://HOST:PORT (default: an embedded cluster).
        #[arg(long)]
        scheduler: Option<String>,
    },
    /// Predict with a trained model over a table, on the cluster: one row of predictions per input row (Parquet).
    Predict {
        #[command(flatten)]
        args: PredictCliArgs,
        /// Where the predictions go (a Parquet file or directory, local or a store URL).
        #[arg(long)]
        out: String,
    },
    /// Evaluate a trained model over a table, on the cluster: OUT/metrics.json and OUT/predictions.parquet.
    Evaluate {
        #[command(flatten)]
        args: PredictCliArgs,
        /// The output directory (local or a store URL).
        #[arg(long)]
        out: String,
        /// The class-id column (default: the one the model was trained on).
        #[arg(long)]
        label: Option<String>,
        /// The column per-group metrics group by (default: the training job's).
        #[arg(long)]
        group_by: Option<String>,
    },
    /// Make or ingest datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run SQL (a script or one query) on the embedded Ballista cluster or a remote scheduler.
    Sql(SqlArgs),
    /// Run a Ballista scheduler with Kallista's functions (binds loopback by default).
    Scheduler {
        /// Address to listen on (0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The name clients and executors reach this scheduler by (default: the bind host).
        #[arg(long)]
        external_host: Option<String>,
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// Seconds without a heartbeat after which an executor is declared lost.
        #[arg(long, default_value_t = 6)]
        executor_timeout_seconds: u64,
    },
    /// Run a parameter-server host for `async` jobs: each driver holding the
    /// cluster's token gets a shard of its job here, closed when the driver ends.
    Ps {
        /// Address to listen on (0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The name drivers and workers reach this host by (default: the bind host).
        #[arg(long)]
        external_host: Option<String>,
        #[arg(long, default_value_t = 50070)]
        port: u16,
        /// The cluster's token (at least 16 random bytes; drivers name the same file).
        #[arg(long)]
        token_file: std::path::PathBuf,
    },
    /// Run a Ballista executor with Kallista's functions and operators.
    Executor {
        /// Address to listen on (0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The name the scheduler and other executors reach this one by
        /// (default: the bind host; bound to 0.0.0.0, the address the scheduler sees).
        #[arg(long)]
        external_host: Option<String>,
        /// Flight (data) port.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// gRPC (control) port.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        scheduler_host: String,
        #[arg(long, default_value_t = 50050)]
        scheduler_port: u16,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 2)]
        task_slots: usize,
        /// Directory for shuffle files and the object cache.
        #[arg(long)]
        work_dir: Option<String>,
        /// GiB of staged data from network stores kept in the work dir, so
        /// that later rounds read it locally (0: none).
        #[arg(long, default_value_t = 16)]
        object_cache_gib: u64,
        /// Where this executor's workers run forward and backward: cpu, or
        /// cuda:N (a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Run on these CPUs only ("0", "0-3", "0,2"), as a container's
        /// cpuset would: executors that share a host each get cores of
        /// their own, and the executor's thread pools size to them
        /// (default: every CPU the process may use).
        #[arg(long)]
        cpus: Option<String>,
    },
}

#[derive(Args)]
struct JobArgs {
    /// The job file (YAML).
    job: PathBuf,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Continue from the job dir's last checkpoint (same data order, optimizer state).
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct PredictCliArgs {
    /// A job dir (its final weights), a checkpoint (.safetensors) or a Keras .weights.h5 with model.json beside it or above.
    #[arg(long)]
    model: String,
    /// A Parquet file or directory, or a query (SELECT ...) over the --table tables.
    #[arg(long)]
    data: String,
    /// A table the --data query reads, NAME=PARQUET_LOCATION.
    #[arg(long = "table", value_name = "NAME=URI", value_parser = parse_var)]
    tables: Vec<(String, String)>,
    /// The column of each model input, in order, comma-separated (default: the training job's).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// A running scheduler (df://host:port); default: the embedded cluster.
    #[arg(long)]
    scheduler: Option<String>,
}

impl PredictCliArgs {
    fn split(
        self,
        out: String,
        label: Option<String>,
        group_by: Option<String>,
    ) -> (kallista_jobs::predict_cmd::PredictArgs, Cluster) {
        let cluster = self.scheduler.map_or(Cluster::Embedded, Cluster::Remote);
        let args = kallista_jobs::predict_cmd::PredictArgs {
            model: self.model,
            data: self.data,
            out,
            tables: self.tables,
            columns: self.columns,
            label,
            group_by,
        };
        (args, cluster)
    }
}

#[derive(Args)]
struct OverrideArgs {
    /// Overrides job_dir (a path or an s3://, gs://, az:// or file:// URL).
    #[arg(long)]
    job_dir: Option<String>,
    /// Overrides data.train (a Parquet file or directory).
    #[arg(long)]
    train_files: Option<String>,
    /// Overrides data.eval.
    #[arg(long)]
    eval_files: Option<String>,
    /// Overrides scaling.workers.
    #[arg(long)]
    workers: Option<usize>,
    /// Overrides training.max_steps (and drops training.epochs).
    #[arg(long)]
    max_steps: Option<u64>,
}

impl OverrideArgs {
    fn into_overrides(self) -> kallista_jobs::spec::Overrides {
        kallista_jobs::spec::Overrides {
            job_dir: self.job_dir,
            train_files: self.train_files,
            eval_files: self.eval_files,
            workers: self.workers,
            max_steps: self.max_steps,
        }
    }
}

fn print_report(r: &kallista_engine::train::driver::TrainReport) {
    println!(
        "trained {} steps in {} rounds: {:.1} samples/s, {:.0} ms per round ({:.0} ms compute)",
        r.steps, r.rounds, r.samples_per_s, r.mean_round_ms, r.mean_compute_ms
    );
    for s in [&r.eval, &r.test].into_iter().flatten() {
        println!(
            "{} accuracy {:.4} (loss {:.4}, {} rows)",
            s.split,
            s.overall.accuracy(),
            s.overall.loss(),
            s.overall.rows
        );
        for (family, c) in &s.families {
            println!("  {family:<14} {:.4}  ({} rows)", c.accuracy(), c.rows);
        }
    }
    if let Some(w) = &r.weights {
        println!("weights: {w}");
    }
}

#[derive(Subcommand)]
enum DataCommand {
    /// Render the synthetic video question-answering set as sharded Parquet (<out>/clips/).
    MakeVideoQa {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2000)]
        videos: usize,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Frame side in pixels.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        /// raw, png or jpeg.
        #[arg(long, default_value = "raw")]
        encoding: String,
        /// Clips per Parquet file (default: half the set, at most 2000).
        #[arg(long)]
        videos_per_shard: Option<usize>,
    },
    /// Ingest one folder of frame images per video plus a CSV or JSONL of (video, question, answer[, split]).
    IngestFrames {
        #[arg(long)]
        frames_dir: PathBuf,
        #[arg(long)]
        annotations: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Videos with another frame count: `sample` (evenly spaced frames, repeated when too few),
        /// `pad` (a short video's last frame repeated) or `error`.
        #[arg(long, default_value = "sample")]
        frame_policy: String,
        /// Resize frames to SIZE x SIZE.
        #[arg(long)]
        size: Option<usize>,
        /// Refuse images of more pixels, before decoding them.
        #[arg(long, default_value_t = kallista_data::image_file::DEFAULT_MAX_PIXELS)]
        max_frame_pixels: u64,
        #[arg(long, default_value = "raw")]
        encoding: String,
        /// Skip bad rows (counted and listed) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Also write the skipped rows (line, column, reason) to this JSONL file.
        #[arg(long, requires = "skip_bad")]
        skipped_out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct SqlArgs {
    /// A SQL script to run; several run in order, in one session.
    #[arg(short = 'f', long = "file", conflicts_with = "query", required_unless_present = "query")]
    file: Vec<PathBuf>,
    /// One query to run.
    #[arg(short = 'e', long = "execute")]
    query: Option<String>,
    /// A running scheduler (df://host:port); default: the embedded cluster.
    #[arg(long)]
    scheduler: Option<String>,
    /// Give up on a statement that runs longer than this.
    #[arg(long, default_value_t = 3600)]
    statement_timeout_seconds: u64,
    /// Script variable, `${name}` in the SQL.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))
}

fn encoding(name: &str) -> Result<FrameEncoding, kallista_jobs::JobError> {
    FrameEncoding::parse(name)
        .ok_or_else(|| kallista_jobs::JobError::Invalid(format!("--encoding: expected raw, png or jpeg, got '{name}'")))
}

fn run(cli: Cli) -> Result<(), kallista_jobs::JobError> {
    match cli.command {
        Command::Demo { samples, epochs, seed } => {
            kallista_jobs::demo::run_demo(samples, epochs, seed, |line| println!("{line}")).map(|_| ())
        }
        Command::Train(args) => {
            let r = kallista_jobs::train_cmd::train_cmd(
                &args.job,
                &args.overrides.into_overrides(),
                args.resume,
                &Cluster::Embedded,
                |line| eprintln!("{line}"),
            )?;
            print_report(&r);
            Ok(())
        }
        Command::Submit { job, scheduler } => {
            let r = kallista_jobs::train_cmd::train_cmd(
                &job.job,
                &job.overrides.into_overrides(),
                job.resume,
                &Cluster::Remote(scheduler),
                |line| eprintln!("{line}"),
            )?;
            print_report(&r);
            Ok(())
        }
        Command::Features { job, scheduler } => {
            let cluster = scheduler.map_or(Cluster::Embedded, Cluster::Remote);
            let caches =
                kallista_jobs::train_cmd::features_cmd(&job.job, &job.overrides.into_overrides(), &cluster, |line| {
                    eprintln!("{line}")
                })?;
            for (split, at) in caches {
                println!("{split}\t{at}");
            }
            Ok(())
        }
        Command::Run { dir, overrides } => {
            let r = kallista_jobs::train_cmd::run_cmd(&dir, &overrides.into_overrides(), |line| eprintln!("{line}"))?;
            print_report(&r);
            Ok(())
        }
        Command::Data(DataCommand::MakeVideoQa {
            out,
            videos,
            frames,
            size,
            seed,
            encoding: enc,
            videos_per_shard,
        }) => {
            let mut opts = kallista_data::video_qa::MakeOptions::new(out, videos, frames, size, seed);
            opts.encoding = encoding(&enc)?;
            if let Some(n) = videos_per_shard {
                opts.videos_per_shard = n;
            }
            let (_, summary) = kallista_jobs::data_cmd::make_video_qa_cmd(&opts)?;
            print!("{summary}");
            Ok(())
        }
        Command::Data(DataCommand::IngestFrames {
            frames_dir,
            annotations,
            out,
            frames,
            frame_policy,
            size,
            max_frame_pixels,
            encoding: enc,
            skip_bad,
            skipped_out,
        }) => {
            let opts = kallista_data::ingest::IngestOptions {
                frames_dir,
                annotations,
                out,
                frames,
                frame_policy: kallista_data::ingest::FramePolicy::parse(&frame_policy).ok_or_else(|| {
                    kallista_jobs::JobError::Invalid(format!(
                        "--frame-policy: expected sample, pad or error, got '{frame_policy}'"
                    ))
                })?,
                size,
                max_frame_pixels,
                encoding: encoding(&enc)?,
                skip_bad,
            };
            let (_, summary) = kallista_jobs::data_cmd::ingest_cmd(&opts, skipped_out.as_deref())?;
            print!("{summary}");
            Ok(())
        }
        Command::Scheduler { bind_host, external_host, port, executor_timeout_seconds } => {
            let opts =
                kallista_engine::cluster::SchedulerOptions { bind_host, external_host, port, executor_timeout_seconds };
            kallista_jobs::cluster_cmd::scheduler_cmd(&opts)
        }
        Command::Ps { bind_host, external_host, port, token_file } => {
            let token = kallista_engine::ps::host::read_token(&token_file)?;
            interrupt::stop_server_on_interrupt(format!("kallista ps on {bind_host}:{port}"));
            let opts = kallista_engine::ps::host::PsOptions { bind_host, external_host, port, token };
            kallista_jobs::cluster_cmd::ps_cmd(&opts)
        }
        Command::Executor {
            bind_host,
            external_host,
            port,
            grpc_port,
            scheduler_host,
            scheduler_port,
            task_slots,
            work_dir,
            object_cache_gib,
            device,
            cpus,
        } => {
            use kallista_ops::backend::{default_backend, set_default_device, Device};
            if let Some(list) = &cpus {
                // First, so that every thread the executor starts inherits it.
                let pinned = kallista_engine::cpu_set::parse_cpu_list(list)
                    .and_then(|cpus| kallista_engine::cpu_set::run_on(&cpus));
                pinned.map_err(|e| kallista_jobs::JobError::Invalid(format!("--cpus {list}: {e}")))?;
            }
            let opened = Device::parse(&device).and_then(set_default_device);
            opened.map_err(|e| kallista_jobs::JobError::Invalid(format!("--device {device}: {e}")))?;
            eprintln!("kallista executor: workers run on {}", default_backend().device_name());
            let opts = kallista_engine::cluster::ExecutorOptions {
                bind_host,
                external_host,
                port,
                grpc_port,
                scheduler_host,
                scheduler_port,
                task_slots,
                work_dir,
                object_cache_bytes: object_cache_gib << 30,
            };
            kallista_jobs::cluster_cmd::executor_cmd(&opts)
        }
        Command::Predict { args, out } => {
            let (args, cluster) = args.split(out, None, None);
            kallista_jobs::predict_cmd::predict_cmd(&args, &cluster, |line| eprintln!("{line}")).map(|_| ())
        }
        Command::Evaluate { args, out, label, group_by } => {
            let (args, cluster) = args.split(out, label, group_by);
            let m = kallista_jobs::predict_cmd::evaluate_cmd(&args, &cluster, |line| eprintln!("{line}"))?;
            println!(
                "accuracy {:.4} (top-5 {:.4}, loss {:.4}, {} rows)",
                m.overall.accuracy, m.overall.top5_accuracy, m.overall.loss, m.overall.rows
            );
            for (group, s) in &m.groups {
                println!("  {group:<14} {:.4}  ({} rows)", s.accuracy, s.rows);
            }
            Ok(())
        }
        Command::Sql(args) => {
            let source = match args.query {
                Some(q) => SqlSource::Query(q),
                None => SqlSource::Files(args.file),
            };
            let cluster = args.scheduler.map_or(Cluster::Embedded, Cluster::Remote);
            let vars: BTreeMap<String, String> = args.vars.into_iter().collect();
            let timeout = std::time::Duration::from_secs(args.statement_timeout_seconds);
            kallista_jobs::sql_cmd::run_sql(&source, &cluster, &vars, timeout, |out| println!("{out}")).map(|_| ())
        }
    }
}

/// Logs to stderr: `RUST_LOG` when set, else info for Kallista and warnings
/// for its dependencies; each line names its time, level and module.
fn init_logging() {
    let default = "warn,kallista=info,kallista_engine=info,kallista_jobs=info,kallista_data=info";
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format(|out, record| {
            use std::io::Write;
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            writeln!(
                out,
                "[{}.{:03} {} {}] {}",
                t.as_secs(),
                t.subsec_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Scheduler { .. } | Command::Executor { .. } | Command::Ps { .. }) {
        interrupt::exit_on_interrupt();
    }
    // A panic is a bug (bad input gets typed errors): it still ends with an
    // error line and exit code 1, never an abort mid-write.
    match std::panic::catch_unwind(move || run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(p) => {
            let what = kallista_engine::parquet_check::panic_text(&*p);
            eprintln!("error: internal error (a bug in Kallista or a library it uses; please report it): {what}");
            ExitCode::from(1)
        }
    }
}
