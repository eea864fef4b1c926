//! Training data as other writers produce it: dictionary-encoded strings,
//! large strings, large lists and large binaries train as the plain types
//! do; a null label is refused before any work, naming file, row and column.

mod common;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use common::{kallista, ok, prepared_set, small_job, temp_dir};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;

/// The type polars or pandas would write for `t`.
fn other_writer_type(name: &str, t: &DataType) -> DataType {
    match t {
        DataType::Utf8 if name == "family" => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        DataType::Utf8 => DataType::LargeUtf8,
        DataType::List(item) => {
            let inner = match item.data_type() {
                DataType::Binary => DataType::LargeBinary,
                other => other.clone(),
            };
            DataType::LargeList(Arc::new(Field::new("item", inner, item.is_nullable())))
        }
        other => other.clone(),
    }
}

/// Copies every Parquet file under `from` to `to`, each column changed by `change`.
/// `change` sees the column's name, its values, the file's place in name order and the batch's first row in the file.
fn rewrite(from: &Path, to: &Path, change: &dyn Fn(&str, ArrayRef, usize, usize) -> ArrayRef) {
    std::fs::create_dir_all(to).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for (index, path) in files.into_iter().enumerate() {
        let mut first_row = 0;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let mut writer = None;
        for b in batches {
            let columns: Vec<ArrayRef> = b
                .schema()
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, c)| change(f.name(), c.clone(), index, first_row))
                .collect();
            let schema = Arc::new(Schema::new(
                b.schema()
                    .fields()
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            ));
            first_row += b.num_rows();
            let w = writer.get_or_insert_with(|| {
                ArrowWriter::try_new(
                    std::fs::File::create(to.join(path.file_name().unwrap())).unwrap(),
                    schema.clone(),
                    None,
                )
                .unwrap()
            });
            w.write(&RecordBatch::try_new(schema, columns).unwrap()).unwrap();
        }
        writer.unwrap().close().unwrap();
    }
}

#[test]
fn dictionary_and_large_types_train_as_the_plain_ones_do() {
    let data = prepared_set(300);
    let dir = temp_dir("other-types");
    let other = dir.join("data");
    for split in ["train", "eval", "test"] {
        rewrite(&data.join(split), &other.join(split), &|name, c, _, _| {
            let t = other_writer_type(name, c.data_type());
            cast(&c, &t).unwrap()
        });
    }
    let file = std::fs::read_dir(other.join("train")).unwrap().next().unwrap().unwrap().path();
    let schema = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap()).unwrap().schema().clone();
    let type_of = |c: &str| schema.field_with_name(c).unwrap().data_type().clone();
    assert!(matches!(type_of("family"), DataType::Dictionary(..)), "{schema:?}");
    assert!(
        matches!(type_of("frames"), DataType::LargeList(_)) && type_of("question") == DataType::LargeUtf8,
        "{schema:?}"
    );
    let job = small_job(&dir, &other, 1, "  max_steps: 4\n  eval_every_steps: 4\n  eval_steps: 1");
    let out = ok(kallista(&["train", job.to_str().unwrap()]));
    assert!(out.contains("trained 4 steps"), "{out}");
}

#[test]
fn a_null_label_is_refused_before_training_naming_file_row_and_column() {
    let data = prepared_set(300);
    let dir = temp_dir("null-label");
    let other = dir.join("data");
    for split in ["train", "eval", "test"] {
        rewrite(&data.join(split), &other.join(split), &|name, c, file, first| {
            if name != "answer_id" || split != "train" || file != 0 || first > 7 || first + c.len() <= 7 {
                return c;
            }
            let ids = c.as_any().downcast_ref::<arrow::array::Int32Array>().map(|a| a.iter().collect::<Vec<_>>());
            let mut ids = ids.unwrap_or_else(|| panic!("answer_id is {:?}", c.data_type()));
            ids[7 - first] = None;
            Arc::new(arrow::array::Int32Array::from(ids))
        });
    }
    let job = small_job(&dir, &other, 1, "  max_steps: 2");
    let out = kallista(&["train", job.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("data.train") && stderr.contains(".parquet: row 7, column 'answer_id': null label"),
        "{stderr}"
    );
    assert!(!dir.join("job").exists(), "no work may start: {stderr}");
}
