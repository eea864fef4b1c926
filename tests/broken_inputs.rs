//! Broken files through the `kallista` binary: every kind of broken Parquet
//! file gives exit code 1 and an error naming the file (and, for a corrupt
//! column chunk, the row group and column), never a panic, in `kallista sql`,
//! training and prediction; ingest's `--skipped-out` lists the skipped rows.

mod common;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{kallista, ok, prepared_set, small_job, temp_dir};
use std::path::Path;
use std::sync::Arc;

/// A valid Parquet file of 1000 rows, columns `a` (BIGINT) and `b` (text).
fn good_parquet() -> Vec<u8> {
    let schema =
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false), Field::new("b", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..1000)),
            Arc::new(StringArray::from_iter_values((0..1000).map(|i| format!("row{i}")))),
        ],
    )
    .unwrap();
    let mut out = vec![];
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// Each kind of broken file, with what its error must say.
fn broken_kinds() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = good_parquet();
    let n = good.len();
    let footer = u32::from_le_bytes(good[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut garbage = good.clone();
    garbage[n - 8 - footer..n - 8].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 37 % 251) as u8);
    let mut huge = good.clone();
    huge[n - 8..n - 4].copy_from_slice(&0xFFFF_FF00u32.to_le_bytes());
    let mut chunk = good.clone();
    chunk[8..200.min(n - 8 - footer)].fill(0xAB);
    vec![
        ("truncated", good[..n / 2].to_vec(), "truncated or not Parquet"),
        ("garbage-footer", garbage, "parquet footer"),
        ("not-parquet", b"video,question\n1,2\n".repeat(10), "no PAR1 at its end"),
        ("huge-footer", huge, "its length field says 4294967040 bytes"),
        ("empty", vec![], "empty file (0 bytes)"),
        ("corrupt-chunk", chunk, "row group 0 (rows 0..1000), column 'a'"),
    ]
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_broken_parquet_kind_is_named_by_kallista_sql() {
    let root = temp_dir("broken-parquet");
    for (kind, bytes, says) in broken_kinds() {
        let dir = root.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("part-1.parquet"), good_parquet()).unwrap();
        let file = dir.join("part-0.parquet");
        std::fs::write(&file, &bytes).unwrap();
        let table = format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}/'; SELECT count(*), sum(a), max(b) FROM t",
            dir.display()
        );
        let direct = format!("SELECT count(*), sum(a), max(b) FROM '{}/'", dir.display());
        for sql in [table, direct] {
            let out = kallista(&["sql", "-e", &sql]);
            let e = stderr_of(&out);
            assert_eq!(out.status.code(), Some(1), "{kind}: {sql}: {e}");
            assert!(e.contains(&format!("{}: ", file.display())) && e.contains(says), "{kind}: {sql}: {e}");
        }
    }
}

/// Copies the files of `from` into `to` (made).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_training_split_with_a_broken_file_is_named_before_any_work() {
    let data = prepared_set(300);
    for (kind, bytes, says) in
        broken_kinds().into_iter().filter(|(k, ..)| ["huge-footer", "empty", "not-parquet"].contains(k))
    {
        let dir = temp_dir(&format!("broken-split-{kind}"));
        let copy = dir.join("data");
        for split in ["train", "eval", "test"] {
            copy_dir(&data.join(split), &copy.join(split));
        }
        let file = copy.join("train/zz-broken.parquet");
        std::fs::write(&file, &bytes).unwrap();
        let job = small_job(&dir, &copy, 1, "  max_steps: 2");
        let out = kallista(&["train", job.to_str().unwrap()]);
        let e = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{kind}: {e}");
        assert!(e.contains("data.train") && e.contains(&file.display().to_string()) && e.contains(says), "{kind}: {e}");
        assert!(!dir.join("job").exists(), "{kind}: no work may start: {e}");
    }
}

#[test]
fn prediction_over_a_table_with_a_broken_file_names_the_file_and_writes_nothing() {
    let data = prepared_set(120);
    let dir = temp_dir("broken-predict");
    ok(kallista(&["train", small_job(&dir, &data, 1, "  max_steps: 2").to_str().unwrap()]));
    let model = dir.join("job");
    for (kind, bytes, says) in
        broken_kinds().into_iter().filter(|(k, ..)| ["truncated", "empty", "not-parquet"].contains(k))
    {
        let table = dir.join(format!("table-{kind}"));
        copy_dir(&data.join("test"), &table);
        let file = table.join("zz-broken.parquet");
        std::fs::write(&file, &bytes).unwrap();
        let out_file = dir.join(format!("predictions-{kind}.parquet"));
        let out = kallista(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--data",
            table.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ]);
        let e = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{kind}: {e}");
        assert!(e.contains(&file.display().to_string()) && e.contains(says), "{kind}: {e}");
        assert!(!e.contains("panicked"), "{kind}: {e}");
        assert!(!out_file.exists(), "{kind}: no predictions from a broken table: {e}");
    }
}

fn png(path: &Path) {
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(path).unwrap();
}

#[test]
fn ingest_lists_skipped_rows_in_a_file_and_refuses_bad_flags() {
    let root = temp_dir("ingest-cli");
    std::fs::create_dir_all(root.join("frames/v")).unwrap();
    png(&root.join("frames/v/1.png"));
    let qa = root.join("qa.jsonl");
    std::fs::write(&qa, "{\"video\":\"v\",\"question\":\"q\",\"answer\":\"a\"}\nnot json\n{\"video\":\"../v\",\"question\":\"q\",\"answer\":\"a\"}\n").unwrap();
    let skipped = root.join("skipped.jsonl");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["data", "ingest-frames", "--frames-dir"].map(String::from).to_vec();
        a.push(root.join("frames").display().to_string());
        a.extend([
            "--annotations".into(),
            qa.display().to_string(),
            "--out".into(),
            root.join("out").display().to_string(),
        ]);
        a.extend(["--frames".into(), "2".into()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| kallista(&args(extra).iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&["--skip-bad", "--skipped-out", skipped.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wrote 1 clips") && stdout.contains("skipped 2 bad rows"), "{stdout}");
    let listed: Vec<serde_json::Value> =
        std::fs::read_to_string(&skipped).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.iter().map(|v| v["line"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(listed[1]["column"], "video");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("row 2") && stderr_of(&out).contains("not JSON"), "{}", stderr_of(&out));
    let out = run(&["--frame-policy", "stretch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--frame-policy: expected sample, pad or error"), "{}", stderr_of(&out));
}

/// `--device` names what it cannot use, before the executor binds a port.
#[test]
fn an_executor_on_a_device_it_cannot_use_names_the_flag() {
    let unknown = kallista(&["executor", "--device", "gpu0"]);
    let e = stderr_of(&unknown);
    assert_eq!(unknown.status.code(), Some(1), "{e}");
    assert!(e.contains("--device gpu0: ") && e.contains("unknown device 'gpu0'"), "{e}");
    // No machine has a thousand GPUs: without the feature the build says how to get it,
    // with it the device is missing.
    let missing = kallista(&["executor", "--device", "cuda:999"]);
    let e = stderr_of(&missing);
    assert_eq!(missing.status.code(), Some(1), "{e}");
    assert!(e.contains("--device cuda:999: "), "{e}");
    assert!(e.contains("--features cuda") || e.contains("cuda:999: "), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// `--cpus` names a CPU the executor may not use, or a list it cannot read,
/// before the executor binds a port.
#[test]
fn an_executor_on_cpus_it_cannot_use_names_the_flag() {
    let outside = kallista(&["executor", "--cpus", "1023"]);
    let e = stderr_of(&outside);
    assert_eq!(outside.status.code(), Some(1), "{e}");
    assert!(e.contains("--cpus 1023: CPU 1023 is not one this process may use"), "{e}");
    let unreadable = kallista(&["executor", "--cpus", "0-x"]);
    let e = stderr_of(&unreadable);
    assert_eq!(unreadable.status.code(), Some(1), "{e}");
    assert!(e.contains("--cpus 0-x: 'x' is not a CPU number"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// `--cpus`, taken: every thread of a running executor (its runtimes and
/// servers, started after the flag was read) may run on the CPU given and
/// no other.
#[test]
fn every_thread_of_an_executor_runs_on_the_cpus_it_is_given() {
    let cpu = *kallista_engine::cpu_set::allowed_cpus().unwrap().last().unwrap();
    let port = || kallista_engine::ports::unused_loopback_port().unwrap().to_string();
    let work = temp_dir("executor-cpus");
    // No scheduler listens there: the executor keeps retrying, with its threads started.
    let mut executor = std::process::Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["executor", "--scheduler-port", &port(), "--port", &port(), "--grpc-port", &port()])
        .args(["--work-dir", work.to_str().unwrap(), "--cpus", &cpu.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let tasks = Path::new("/proc").join(executor.id().to_string()).join("task");
    let masks: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap()
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap_or_default();
            line.trim_start_matches("Cpus_allowed_list:").trim().to_string()
        })
        .collect();
    let _ = executor.kill();
    let _ = executor.wait();
    assert!(masks.len() > 1, "the executor started no threads: {masks:?}");
    assert!(masks.iter().all(|m| *m == cpu.to_string()), "threads' CPUs {masks:?}, expected {cpu} for each");
}
