//! W1 (`shared/peers/WORKLOAD.md`: the video-QA model on precomputed frame
//! features, batch 32, Adam) trained through the embedded Ballista cluster
//! against the same model trained in-process on the same rows, side by side.
//! Prints one JSON line per run with samples/s, and for the cluster the mean
//! round time, the slowest partition's compute and their difference: the
//! per-round overhead (Ballista job, weights version written and loaded,
//! partial and reduced gradient files).
//!
//!     cargo bench -p kallista-engine --bench engine_w1     # ROUNDS=2 STEPS=30 by default
//!
//! Runs: `in_process` (train_on_batch, 2 threads), `sync` (2 workers: one
//! optimizer step per round) and `average` (2 workers, 10 and 50 local steps
//! per round).

use datafusion::arrow::array::{ArrayRef, Float32Array, Int32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use kallista_engine::session::{training_session, Cluster};
use kallista_engine::train::driver::{train, TrainConfig};
use kallista_engine::train::layout::DataSource;
use kallista_engine::train::round::{CompileSpec, Mode};
use kallista_engine::train::worker::decode_rows;
use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 32;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn list<T: datafusion::arrow::array::Array + 'static>(
    values: T,
    per_row: usize,
    rows: usize,
    item: DataType,
) -> ArrayRef {
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(per_row, rows));
    Arc::new(ListArray::new(Arc::new(Field::new_list_field(item, true)), offsets, Arc::new(values), None))
}

/// `rows` W1 rows with the columns a training job reads.
fn write_rows(path: &Path, d: &VideoQaDims, rows: usize) {
    let mut rng = Rng::new(7);
    let per = d.frames * d.features;
    let features = Float32Array::from((0..rows * per).map(|_| rng.normal()).collect::<Vec<f32>>());
    let q =
        Int32Array::from((0..rows * d.question_len).map(|_| 1 + rng.below(d.vocab - 1) as i32).collect::<Vec<i32>>());
    let answers = Int32Array::from((0..rows).map(|_| rng.below(d.answers) as i32).collect::<Vec<i32>>());
    let ids: Vec<String> = (0..rows).map(|i| format!("v{i:05}")).collect();
    let schema = Schema::new(vec![
        Field::new("video_id", DataType::Utf8, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("features", DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))), false),
        Field::new("question_ids", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))), false),
        Field::new("answer_id", DataType::Int32, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(ids.clone())),
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(vec!["w1"; rows])),
            list(features, per, rows, DataType::Float32),
            list(q, d.question_len, rows, DataType::Int32),
            Arc::new(answers),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

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
    let columns = vec!["features".to_string(), "question_ids".to_string()];
    let batches: Vec<_> = reader.map(|b| decode_rows(&model, &b.unwrap(), &columns).unwrap()).collect();
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

fn main() {
    let d = VideoQaDims::w1();
    let (rounds, steps) = (env("ROUNDS", 2), env("STEPS", 30));
    let dir = std::env::temp_dir().join(format!("kallista-engine-w1-{}", std::process::id()));
    let file = dir.join("train/part-0.parquet");
    write_rows(&file, &d, BATCH * 16);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let ctx = rt.block_on(training_session(&Cluster::Embedded, 2)).unwrap();
    for round in 0..rounds {
        let rate = in_process(&file, &d, steps);
        println!("{{\"run\": \"in_process\", \"round\": {round}, \"samples_per_s\": {rate:.1}}}");
        for (mode, every) in [(Mode::Sync, 1u64), (Mode::Average, 10), (Mode::Average, 50)] {
            let config = TrainConfig {
                job_dir: dir.join(format!("job-{round}-{mode:?}-{every}")),
                model: video_qa(&d, 1234).unwrap(),
                compile: compile_spec(),
                input_columns: vec!["features".into(), "question_ids".into()],
                train: DataSource::Parquet(dir.join("train")),
                eval: None,
                test: None,
                batch_size: BATCH,
                micro_batch: 8,
                shards: 4,
                workers: 2,
                mode,
                sync_every_steps: every,
                epochs: None,
                max_steps: Some((steps as u64).max(every)),
                eval_every_steps: None,
                eval_steps: None,
                checkpoint_every_steps: 1_000_000,
                seed: 1,
                resume: false,
                round_timeout: std::time::Duration::from_secs(600),
            };
            let t = Instant::now();
            let r = rt.block_on(train(config, &ctx, &mut |_| {})).unwrap();
            println!(
                "{{\"run\": \"{mode:?}\", \"sync_every_steps\": {every}, \"round\": {round}, \"samples_per_s\": {:.1}, \"ratio_to_in_process\": {:.3}, \"rounds\": {}, \"round_ms\": {:.1}, \"compute_ms\": {:.1}, \"overhead_ms\": {:.1}, \"job_wall_s\": {:.1}}}",
                r.samples_per_s,
                r.samples_per_s / rate,
                r.rounds,
                r.mean_round_ms,
                r.mean_compute_ms,
                r.mean_round_ms - r.mean_compute_ms,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
