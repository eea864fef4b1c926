//! What the engine benchmarks share: W1 rows as Parquet, and a cluster of
//! `kallista` processes on loopback.

#![allow(dead_code)]

use datafusion::arrow::array::{ArrayRef, Float32Array, Int32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use kallista_ops::applications::VideoQaDims;
use kallista_ops::init::Rng;
use std::path::Path;
use std::sync::Arc;

/// An integer setting from the environment.
pub fn env(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub fn list<T: datafusion::arrow::array::Array + 'static>(
    values: T,
    per_row: usize,
    rows: usize,
    item: DataType,
) -> ArrayRef {
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(per_row, rows));
    Arc::new(ListArray::new(Arc::new(Field::new_list_field(item, true)), offsets, Arc::new(values), None))
}

/// `rows` W1 rows with the columns a training job reads.
pub fn write_rows(path: &Path, d: &VideoQaDims, rows: usize) {
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

/// The `kallista` binary: `KALLISTA_BIN`, or the one built next to this bench.
pub fn kallista_bin() -> std::path::PathBuf {
    std::env::var_os("KALLISTA_BIN").map(Into::into).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().and_then(|d| d.parent()).unwrap().join("kallista")
    })
}

pub fn free_port() -> u16 {
    kallista_engine::ports::unused_loopback_port().unwrap()
}

/// A scheduler and `executors` executors of one slot, each a process of its
/// own with its own work dir; killed when dropped. When the host has a CPU
/// for each, executor `i` runs on the `i`-th CPU this process may use
/// (`--cpus`), as on hosts of their own, unless `PIN_EXECUTORS=0`.
pub struct ProcessCluster {
    children: Vec<std::process::Child>,
    pub url: String,
    /// Whether each executor runs on a CPU of its own.
    pub pinned: bool,
}

impl ProcessCluster {
    pub fn start(dir: &Path, executors: usize, slots: usize) -> ProcessCluster {
        let bin = kallista_bin();
        let port = free_port();
        let spawn = |args: Vec<String>| {
            std::process::Command::new(&bin)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", bin.display()))
        };
        let mut children = vec![spawn(vec!["scheduler".into(), "--port".into(), port.to_string()])];
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let own_cpus = cpu_of_each(executors);
        for i in 0..executors {
            let work = dir.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let cpus =
                own_cpus.as_ref().and_then(|c| c.get(i)).map_or(vec![], |cpu| vec!["--cpus".into(), cpu.to_string()]);
            children.push(spawn(
                [
                    vec![
                        "executor".into(),
                        "--scheduler-port".into(),
                        port.to_string(),
                        "--port".into(),
                        free_port().to_string(),
                        "--grpc-port".into(),
                        free_port().to_string(),
                        "--task-slots".into(),
                        slots.to_string(),
                        "--work-dir".into(),
                        work.display().to_string(),
                    ],
                    cpus,
                ]
                .concat(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_secs(3)); // executors register
        ProcessCluster { children, url: format!("df://127.0.0.1:{port}"), pinned: own_cpus.is_some() }
    }
}

/// A CPU for each of `executors` executors: the first this process may use,
/// when it may use that many and `PIN_EXECUTORS` is not 0.
fn cpu_of_each(executors: usize) -> Option<Vec<usize>> {
    let cpus = kallista_engine::cpu_set::allowed_cpus().ok()?;
    let wanted = std::env::var("PIN_EXECUTORS").map_or(true, |v| v != "0");
    (wanted && executors <= cpus.len()).then(|| cpus[..executors].to_vec())
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The columns of [`write_rows`]'s rows that W1 reads.
pub fn w1_binding() -> kallista_data::binding::Binding {
    kallista_data::binding::Binding {
        inputs: vec!["features".into(), "question_ids".into()],
        label: Some("answer_id".into()),
        group_by: Some("family".into()),
        key: vec!["video_id".into(), "question".into()],
    }
}
