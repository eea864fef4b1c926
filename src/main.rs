//! `kallista`: the command line. Argument parsing only; the work is in
//! `kallista-jobs`, and errors become messages and exit codes here.

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
    /// Make or ingest datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run SQL (a script or one query) on the embedded Ballista cluster or a remote scheduler.
    Sql(SqlArgs),
    /// Run a Ballista scheduler with Kallista's functions (binds loopback by default).
    Scheduler {
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// Seconds without a heartbeat after which an executor is declared lost.
        #[arg(long, default_value_t = 6)]
        executor_timeout_seconds: u64,
    },
    /// Run a Ballista executor with Kallista's functions and operators.
    Executor {
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
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
        /// Directory for shuffle files.
        #[arg(long)]
        work_dir: Option<String>,
    },
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
        /// Resize frames to SIZE x SIZE.
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value = "raw")]
        encoding: String,
        /// Skip bad rows (counted and listed) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
    },
}

#[derive(Args)]
struct SqlArgs {
    /// A SQL script to run.
    #[arg(short = 'f', long = "file", conflicts_with = "query", required_unless_present = "query")]
    file: Option<PathBuf>,
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
            size,
            encoding: enc,
            skip_bad,
        }) => {
            let opts = kallista_data::ingest::IngestOptions {
                frames_dir,
                annotations,
                out,
                frames,
                size,
                encoding: encoding(&enc)?,
                skip_bad,
            };
            let (_, summary) = kallista_jobs::data_cmd::ingest_cmd(&opts)?;
            print!("{summary}");
            Ok(())
        }
        Command::Scheduler { bind_host, port, executor_timeout_seconds } => {
            let opts = kallista_engine::cluster::SchedulerOptions { bind_host, port, executor_timeout_seconds };
            kallista_jobs::cluster_cmd::scheduler_cmd(&opts)
        }
        Command::Executor { bind_host, port, grpc_port, scheduler_host, scheduler_port, task_slots, work_dir } => {
            let opts = kallista_engine::cluster::ExecutorOptions {
                bind_host,
                port,
                grpc_port,
                scheduler_host,
                scheduler_port,
                task_slots,
                work_dir,
            };
            kallista_jobs::cluster_cmd::executor_cmd(&opts)
        }
        Command::Sql(args) => {
            let source = match (args.file, args.query) {
                (Some(f), _) => SqlSource::File(f),
                (None, Some(q)) => SqlSource::Query(q),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let cluster = args.scheduler.map_or(Cluster::Embedded, Cluster::Remote);
            let vars: BTreeMap<String, String> = args.vars.into_iter().collect();
            let timeout = std::time::Duration::from_secs(args.statement_timeout_seconds);
            kallista_jobs::sql_cmd::run_sql(&source, &cluster, &vars, timeout, |out| println!("{out}")).map(|_| ())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
