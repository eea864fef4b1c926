//! W1 (`shared/peers/WORKLOAD.md`: the video-QA model on precomputed frame
//! features, batch 32, Adam) trained through the embedded Ballista cluster
//! against the same model trained in-process on the same rows, side by side:
//! each cluster run sits between two in-process measurements, and its ratio
//! is to their mean (the machine's speed drifts). Prints one JSON line per run
//! with samples/s, and for the cluster the mean round time, the slowest
//! partition's compute and their difference: the per-round overhead
//! (Ballista job, Parquet scan, weights version written and loaded, partial
//! and reduced result files).
//!
//!     cargo bench --workspace --bench engine_w1     # ROUNDS=1 ROUNDS_PER_RUN=2 SYNC_STEPS=200 RUNS=<all> SHARED_MEMORY=1
//!
//! Runs: `default` (the job spec's defaults: a worker per core, `average`,
//! 200 local steps per round), `average` with 1 worker, `sync` with 2 ranks
//! and with 1 rank on the embedded cluster (one segment of `SYNC_STEPS`
//! steps: ranks of one process sum in memory), and `sync_cluster`: 2 ranks
//! on a cluster of processes on loopback (`kallista scheduler` and two
//! `kallista executor`s of one slot, from the `kallista` binary next to this
//! bench's directory, or `KALLISTA_BIN`; each on a CPU of its own, as on
//! hosts of their own, where the host has a core per executor and unless
//! `PIN_EXECUTORS=0`: `"executors_pinned"`): the ranks' sums cross processes,
//! through shared memory (`scaling.shared_memory`, the default; `"shared_memory_links": 2`
//! in the output), or with `SHARED_MEMORY=0` through TCP as between hosts.
//! Sync runs also print the all-reduce's time per step and the bytes a rank
//! sent per step. Sync runs stage the rows in 2 shards of 16-row blocks (one
//! block per rank and step, as in-process training runs one shard of the
//! batch per core; 4 shards of 8 rows for 4 ranks); `average` runs in 4
//! shards of 8-row blocks. `sync_4_workers`, `sync_cluster_4`,
//! `async_2_workers`, `async_4_workers`, `async_cluster` and
//! `async_cluster_4` compare `sync` with `async` (2 parameter servers in
//! the driver) at 2 and 4 workers, embedded and on processes (an executor
//! of one slot per worker): `scripts/bench-async.sh` runs them beside
//! Elephas's asynchronous mode.
//!
//! With `W1_S3=s3://bucket/prefix` (and the `AWS_*` variables of that store),
//! each run is also made with its data and job dir in the bucket, right after
//! the same run on local files (`"store": "s3"` / `"file"` in the output):
//! `scripts/bench-w1-s3.sh` starts a local S3 server and does that.

use kallista_engine::session::{training_session, Cluster};
use kallista_engine::store::{blocking, Location};
use kallista_engine::train::driver::{train, TrainConfig};
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::DataSource;
use kallista_engine::train::metrics::{read_metrics, MetricsLine, TrainLine};
use kallista_engine::train::round::{default_workers, CompileSpec, Mode, DEFAULT_SYNC_EVERY_STEPS};
use kallista_engine::train::servers::AsyncSettings;
use kallista_engine::train::worker::decode_rows;
use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use std::path::Path;
use std::time::Instant;

mod common;

use common::{env, write_rows, ProcessCluster};

const BATCH: usize = 32;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn compile_spec() -> CompileSpec {
    CompileSpec {
        optimizer: OptimizerConfig::adam(1e-3),
        loss: "sparse_categorical_crossentropy".into(),
        metrics: vec!["accuracy".into()],
    }
}

/// train_on_batch over the rows of `file`, batch 32, `steps` timed steps after 3 warm-up ones.
fn in_process(file: &Path, d: &VideoQaDims, steps: usize) -> f64 {
    let mut model = video_qa(d, 1234).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .with_batch_size(BATCH)
            .build()
            .unwrap();
    let columns = common::w1_binding();
    let batches: Vec<_> =
        reader.take(steps + 3).map(|b| decode_rows(&model, &b.unwrap(), &columns, "w1").unwrap()).collect();
    let mut timed = 0.0;
    for i in 0..steps + 3 {
        let (x, y) = &batches[i % batches.len()];
        let t = Instant::now();
        model.train_on_batch(x, std::slice::from_ref(y)).unwrap();
        if i >= 3 {
            timed += t.elapsed().as_secs_f64();
        }
    }
    (steps * BATCH) as f64 / timed
}

/// One part of a round's time in a metrics line.
type Part = fn(&TrainLine) -> f64;

/// Mean milliseconds of each part of a round, from the job's `metrics.jsonl`.
fn round_parts(job_dir: &JobDir) -> String {
    let rounds: Vec<_> = read_metrics(job_dir)
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            MetricsLine::Train(t) => Some(t),
            MetricsLine::Eval(_) => None,
        })
        .collect();
    let parts: [(&str, Part); 10] = [
        ("round_ms", |t| t.round_ms),
        ("query_ms", |t| t.query_ms),
        ("scan_ms", |t| t.scan_ms),
        ("load_ms", |t| t.load_ms),
        ("compute_ms", |t| t.compute_ms),
        ("write_ms", |t| t.write_ms),
        ("reduce_ms", |t| t.reduce_ms),
        ("allreduce_ms_per_step", |t| t.allreduce_ms_per_step),
        ("shared_memory_links", |t| t.shared_memory_links as f64),
        ("sent_bytes_per_step", |t| t.sent_bytes_per_step),
    ];
    let means: Vec<String> = parts
        .iter()
        .map(|(k, f)| format!("\"{k}\": {:.1}", rounds.iter().map(f).sum::<f64>() / rounds.len().max(1) as f64))
        .collect();
    format!("{{{}}}", means.join(", "))
}

/// One cluster run's settings.
#[derive(Clone)]
struct Run {
    name: &'static str,
    workers: usize,
    mode: Mode,
    every: u64,
    steps: u64,
    /// On a cluster of processes instead of the embedded one.
    processes: bool,
}

fn main() {
    let d = VideoQaDims::w1();
    let (rounds, per_run, sync_steps) = (
        env("ROUNDS", 1),
        env("ROUNDS_PER_RUN", 2) as u64,
        env("SYNC_STEPS", DEFAULT_SYNC_EVERY_STEPS as usize) as u64,
    );
    let dir = std::env::temp_dir().join(format!("kallista-engine-w1-{}", std::process::id()));
    let file = dir.join("train/part-0.parquet");
    // One default round's rows: a round scans each row once, so fewer rows
    // would hide the scan's cost.
    write_rows(&file, &d, BATCH * DEFAULT_SYNC_EVERY_STEPS as usize);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let every = DEFAULT_SYNC_EVERY_STEPS;
    let runs = [
        Run {
            name: "default",
            workers: default_workers().min(4),
            mode: Mode::default(),
            every,
            steps: per_run * every,
            processes: false,
        },
        Run {
            name: "average_1_worker",
            workers: 1,
            mode: Mode::Average,
            every,
            steps: per_run * every,
            processes: false,
        },
        Run {
            name: "sync_2_workers",
            workers: 2,
            mode: Mode::Sync,
            every: sync_steps,
            steps: sync_steps,
            processes: false,
        },
        Run {
            name: "sync_1_worker",
            workers: 1,
            mode: Mode::Sync,
            every: sync_steps,
            steps: sync_steps,
            processes: false,
        },
        Run {
            name: "sync_cluster",
            workers: 2,
            mode: Mode::Sync,
            every: sync_steps,
            steps: sync_steps,
            processes: true,
        },
    ];
    // `sync` against `async` (2 parameter servers) at 2 and 4 workers, embedded and on processes.
    let mut runs = runs.to_vec();
    for (name, workers, mode, processes) in [
        ("sync_4_workers", 4, Mode::Sync, false),
        ("sync_cluster_4", 4, Mode::Sync, true),
        ("async_2_workers", 2, Mode::Async, false),
        ("async_4_workers", 4, Mode::Async, false),
        ("async_cluster", 2, Mode::Async, true),
        ("async_cluster_4", 4, Mode::Async, true),
    ] {
        runs.push(Run { name, workers, mode, every: sync_steps, steps: sync_steps, processes });
    }
    in_process(&file, &d, 10); // warm-up: the first run of a process is slower
                               // RUNS=default,sync_2_workers picks runs by name (all by default).
    let picked = std::env::var("RUNS").ok();
    let runs: Vec<Run> =
        runs.into_iter().filter(|r| picked.as_deref().is_none_or(|p| p.split(',').any(|n| n == r.name))).collect();
    // One embedded cluster per worker count, reused by every round; one
    // cluster of processes per worker count, an executor of one slot per worker.
    let mut sessions = std::collections::BTreeMap::new();
    let mut processes = std::collections::BTreeMap::new();
    for run in &runs {
        let cluster = match run.processes {
            true => Cluster::Remote(
                processes
                    .entry(run.workers)
                    .or_insert_with(|| ProcessCluster::start(&dir.join(format!("w{}", run.workers)), run.workers, 1))
                    .url
                    .clone(),
            ),
            false => Cluster::Embedded,
        };
        sessions
            .entry((run.workers, run.processes))
            .or_insert_with(|| rt.block_on(training_session(&cluster, run.workers)).unwrap());
    }
    // The stores each run is made on: local files, and the bucket of `W1_S3`.
    let local = Location::from_path(&dir).unwrap();
    let mut stores = vec![("file", local.clone())];
    if let Ok(url) = std::env::var("W1_S3") {
        let bucket = Location::parse(&url).unwrap().join(&format!("engine-w1-{}", std::process::id()));
        blocking::write(&bucket.join("train/part-0.parquet"), std::fs::read(&file).unwrap()).unwrap();
        stores.push(("s3", bucket));
    }
    for round in 0..rounds {
        for run in &runs {
            for (store, base) in &stores {
                let ctx = &sessions[&(run.workers, run.processes)];
                let before = in_process(&file, &d, 60);
                let config = TrainConfig {
                    job_dir: JobDir::new(base.join(&format!("job-{round}-{}", run.name))),
                    model: video_qa(&d, 1234).unwrap(),
                    compile: compile_spec(),
                    binding: common::w1_binding(),
                    train: DataSource::Parquet(base.join("train")),
                    eval: None,
                    test: None,
                    batch_size: BATCH,
                    // `sync`: one block (micro-batch) per rank and step, as
                    // in-process training takes one shard per core; `async`
                    // workers take whole steps, read from every shard.
                    micro_batch: match run.mode {
                        Mode::Average => 8,
                        Mode::Sync | Mode::Async => BATCH / run.workers.max(2),
                    },
                    shards: match run.mode {
                        Mode::Average => 4,
                        Mode::Sync | Mode::Async => run.workers.max(2),
                    },
                    workers: run.workers,
                    mode: run.mode,
                    sync_every_steps: run.every,
                    epochs: None,
                    max_steps: Some(run.steps),
                    eval_every_steps: None,
                    eval_steps: None,
                    checkpoint_every_steps: 1_000_000,
                    seed: 1,
                    resume: false,
                    round_timeout: std::time::Duration::from_secs(600),
                    driver_host: "127.0.0.1".into(),
                    rank_start_timeout: std::time::Duration::from_secs(60),
                    advertised_host: None,
                    shared_memory: env("SHARED_MEMORY", 1) != 0,
                    asynchronous: AsyncSettings { parameter_servers: 2, ..Default::default() },
                };
                let job_dir = config.job_dir.clone();
                let t = Instant::now();
                let r = rt.block_on(train(config, ctx, &mut |_| {})).unwrap();
                let wall = t.elapsed().as_secs_f64();
                let parts = round_parts(&job_dir);
                blocking::delete_all(job_dir.root()).unwrap(); // its staged copy of the data is large
                let after = in_process(&file, &d, 60);
                let rate = (before + after) / 2.0;
                println!("{{\"run\": \"in_process\", \"round\": {round}, \"samples_per_s\": {rate:.1}, \"before\": {before:.1}, \"after\": {after:.1}}}");
                println!(
                "{{\"run\": \"{}\", \"store\": \"{store}\", \"workers\": {}, \"executors_pinned\": {}, \"mode\": \"{:?}\", \"sync_every_steps\": {}, \"round\": {round}, \"samples_per_s\": {:.1}, \"ratio_to_in_process\": {:.3}, \"rounds\": {}, \"round_ms\": {:.1}, \"compute_ms\": {:.1}, \"overhead_ms\": {:.1}, \"job_wall_s\": {:.1}, \"parts\": {}}}",
                run.name,
                run.workers,
                run.processes && processes.get(&run.workers).is_some_and(|p: &ProcessCluster| p.pinned),
                run.mode,
                run.every,
                r.samples_per_s,
                r.samples_per_s / rate,
                r.rounds,
                r.mean_round_ms,
                r.mean_compute_ms,
                r.mean_round_ms - r.mean_compute_ms,
                wall,
                parts
            );
            }
        }
    }
    for (_, base) in &stores[1..] {
        blocking::delete_all(base).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The embedded clusters' servers never finish: do not wait for them.
    drop(processes);
    rt.shutdown_background();
}
