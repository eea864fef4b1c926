//! A Keras `.weights.h5` evaluates to Keras's own accuracy: the fixture
//! (made by Keras in test set-up, `ops/tests/fixtures/make_video_qa_h5.py`)
//! holds a video-QA model's weights saved by Keras, 96 rows, Keras's class
//! probabilities for them and its accuracy; `kallista evaluate` with that
//! file and Kallista's config of the same architecture must agree.

mod common;

use arrow::array::{ArrayRef, AsArray, BinaryBuilder, Int32Array, Int32Builder, ListBuilder, RecordBatch, StringArray};
use arrow::datatypes::Float32Type;
use common::{fixtures, kallista, ok, temp_dir};
use kallista_ops::applications::{video_qa_pixels, VideoQaPixelsDims};
use std::sync::Arc;

#[test]
fn a_keras_weights_file_evaluates_to_keras_accuracy_on_the_same_rows() {
    let at = fixtures().join("video_qa_keras");
    let rows_file = at.join("video_qa_rows.safetensors");
    assert!(rows_file.exists(), "{} is missing: run scripts/test-setup.sh first", rows_file.display());
    let (rows, meta) = kallista_ops::model::read_safetensors(&rows_file).unwrap();
    let keras_accuracy: f64 = meta["accuracy"].parse().unwrap();
    let d = VideoQaPixelsDims::toy();
    let (frames, question, label, probs) = (&rows["frames"], &rows["question"], &rows["label"], &rows["probabilities"]);
    let n = label.shape()[0];
    let frame_len = d.height * d.width * d.channels;

    // The rows as a table: raw RGB frames, token ids, class ids.
    let mut frames_col = ListBuilder::new(BinaryBuilder::new());
    let mut question_col = ListBuilder::new(Int32Builder::new());
    for r in 0..n {
        for t in 0..d.frames {
            let start = (r * d.frames + t) * frame_len;
            let bytes: Vec<u8> = frames.data()[start..start + frame_len].iter().map(|&v| v as u8).collect();
            frames_col.values().append_value(bytes);
        }
        frames_col.append(true);
        for &id in &question.data()[r * d.question_len..(r + 1) * d.question_len] {
            question_col.values().append_value(id as i32);
        }
        question_col.append(true);
    }
    let ids = StringArray::from((0..n).map(|r| format!("row-{r:03}")).collect::<Vec<_>>());
    let labels = Int32Array::from(label.data().iter().map(|&v| v as i32).collect::<Vec<_>>());
    let batch = RecordBatch::try_from_iter([
        ("row_id", Arc::new(ids) as ArrayRef),
        ("pixels", Arc::new(frames_col.finish()) as ArrayRef),
        ("tokens", Arc::new(question_col.finish()) as ArrayRef),
        ("class", Arc::new(labels) as ArrayRef),
    ])
    .unwrap();
    let dir = temp_dir("keras-evaluate");
    let table = dir.join("rows.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&table).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    // Kallista's config of the architecture beside Keras's weights file.
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.json"), video_qa_pixels(&d, 0).unwrap().to_json()).unwrap();
    let h5 = model_dir.join("video_qa.weights.h5");
    std::fs::copy(at.join("video_qa.weights.h5"), &h5).unwrap();
    let out = dir.join("evaluation");
    ok(kallista(&[
        "evaluate",
        "--model",
        h5.to_str().unwrap(),
        "--data",
        table.to_str().unwrap(),
        "--columns",
        "pixels,tokens",
        "--label",
        "class",
        "--out",
        out.to_str().unwrap(),
    ]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["rows"].as_u64(), Some(n as u64), "{metrics}");
    assert_eq!(metrics["accuracy"].as_f64().unwrap(), keras_accuracy, "{metrics}");

    // Row by row, the predicted class's probability is Keras's.
    let file = std::fs::File::open(out.join("predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut seen = 0;
    for b in reader {
        let b = b.unwrap();
        let id = b.column_by_name("row_id").unwrap().as_string::<i32>().clone();
        let p = b.column_by_name("probability").unwrap().as_primitive::<Float32Type>().clone();
        let predicted = b.column_by_name("predicted_id").unwrap().clone();
        let predicted = arrow::compute::cast(&predicted, &arrow::datatypes::DataType::Int64).unwrap();
        let predicted = predicted.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            let r: usize = id.value(i)["row-".len()..].parse().unwrap();
            let keras = &probs.data()[r * d.answers..(r + 1) * d.answers];
            let best = (0..d.answers).fold(0, |b, k| if keras[k] > keras[b] { k } else { b });
            assert_eq!(predicted.value(i), best as i64, "row {r}: {keras:?}");
            assert!((p.value(i) - keras[best]).abs() < 1e-5, "row {r}: {} vs Keras {}", p.value(i), keras[best]);
            seen += 1;
        }
    }
    assert_eq!(seen, n);
}
