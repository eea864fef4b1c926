//! End to end through the binary: make a small video-QA set, prepare it with
//! `jobs/video_qa/prepare.sql` through `kallista sql` on the embedded Ballista
//! cluster, and check the prepared tables: no video in two splits, every
//! answer in the answer vocabulary, every token id below the vocabulary size,
//! padding on the right.

mod common;

use arrow::array::{Array, Int32Array, ListArray, RecordBatch, StringArray};
use common::{kallista, ok, temp_dir};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn read_dir_batches(path: &Path) -> Vec<RecordBatch> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .flat_map(|f| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
        })
        .collect()
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = arrow::compute::cast(b.column_by_name(name).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
    let a = c.as_any().downcast_ref::<StringArray>().unwrap();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

fn ints(b: &RecordBatch, name: &str) -> Vec<i32> {
    let a = b.column_by_name(name).unwrap().as_any().downcast_ref::<Int32Array>().unwrap();
    a.values().to_vec()
}

#[test]
fn make_then_prepare_with_sql() {
    let root = temp_dir("prepare");
    let data = root.join("data");
    let out = root.join("prepared");
    let summary = ok(kallista(&[
        "data",
        "make-video-qa",
        "--out",
        data.to_str().unwrap(),
        "--videos",
        "150",
        "--frames",
        "3",
        "--size",
        "24",
        "--seed",
        "3",
    ]));
    assert!(summary.contains("majority baseline"), "{summary}");
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/video_qa");
    let log = ok(kallista(&[
        "sql",
        "-f",
        jobs.join("prepare.sql").to_str().unwrap(),
        "-f",
        jobs.join("export.sql").to_str().unwrap(),
        "--set",
        &format!("data={}", data.display()),
        "--set",
        &format!("out={}", out.display()),
        "--set",
        "question_len=6",
    ]));
    assert!(log.contains("wrote"), "{log}");

    let qv = read_dir_batches(&out.join("question_vocab.parquet"));
    let tokens: Vec<String> = qv.iter().flat_map(|b| strings(b, "token")).collect();
    let ids: Vec<i32> = qv.iter().flat_map(|b| ints(b, "id")).collect();
    assert_eq!(&tokens[..2], ["<pad>", "<unk>"]);
    assert_eq!(ids, (0..ids.len() as i32).collect::<Vec<_>>(), "ids are dense and ordered");
    let vocab: HashMap<String, i32> = tokens.into_iter().zip(ids.iter().copied()).collect();
    let av = read_dir_batches(&out.join("answer_vocab.parquet"));
    let answers: HashSet<String> = av.iter().flat_map(|b| strings(b, "answer")).collect();
    let n_answers = answers.len() as i32;

    let mut split_of: HashMap<String, String> = HashMap::new();
    let mut rows = 0;
    for split in ["train", "eval", "test"] {
        for b in read_dir_batches(&out.join(split)) {
            let qs = b.column_by_name("question_ids").unwrap().as_any().downcast_ref::<ListArray>().unwrap().clone();
            for (r, ((vid, s), (question, (answer, aid)))) in strings(&b, "video_id")
                .into_iter()
                .zip(strings(&b, "split"))
                .zip(
                    strings(&b, "question")
                        .into_iter()
                        .zip(strings(&b, "answer").into_iter().zip(ints(&b, "answer_id"))),
                )
                .enumerate()
            {
                rows += 1;
                assert_eq!(s, split);
                if let Some(prev) = split_of.insert(vid.clone(), s.clone()) {
                    assert_eq!(prev, s, "video {vid} is in two splits");
                }
                assert!(answers.contains(&answer), "answer '{answer}' not in the answer vocabulary");
                assert!((0..n_answers).contains(&aid));
                let q = qs.value(r);
                let q = q.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec();
                assert_eq!(q.len(), 6, "padded or truncated to question_len");
                assert!(q.iter().all(|&id| id >= 0 && (id as usize) < vocab.len()), "{q:?}");
                let words: Vec<&str> =
                    question.split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).collect();
                let n = words.len().min(6);
                assert!(
                    q[..n].iter().all(|&id| id != 0) && q[n..].iter().all(|&id| id == 0),
                    "padding on the right: {q:?} for '{question}'"
                );
                // Every split is looked up in the one train vocabulary; unknown words map to <unk> = 1.
                let want: Vec<i32> =
                    words.iter().take(6).map(|w| vocab.get(&w.to_lowercase()).copied().unwrap_or(1)).collect();
                assert_eq!(q[..n], want[..], "ids of '{question}' in {split}");
            }
        }
    }
    assert_eq!(rows, 150, "every clip is in exactly one prepared split");

    // The prepared splits decode straight into training tensors.
    let mut decoded = 0;
    for f in kallista_data::parquet_io::parquet_files(&out.join("train")).unwrap() {
        for b in kallista_data::parquet_io::ClipReader::open(&f, 32).unwrap() {
            let b = b.unwrap();
            assert_eq!(b.shape[1..], [3, 24, 24, 3]);
            let (ids, len) = b.question_ids.clone().expect("prepared tables carry question_ids");
            assert_eq!((len, ids.len()), (6, 6 * b.shape[0]));
            assert!(b.answer_ids.as_ref().unwrap().iter().all(|a| (0..n_answers).contains(a)));
            decoded += b.shape[0];
        }
    }
    assert_eq!(decoded, split_of.values().filter(|s| *s == "train").count());

    // A plain query prints a table.
    let table = ok(kallista(&[
        "sql",
        "-e",
        &format!("SELECT split, COUNT(*) AS n FROM '{}/train/' GROUP BY split", out.display()),
    ]));
    assert!(table.contains("| split") && table.contains("train"), "{table}");
    // A bad query exits non-zero and says why.
    let bad = kallista(&["sql", "-e", "SELECT no_such_column FROM (VALUES (1)) t(x)"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no_such_column"));
    std::fs::remove_dir_all(&root).ok();
}
