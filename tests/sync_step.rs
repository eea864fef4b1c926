//! One `sync` step on the embedded cluster, two ranks, against the same step
//! taken in-process: the mean gradient the ranks applied (recovered from the
//! weights, with plain SGD at learning rate 1: `w1 = w0 - g`) equals
//! `gradients_on_batch` on the step's rows, and the weights after it equal
//! `train_on_batch`'s, to float tolerance (1e-5 relative, plus 1e-7: the
//! ranks sum micro-batch means in fixed point, in-process sums the batch
//! in f32). A dropped block or a wrong divisor is off by whole percents.

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use kallista_engine::session::{training_session, Cluster};
use kallista_engine::store::Location;
use kallista_engine::train::driver::{train, TrainConfig};
use kallista_engine::train::job_dir::JobDir;
use kallista_engine::train::layout::{DataSource, Staged};
use kallista_engine::train::round::{CompileSpec, Mode};
use kallista_engine::train::worker::decode_batches;
use kallista_ops::applications::{video_qa, VideoQaDims};
use kallista_ops::init::Rng;
use kallista_ops::losses::Loss;
use kallista_ops::model::Model;
use kallista_ops::optim::OptimizerConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

mod common;

fn dims() -> VideoQaDims {
    VideoQaDims {
        frames: 3,
        features: 6,
        question_len: 4,
        vocab: 20,
        answers: 5,
        embedding: 4,
        video_units: 5,
        question_units: 4,
        hidden: 8,
        mask_zero: false,
    }
}

fn list(values: ArrayRef, per_row: usize, rows: usize) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(std::iter::repeat_n(per_row, rows)), values, None))
}

/// `rows` random rows with the columns a training job reads.
fn write_rows(path: &Path, d: &VideoQaDims, rows: usize) {
    let mut rng = Rng::new(3);
    let features: Vec<f32> = (0..rows * d.frames * d.features).map(|_| rng.normal()).collect();
    let q: Vec<i32> = (0..rows * d.question_len).map(|_| 1 + rng.below(d.vocab - 1) as i32).collect();
    let answers: Vec<i32> = (0..rows).map(|_| rng.below(d.answers) as i32).collect();
    let ids: Vec<String> = (0..rows).map(|i| format!("v{i:04}")).collect();
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
            Arc::new(StringArray::from(vec!["f"; rows])),
            list(Arc::new(Float32Array::from(features)), d.frames * d.features, rows),
            list(Arc::new(Int32Array::from(q)), d.question_len, rows),
            Arc::new(Int32Array::from(answers)),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Every staged row whose block is in `blocks`, read with the plain Parquet reader.
fn staged_rows(staged: &Staged, blocks: &[u64]) -> Vec<RecordBatch> {
    let mut out = vec![];
    let root = staged.dir.local_path().unwrap();
    for shard in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let file = std::fs::File::open(file.unwrap().path()).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let ids = batch.column_by_name("block").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
                let keep: arrow::array::BooleanArray =
                    ids.iter().map(|b| Some(blocks.contains(&(b.unwrap() as u64)))).collect();
                out.push(arrow::compute::filter_record_batch(&batch, &keep).unwrap());
            }
        }
    }
    out
}

fn compiled(d: &VideoQaDims) -> Model {
    let mut m = video_qa(d, 42).unwrap();
    m.compile(OptimizerConfig::sgd(1.0), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    m
}

/// Within 1e-5 relative, plus two roundings of a weight of magnitude `scale`
/// (the gradient is recovered as a difference of weights).
fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 2.0 * f32::EPSILON * scale + 1e-7
}

#[test]
fn one_sync_step_applies_the_mean_gradient_of_in_process_train_on_batch() {
    let d = dims();
    let dir = common::temp_dir("sync-step");
    write_rows(&dir.join("train/part-0.parquet"), &d, 96);
    let job = JobDir::new(Location::from_path(&dir.join("job")).unwrap());
    let config_binding = kallista_data::binding::Binding {
        inputs: vec!["features".into(), "question_ids".into()],
        label: Some("answer_id".into()),
        group_by: Some("family".into()),
        key: vec!["video_id".into(), "question".into()],
    };
    let config = TrainConfig {
        job_dir: job.clone(),
        model: video_qa(&d, 42).unwrap(),
        compile: CompileSpec {
            optimizer: OptimizerConfig::sgd(1.0),
            loss: "sparse_categorical_crossentropy".into(),
            metrics: vec!["accuracy".into()],
        },
        binding: config_binding.clone(),
        train: DataSource::Parquet(Location::from_path(&dir.join("train")).unwrap()),
        eval: None,
        test: None,
        batch_size: 16,
        micro_batch: 4,
        shards: 2,
        workers: 2,
        mode: Mode::Sync,
        sync_every_steps: 10,
        epochs: None,
        max_steps: Some(1),
        eval_every_steps: None,
        eval_steps: None,
        checkpoint_every_steps: 1000,
        seed: 9,
        resume: false,
        round_timeout: std::time::Duration::from_secs(120),
        driver_host: "127.0.0.1".into(),
        rank_start_timeout: std::time::Duration::from_secs(30),
        advertised_host: None,
        shared_memory: true,
        asynchronous: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = rt.block_on(async {
        let ctx = training_session(&Cluster::Embedded, 2).await.unwrap();
        train(config, &ctx, &mut |_| {}).await.unwrap()
    });
    rt.shutdown_background();
    assert_eq!(report.steps, 1);
    let lines = common::train_lines(&job.root().to_string());
    assert_eq!(lines[0]["partitions"].as_u64(), Some(2), "two ranks: {}", lines[0]);

    // The step's rows, as the schedule names them.
    let staged: Staged =
        serde_json::from_slice(&std::fs::read(dir.join("job/data/train.layout.json")).unwrap()).unwrap();
    let blocks = staged.schedule(16 / 4 / 2).blocks_of_step(0);
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    let rows = staged_rows(&staged, &blocks);
    let before = compiled(&d);
    let batches: Vec<&RecordBatch> = rows.iter().collect();
    let (x, y) = decode_batches(&before, &batches, &config_binding, "test").unwrap();
    assert_eq!(y.shape(), &[16]);
    let (_, grads) = before.gradients_on_batch(&x, std::slice::from_ref(&y)).unwrap();
    let mut after = before.clone();
    after.train_on_batch(&x, std::slice::from_ref(&y)).unwrap();

    let (published, _) = kallista_ops::model::read_safetensors(&dir.join("job/weights/step-1.safetensors")).unwrap();
    let published: BTreeMap<String, Vec<f32>> = published.into_iter().map(|(k, t)| (k, t.data().to_vec())).collect();
    let w0 = before.named_weights();
    let w1 = after.named_weights();
    for (i, key) in before.weight_keys().iter().enumerate() {
        let got = &published[key];
        let g = grads.values[i].as_ref().unwrap_or_else(|| panic!("{key} has no gradient"));
        let start = w0[key].data();
        let moved: Vec<f32> = start.iter().zip(got).map(|(a, b)| a - b).collect();
        assert!(moved.iter().any(|v| *v != 0.0), "{key} did not move");
        for (j, (m, want)) in moved.iter().zip(g).enumerate() {
            assert!(close(*m, *want, start[j].abs()), "{key}[{j}]: the ranks applied gradient {m}, in-process {want}");
        }
        for (j, (a, b)) in got.iter().zip(w1[key].data()).enumerate() {
            assert!(
                close(*a, *b, start[j].abs()),
                "{key}[{j}]: weights {a} after the sync step, {b} after train_on_batch"
            );
        }
    }
}
