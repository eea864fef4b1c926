//! W1 batch inference (`shared/peers/WORKLOAD.md`: the video-QA model on
//! precomputed frame features) through `kallista_predict`, against the same
//! model's `predict_on_batch` in this process at the peers' batch of 256,
//! side by side: each SQL run sits between two in-process measurements and
//! its ratio is to their mean. Runs: the embedded cluster, a cluster of
//! processes with one executor (2 task slots), and with two executors (one
//! slot each). Prints one JSON line per run with rows/s.
//!
//!     cargo bench --workspace --bench predict_w1     # ROWS=4096 FILES=4 RUNS=<all> BATCH_SIZE=<DataFusion's>
//!
//! Every run first predicts once to load the model on its executors (the
//! cache is per process and content), then times one query over every row.
//! The process clusters use the `kallista` binary next to this bench's
//! directory, or `KALLISTA_BIN`.

mod common;

use common::{env, write_rows, ProcessCluster};
use datafusion::arrow::array::RecordBatch;
use kallista_engine::session::{connect, Cluster};
use kallista_engine::train::worker::decode_rows;
use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::model::Model;
use kallista_ops::Data;
use std::path::Path;
use std::time::Instant;

/// The allocator the `kallista` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INFER_BATCH: usize = 256;

/// Every row of `files`, decoded once, in batches of [`INFER_BATCH`].
fn decoded(model: &Model, files: &[std::path::PathBuf]) -> Vec<Vec<Data>> {
    let columns = common::w1_binding();
    let mut out = vec![];
    for f in files {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .with_batch_size(INFER_BATCH)
                .build()
                .unwrap();
        for b in reader {
            let b: RecordBatch = b.unwrap();
            out.push(decode_rows(model, &b, &columns, "w1").unwrap().0);
        }
    }
    out
}

/// Rows/s of `predict_on_batch` over every batch.
fn in_process(model: &Model, batches: &[Vec<Data>]) -> f64 {
    let t = Instant::now();
    let mut rows = 0;
    for b in batches {
        rows += model.predict_on_batch(b).unwrap()[0].shape()[0];
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

/// Rows/s of one `kallista_predict` query over the table, after one warm-up
/// query, and of a scan that only decodes the same rows.
async fn in_sql(cluster: &Cluster, data: &Path, model: &Path) -> (f64, usize, f64) {
    let ctx = connect(cluster).await.unwrap();
    if let Ok(n) = std::env::var("BATCH_SIZE") {
        ctx.sql(&format!("SET datafusion.execution.batch_size = {n}")).await.unwrap().collect().await.unwrap();
    }
    let table = format!("CREATE EXTERNAL TABLE w1 STORED AS PARQUET LOCATION '{}/'", data.display());
    ctx.sql(&table).await.unwrap().collect().await.unwrap();
    let sql = format!("SELECT kallista_predict('{}', features, question_ids) AS p FROM w1", model.display());
    let count = |batches: Vec<RecordBatch>| batches.iter().map(|b| b.num_rows()).sum::<usize>();
    count(ctx.sql(&format!("{sql} LIMIT 1")).await.unwrap().collect().await.unwrap());
    let t = Instant::now();
    let rows = count(ctx.sql(&sql).await.unwrap().collect().await.unwrap());
    let predict = rows as f64 / t.elapsed().as_secs_f64();
    // The same rows scanned and decoded by Parquet only: what the scan alone costs.
    let t = Instant::now();
    ctx.sql("SELECT SUM(cardinality(features)) FROM w1").await.unwrap().collect().await.unwrap();
    (predict, rows, rows as f64 / t.elapsed().as_secs_f64())
}

fn main() {
    let d = VideoQaDims::w1();
    let (rows, files) = (env("ROWS", 4096), env("FILES", 4));
    let dir = std::env::temp_dir().join(format!("kallista-predict-w1-{}", std::process::id()));
    let paths: Vec<_> = (0..files).map(|i| dir.join(format!("data/part-{i}.parquet"))).collect();
    for p in &paths {
        write_rows(p, &d, rows / files);
    }
    let model = video_qa(&d, 1234).unwrap();
    let job = dir.join("job");
    std::fs::create_dir_all(&job).unwrap();
    std::fs::write(job.join("model.json"), model.to_json()).unwrap();
    let weights = job.join("w1.safetensors");
    model.write_weights(&weights, false).unwrap();
    let batches = decoded(&model, &paths);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let wanted = std::env::var("RUNS").unwrap_or_default();
    let runs: [(&str, usize, usize); 3] = [("embedded", 0, 0), ("1_executor", 1, 2), ("2_executors", 2, 1)];
    in_process(&model, &batches); // warm-up
    for (name, executors, slots) in runs {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w == name) {
            continue;
        }
        let before = in_process(&model, &batches);
        let processes = (executors > 0).then(|| ProcessCluster::start(&dir.join(name), executors, slots));
        let cluster = processes.as_ref().map_or(Cluster::Embedded, |p| Cluster::Remote(p.url.clone()));
        let (rows_per_s, rows, scan_rows_per_s) = rt.block_on(in_sql(&cluster, &dir.join("data"), &weights));
        drop(processes);
        let after = in_process(&model, &batches);
        let baseline = (before + after) / 2.0;
        println!(
            "{{\"bench\": \"predict_w1\", \"run\": \"{name}\", \"executors\": {executors}, \"rows\": {rows}, \
             \"rows_per_s\": {rows_per_s:.1}, \"scan_rows_per_s\": {scan_rows_per_s:.1}, \"in_process_rows_per_s\": {baseline:.1}, \"ratio\": {:.3}}}",
            rows_per_s / baseline
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
