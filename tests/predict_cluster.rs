//! Batch prediction in SQL on a real cluster (a scheduler and two executor
//! processes on loopback): `kallista_predict`, `kallista_predict_proba` and
//! `kallista_embed` give, row for row, exactly what one process's
//! `predict_on_batch` of the same checkpoint gives; bad arguments are errors
//! that name the argument, the column and the row.

mod common;

use arrow::array::{AsArray, ListArray, RecordBatch, StringArray};
use arrow::datatypes::{Float32Type, Int32Type};
use common::cluster::{start_cluster_with, ClusterOptions};
use common::{assert_picture, kallista, ok, prepared_set, small_job, temp_dir};
use kallista_data::parquet_io::{parquet_files, ClipDecoder};
use kallista_engine::session::{connect, Cluster};
use kallista_ops::model::Model;
use kallista_ops::{ByteTensor, Data, IntTensor};
use std::collections::BTreeMap;
use std::path::Path;

/// A job trained for a few steps (once per test binary): its dir holds
/// `model.json`, `binding.json`, checkpoints and `results.json`.
fn trained_job() -> std::path::PathBuf {
    static JOB: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);
    let mut job = JOB.lock().unwrap_or_else(|e| e.into_inner());
    job.get_or_insert_with(|| {
        let dir = temp_dir("predict-job");
        let file = small_job(&dir, &prepared_set(120), 1, "  max_steps: 4");
        ok(kallista(&["train", file.to_str().unwrap()]));
        dir.join("job")
    })
    .clone()
}

/// `(video_id, question)` -> the model's output row, computed in this
/// process with `predict_on_batch` on every row of the split at once; the
/// rows are decoded by the training path's decoder, not the functions'.
fn in_process(job_dir: &Path, split: &Path, cut_at: Option<&str>) -> BTreeMap<(String, String), Vec<f32>> {
    let mut model = Model::from_json(&std::fs::read_to_string(job_dir.join("model.json")).unwrap()).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("results.json")).unwrap()).unwrap();
    let weights = results["weights"].as_str().unwrap().trim_start_matches("file://").to_string();
    model.load_weights(&weights).unwrap();
    if let Some(layer) = cut_at {
        model = model.truncated_at(layer).unwrap();
    }
    let mut out = BTreeMap::new();
    for file in parquet_files(split).unwrap() {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
                .unwrap()
                .with_batch_size(100_000)
                .build()
                .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let clips = ClipDecoder { path: &file, first_row: 0 }.decode(&batch).unwrap();
            let q = batch.column_by_name("question_ids").unwrap().as_list::<i32>();
            let ids: Vec<i32> = q.values().as_primitive::<Int32Type>().values().to_vec();
            let rows = batch.num_rows();
            let inputs = [
                Data::U8(ByteTensor::new(&clips.shape, clips.frames).unwrap()),
                Data::I32(IntTensor::new(&[rows, ids.len() / rows], ids).unwrap()),
            ];
            let predicted = model.predict_on_batch(&inputs).unwrap().remove(0);
            let width = predicted.data().len() / rows;
            let key = |c: &str, r: usize| batch.column_by_name(c).unwrap().as_string::<i32>().value(r).to_string();
            for r in 0..rows {
                let row = predicted.data()[r * width..(r + 1) * width].to_vec();
                out.insert((key("video_id", r), key("question", r)), row);
            }
        }
    }
    out
}

fn strings(batch: &RecordBatch, c: usize) -> &StringArray {
    batch.column(c).as_string::<i32>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_in_sql_on_two_executors_equal_one_process_row_for_row() {
    let job_dir = trained_job();
    let test_split = prepared_set(120).join("test");
    let cluster = start_cluster_with("predict-sql", ClusterOptions::new(2, 1));
    let ctx = connect(&Cluster::Remote(cluster.url.clone())).await.unwrap();
    let job = job_dir.display().to_string();
    let trained_labels: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("labels.json")).unwrap()).unwrap();
    assert!(trained_labels.iter().any(|l| !l.is_empty()), "training wrote the answer words: {trained_labels:?}");
    ctx.sql(&format!("CREATE EXTERNAL TABLE clips STORED AS PARQUET LOCATION '{}/'", test_split.display()))
        .await
        .unwrap();
    let sql = format!(
        "SELECT video_id, question, kallista_predict('{job}', frames, question_ids) AS p, \
                kallista_predict_proba('{job}', frames, question_ids) AS proba, \
                kallista_embed('{job}', 'fc1', frames, question_ids) AS fc1 \
         FROM clips"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let expected = in_process(&job_dir, &test_split, None);
    let expected_fc1 = in_process(&job_dir, &test_split, Some("fc1"));
    let mut seen = 0;
    for b in &batches {
        let p = b.column(2).as_struct();
        let (class, prob) = (p.column(0).as_primitive::<Int32Type>(), p.column(1).as_primitive::<Float32Type>());
        let label = p.column(2).as_string::<i32>();
        let proba: &ListArray = b.column(3).as_list::<i32>();
        let fc1: &ListArray = b.column(4).as_list::<i32>();
        for r in 0..b.num_rows() {
            let key = (strings(b, 0).value(r).to_string(), strings(b, 1).value(r).to_string());
            let want = &expected[&key];
            let got: Vec<f32> = proba.value(r).as_primitive::<Float32Type>().values().to_vec();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{key:?}"
            );
            let top = want.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            assert_eq!((class.value(r), prob.value(r).to_bits()), (top.0 as i32, top.1.to_bits()), "{key:?}");
            assert_eq!(label.value(r), trained_labels[class.value(r) as usize], "{key:?}: the label training wrote");
            let got_fc1: Vec<f32> = fc1.value(r).as_primitive::<Float32Type>().values().to_vec();
            assert_eq!(got_fc1.len(), 128);
            assert_eq!(got_fc1, expected_fc1[&key], "{key:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, expected.len(), "every row of the split, once");
    // Both executors did some of the work, each loading the model once.
    for i in 0..2 {
        let log = cluster.log(i);
        assert_eq!(log.matches("loaded model").count(), 1, "executor {i}:\n{log}");
    }

    // Other labels in the job dir's labels.json (another test's evaluation
    // may see them too: they change no number).
    let labels: Vec<String> = (0..32).map(|i| format!("answer-{i}")).collect();
    std::fs::write(job_dir.join("labels.json"), serde_json::to_string(&labels).unwrap()).unwrap();
    let sql = format!("SELECT kallista_predict('{job}', frames, question_ids) AS p FROM clips");
    for b in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
        let p = b.column(0).as_struct();
        let (class, label) = (p.column(0).as_primitive::<Int32Type>(), p.column(2).as_string::<i32>());
        for r in 0..b.num_rows() {
            assert_eq!(label.value(r), format!("answer-{}", class.value(r)));
        }
    }
    // New labels are new content: loaded again, once per executor.
    for i in 0..2 {
        assert_eq!(cluster.log(i).matches("loaded model").count(), 2, "executor {i}:\n{}", cluster.log(i));
    }

    // A weights file that does not fit the model beside it.
    let other = job_dir.parent().unwrap().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let config = std::fs::read_to_string(job_dir.join("model.json")).unwrap();
    assert!(config.contains("\"units\": 128"));
    std::fs::write(other.join("model.json"), config.replace("\"units\": 128", "\"units\": 64")).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("results.json")).unwrap()).unwrap();
    let weights = results["weights"].as_str().unwrap().trim_start_matches("file://");
    std::fs::copy(weights, other.join("w.safetensors")).unwrap();
    let misfit = other.join("w.safetensors").display().to_string();

    // Bad arguments: each error names the argument, the column and the row.
    let bad = [
        (
            format!("SELECT kallista_predict('{misfit}', frames, question_ids) FROM clips"),
            vec!["kallista_predict argument 1", "w.safetensors", "fc1"],
        ),
        (
            format!("SELECT kallista_predict('{}/nothing-here', frames, question_ids) FROM clips", job),
            vec!["kallista_predict argument 1", "nothing-here", "neither a job dir"],
        ),
        (
            format!("SELECT kallista_predict('{job}', question_ids, question_ids) FROM clips"),
            vec![
                "kallista_predict argument 2 (model input 'video')",
                "column 'question_ids'",
                "row 0",
                "has type List(",
            ],
        ),
        (
            format!("SELECT kallista_predict('{job}', frames, kallista_pad(question_ids, 5)) FROM clips"),
            vec![
                "kallista_predict argument 3 (model input 'question')",
                "row 0",
                "5 token ids, the model input takes 12",
            ],
        ),
        (
            format!("SELECT kallista_predict('{job}', frames) FROM clips"),
            vec!["kallista_predict: the model takes 2 inputs (video, question), 1 columns were given"],
        ),
        (
            format!("SELECT kallista_embed('{job}', 'no_such_layer', frames, question_ids) FROM clips"),
            vec!["kallista_embed argument 2", "has no layer 'no_such_layer'"],
        ),
    ];
    for (sql, parts) in bad {
        let e = match ctx.sql(&sql).await {
            Ok(df) => df.collect().await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        for part in parts {
            assert!(e.contains(part), "{sql}\nmissing '{part}' in: {e}");
        }
    }
}

/// The accuracy of `counts` (`{rows, loss_sum, correct}` of `results.json`).
fn accuracy(counts: &serde_json::Value) -> f64 {
    counts["correct"].as_f64().unwrap() / counts["rows"].as_f64().unwrap()
}

#[test]
fn evaluate_on_a_cluster_matches_the_training_runs_test_result_and_reads_renamed_columns() {
    let job_dir = trained_job();
    let test_split = prepared_set(120).join("test");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("results.json")).unwrap()).unwrap();
    let test = &results["test"];
    let cluster = start_cluster_with("evaluate", ClusterOptions::new(2, 1));
    let out = temp_dir("evaluate-out");
    let job = job_dir.display().to_string();
    let stdout = ok(kallista(&[
        "evaluate",
        "--model",
        &job,
        "--data",
        test_split.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--scheduler",
        &cluster.url,
    ]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["rows"].as_u64(), test["overall"]["rows"].as_u64(), "{stdout}");
    // The rows were scored on the executors, both of them: neither the client nor one executor alone.
    for i in 0..2 {
        assert!(cluster.log(i).contains("loaded model"), "executor {i} scored nothing:\n{}", cluster.log(i));
    }
    assert_eq!(metrics["accuracy"].as_f64().unwrap(), accuracy(&test["overall"]), "{metrics}");
    let loss = test["overall"]["loss_sum"].as_f64().unwrap() / test["overall"]["rows"].as_f64().unwrap();
    assert!((metrics["loss"].as_f64().unwrap() - loss).abs() < 1e-4, "{metrics} vs {loss}");
    let top5 = metrics["top5_accuracy"].as_f64().unwrap();
    assert!(top5 >= metrics["accuracy"].as_f64().unwrap() && top5 <= 1.0);
    let families = test["families"].as_object().unwrap();
    assert_eq!(metrics["groups"].as_object().unwrap().len(), families.len());
    for (family, counts) in families {
        assert_eq!(metrics["groups"][family]["accuracy"].as_f64().unwrap(), accuracy(counts), "{family}");
    }
    // Recall over classes, weighted by support, is the accuracy again.
    let classes = metrics["classes"].as_object().unwrap();
    let hits: f64 = classes.values().filter_map(|c| Some(c["recall"].as_f64()? * c["support"].as_f64()?)).sum();
    assert!((hits / metrics["rows"].as_f64().unwrap() - accuracy(&test["overall"])).abs() < 1e-9);
    assert_picture(&std::fs::read(out.join("confusion.png")).unwrap(), "confusion.png");
    // One prediction per row, with the table's plain columns.
    let file = std::fs::File::open(out.join("predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let columns: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    for c in ["video_id", "answer_id", "family", "predicted_id", "probability", "label_rank"] {
        assert!(columns.contains(&c.to_string()), "{columns:?}");
    }
    assert!(!columns.contains(&"frames".to_string()));
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as u64, test["overall"]["rows"].as_u64().unwrap());

    // The same rows under other column names: only the arguments change.
    let renamed = temp_dir("evaluate-renamed");
    let query = "SELECT video_id, frames AS clip, question_ids AS tokens, answer_id AS y, family AS kind FROM t";
    ok(kallista(&[
        "evaluate",
        "--model",
        &job,
        "--data",
        query,
        "--table",
        &format!("t={}", test_split.display()),
        "--columns",
        "clip,tokens",
        "--label",
        "y",
        "--group-by",
        "kind",
        "--out",
        renamed.to_str().unwrap(),
        "--scheduler",
        &cluster.url,
    ]));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(renamed.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(again["accuracy"], metrics["accuracy"]);
    assert_eq!(again["groups"], metrics["groups"]);

    // `kallista predict` writes predictions only; a missing column is an error naming it.
    // (Named as evaluate names its file: what `predict` writes does not depend on the name.)
    let predictions = temp_dir("predict-out").join("predictions.parquet");
    ok(kallista(&[
        "predict",
        "--model",
        &job,
        "--data",
        test_split.to_str().unwrap(),
        "--out",
        predictions.to_str().unwrap(),
        "--scheduler",
        &cluster.url,
    ]));
    let file = std::fs::File::open(&predictions).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let columns: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert!(
        columns.contains(&"predicted_id".to_string()) && !columns.contains(&"label_rank".to_string()),
        "{columns:?}"
    );
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as u64, test["overall"]["rows"].as_u64().unwrap());
    let out = kallista(&[
        "predict",
        "--model",
        &job,
        "--data",
        test_split.to_str().unwrap(),
        "--columns",
        "frames,nope",
        "--out",
        predictions.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no column 'nope'"), "{stderr}");
}

/// A job on the same rows under other column names (renamed in the job's
/// SQL): only the job file changes, and it trains to the same weights, bit
/// for bit; its `binding.json` then lets `kallista evaluate` read those names.
#[test]
fn a_job_on_renamed_columns_trains_the_same_weights_and_evaluates_with_its_binding() {
    let reference = trained_job();
    let data = prepared_set(120);
    let dir = temp_dir("renamed-job");
    let job = small_job(&dir, &data, 1, "  max_steps: 4");
    let renamed = |split: &str| {
        format!(
            "{{sql: \"SELECT video_id, question, family AS kind, frames AS clip, question_ids AS tokens, \
             answer_id AS y, answer AS word FROM '{}/{split}/'\"}}",
            data.display()
        )
    };
    let mut text = std::fs::read_to_string(&job).unwrap();
    for split in ["train", "eval", "test"] {
        let from = format!("  {split}: {}/{split}/\n", data.display());
        assert!(text.contains(&from), "{text}");
        text = text.replace(&from, &format!("  {split}: {}\n", renamed(split)));
    }
    for (from, to) in [
        ("column: frames", "column: clip"),
        ("column: question_ids", "column: tokens"),
        ("label: answer_id", "label: y"),
        ("group_by: family", "group_by: kind"),
        ("label_names: answer", "label_names: word"),
    ] {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(&job, text).unwrap();
    ok(kallista(&["train", job.to_str().unwrap()]));
    let job_dir = dir.join("job");
    let (a, b) =
        (common::weights(&common::final_weights(&reference)), common::weights(&common::final_weights(&job_dir)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (key, w) in &a {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(w), bits(&b[key]), "{key}");
    }
    let results = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("results.json")).unwrap()).unwrap()
    };
    assert_eq!(results(&reference)["test"]["families"], results(&job_dir)["test"]["families"]);
    // The class names, from the renamed column (the reference's labels.json
    // may hold another test's names by now).
    let words: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("labels.json")).unwrap()).unwrap();
    assert_eq!(words.len(), 32);
    assert!(words.iter().filter(|w| !w.is_empty()).count() >= 5, "{words:?}");
    assert!(words.iter().all(|w| !w.starts_with("answer-")), "{words:?}");
    // Each class's word is that class's answer in the data.
    let sql = format!("SELECT DISTINCT answer_id, answer FROM '{}/train/' ORDER BY answer_id", data.display());
    let table = ok(kallista(&["sql", "-e", &sql]));
    let pairs: Vec<(usize, String)> = table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.to_string()))
        })
        .collect();
    assert!(pairs.len() >= 5, "{table}");
    for (id, answer) in &pairs {
        assert_eq!(&words[*id], answer, "class {id}");
    }
    // Evaluated with the job's own binding: the renamed columns, nothing else given.
    let out = dir.join("eval");
    let query = renamed("test");
    let query = query.trim_start_matches("{sql: \"").trim_end_matches("\"}");
    ok(kallista(&["evaluate", "--model", job_dir.to_str().unwrap(), "--data", query, "--out", out.to_str().unwrap()]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let test = &results(&job_dir)["test"];
    assert_eq!(metrics["accuracy"].as_f64().unwrap(), accuracy(&test["overall"]));
    assert_eq!(metrics["group_by"], "kind");
    assert_eq!(metrics["groups"].as_object().unwrap().len(), test["families"].as_object().unwrap().len());
}
